//! Which of a connection's outgoing packets wait for the log before they are written
//! (issue 12, `fsync = "always"`), and the split of an output buffer along that line. Pure: the
//! driver (`tern::net::Output`) takes a buffer from the shard, splits it here, writes the free
//! part at once and holds the rest until the log is durable up to the records behind it.
//!
//! Only a packet that promises something about stored state waits:
//!
//! - **Held** (acknowledgements of what the client sent): PUBACK, PUBREC, PUBCOMP, SUBACK,
//!   UNSUBACK. Each tells the client it may forget something the broker now keeps (a QoS 1/2
//!   message queued for persistent sessions, an inbound QoS 2 id, a subscription). They keep
//!   their order among themselves ([MQTT-4.6.0-2], [MQTT-4.6.0-3]); deliveries may overtake them.
//! - **Barrier**: CONNACK (session present, the first packet [MQTT-3.2.0-1]), PUBREL (the
//!   broker will never send that PUBLISH again: a subscriber that got it forgets the id, so the
//!   `Released` record must be durable or a crash would bring the PUBLISH back as a new
//!   message), a QoS 2 PUBLISH (see below), DISCONNECT and AUTH (nothing may follow or overtake
//!   them). A barrier waits like an acknowledgement, and every packet after it waits behind it,
//!   so the order of PUBLISHes to a client ([MQTT-4.6.0-6]) and of PUBRELs ([MQTT-4.6.0-4])
//!   holds.
//! - **Free**: a QoS 0 or QoS 1 PUBLISH and PINGRESP. A delivery promises nothing: if the
//!   broker dies before its records are durable, the message is delivered again (QoS 1 allows
//!   a duplicate) or, if its publisher was never acknowledged, resent by the publisher. A
//!   subscriber keeps no state for a QoS 1 packet id once it has sent PUBACK, so an id the
//!   broker forgot and reuses after a restart is harmless.
//!
//! Why a QoS 2 PUBLISH waits: a QoS 2 receiver keeps the packet id from PUBLISH to PUBREL and
//! treats a PUBLISH with an id it holds as a resend ([MQTT-4.3.3-9]). If the broker crashed
//! before its `Enqueue`/`Sent` records (or the inbound QoS 2 id of the publisher on this shard)
//! were durable, it would either route the publisher's resend again (a second copy under a
//! new id, after the subscriber completed the first: a duplicate) or reuse the id for another
//! message the subscriber would then drop as a resend (a loss). Holding it until its records
//! are durable keeps exactly-once across `kill -9`.

use bytes::BytesMut;

use crate::codec::{check, FixedHeader, PacketType};

/// How one outgoing packet relates to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Written at once.
    Free,
    /// Written once the records before it are durable; later free packets may overtake it.
    Held,
    /// Held, and every packet after it is held behind it.
    Barrier,
}

/// The class of a packet by its fixed header.
pub fn hold_of(h: &FixedHeader) -> Hold {
    match h.packet_type {
        // QoS bits 1-2 of the flags: 0b10 is QoS 2.
        PacketType::Publish if (h.flags >> 1) & 0b11 == 2 => Hold::Barrier,
        PacketType::Publish | PacketType::PingResp => Hold::Free,
        PacketType::PubAck
        | PacketType::PubRec
        | PacketType::PubComp
        | PacketType::SubAck
        | PacketType::UnsubAck => Hold::Held,
        // CONNACK, PUBREL, DISCONNECT, AUTH, and any packet a client sends (never encoded
        // by the broker for a client): the conservative class.
        _ => Hold::Barrier,
    }
}

/// An output buffer split in two: what may be written now, and what waits for the log.
#[derive(Debug, Default)]
pub struct Split {
    /// Free packets that no held packet precedes under a barrier, in their order.
    pub free: BytesMut,
    /// The rest, in their order.
    pub held: BytesMut,
    /// `held` contains a barrier: everything after it must be held too.
    pub barrier: bool,
}

/// Splits `buf` (whole packets, as the shard encodes them). With `barrier_pending` (an earlier
/// held part with a barrier is not written yet) everything is held. A buffer that is all free,
/// or whose held packets all follow its free ones, is split without copying; free packets
/// after a held one are copied out. Bytes that do not parse as a packet (never produced by
/// the encoder) are held with the rest, as a barrier: nothing is lost or reordered.
pub fn split_output(mut buf: BytesMut, barrier_pending: bool) -> Split {
    if barrier_pending {
        return Split { free: BytesMut::new(), barrier: !buf.is_empty(), held: buf };
    }
    // Pass 1: the end of the free prefix, whether a free packet follows a held one (before
    // any barrier), and where the first barrier starts. Bounded: each step consumes a packet.
    let mut pos = 0;
    let mut prefix = None;
    let mut interleaved = false;
    let mut barrier_at = None;
    while pos < buf.len() {
        let Some(h) = header_at(&buf[pos..]) else {
            prefix.get_or_insert(pos);
            barrier_at = Some(pos);
            break;
        };
        match hold_of(&h) {
            Hold::Free if prefix.is_some() => interleaved = true,
            Hold::Free => {}
            Hold::Held => {
                prefix.get_or_insert(pos);
            }
            Hold::Barrier => {
                prefix.get_or_insert(pos);
                barrier_at = Some(pos);
                break;
            }
        }
        pos += h.packet_len();
    }
    let Some(prefix) = prefix else {
        return Split { free: buf, held: BytesMut::new(), barrier: false };
    };
    let barrier = barrier_at.is_some();
    let free = buf.split_to(prefix);
    if !interleaved {
        return Split { free, held: buf, barrier };
    }
    // Pass 2 over the rest (now at offset 0): free packets before the barrier join `free`.
    let (mut free, mut held) = (free, BytesMut::with_capacity(buf.len()));
    let end = barrier_at.map_or(buf.len(), |b| b - prefix);
    let mut pos = 0;
    while pos < end {
        // Parsed in pass 1: every packet before `end` has a whole header.
        let Some(h) = header_at(&buf[pos..]) else { break };
        let packet = &buf[pos..pos + h.packet_len()];
        match hold_of(&h) {
            Hold::Free => free.extend_from_slice(packet),
            _ => held.extend_from_slice(packet),
        }
        pos += h.packet_len();
    }
    held.extend_from_slice(&buf[pos..]);
    Split { free, held, barrier }
}

/// The fixed header of the whole packet at the start of `buf`, or `None` if `buf` does not
/// start with one.
fn header_at(buf: &[u8]) -> Option<FixedHeader> {
    match check(buf, usize::MAX, None) {
        Ok(Some(h)) if h.packet_len() <= buf.len() => Some(h),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode, Packet, ProtocolVersion, PubResp, Publish, QoS};

    fn pid(n: u16) -> crate::codec::PacketId {
        crate::codec::PacketId::new(n).expect("non-zero")
    }

    fn publish(qos: QoS, id: u16) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Some(crate::codec::TopicName::new("t").expect("valid topic")),
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"x"),
        })
    }

    fn bytes_of(packets: &[Packet]) -> BytesMut {
        let mut out = BytesMut::new();
        for p in packets {
            encode(p, ProtocolVersion::V311, &mut out).expect("encodes");
        }
        out
    }

    fn puback(id: u16) -> Packet {
        Packet::PubAck(PubResp::success(pid(id)))
    }

    #[test]
    fn classes_follow_what_each_packet_promises() {
        let class = |p: &Packet| {
            let b = bytes_of(std::slice::from_ref(p));
            hold_of(&header_at(&b).expect("a whole packet"))
        };
        assert_eq!(class(&publish(QoS::AtMostOnce, 0)), Hold::Free);
        assert_eq!(class(&publish(QoS::AtLeastOnce, 1)), Hold::Free);
        assert_eq!(class(&Packet::PingResp), Hold::Free);
        // Acknowledgements of inbound messages promise their durability.
        assert_eq!(class(&puback(1)), Hold::Held);
        assert_eq!(class(&Packet::PubRec(PubResp::success(pid(1)))), Hold::Held);
        assert_eq!(class(&Packet::PubComp(PubResp::success(pid(1)))), Hold::Held);
        // A QoS 2 delivery and PUBREL order what follows them.
        assert_eq!(class(&publish(QoS::ExactlyOnce, 1)), Hold::Barrier);
        assert_eq!(class(&Packet::PubRel(PubResp::success(pid(1)))), Hold::Barrier);
    }

    #[test]
    fn all_free_and_all_held_buffers_are_not_copied() {
        let buf = bytes_of(&[publish(QoS::AtLeastOnce, 1), publish(QoS::AtMostOnce, 0)]);
        let (ptr, len) = (buf.as_ptr(), buf.len());
        let s = split_output(buf, false);
        assert_eq!((s.free.as_ptr(), s.free.len(), s.held.len(), s.barrier), (ptr, len, 0, false));
        let buf = bytes_of(&[puback(1), puback(2)]);
        let (ptr, len) = (buf.as_ptr(), buf.len());
        let s = split_output(buf, false);
        assert_eq!((s.held.as_ptr(), s.held.len(), s.free.len(), s.barrier), (ptr, len, 0, false));
    }

    /// [MQTT-4.6.0-2]: PUBACKs keep their order; deliveries may overtake them.
    #[test]
    fn deliveries_overtake_acknowledgements_which_keep_their_order() {
        let buf = bytes_of(&[
            publish(QoS::AtLeastOnce, 1),
            puback(7),
            publish(QoS::AtLeastOnce, 2),
            puback(8),
            Packet::PingResp,
        ]);
        let s = split_output(buf, false);
        let free = bytes_of(&[
            publish(QoS::AtLeastOnce, 1),
            publish(QoS::AtLeastOnce, 2),
            Packet::PingResp,
        ]);
        assert_eq!(s.free, free);
        assert_eq!(s.held, bytes_of(&[puback(7), puback(8)]));
        assert!(!s.barrier);
    }

    /// [MQTT-4.6.0-6]: a QoS 1 delivery after a held QoS 2 one stays behind it.
    #[test]
    fn nothing_overtakes_a_barrier() {
        let buf = bytes_of(&[
            publish(QoS::AtLeastOnce, 1),
            puback(7),
            publish(QoS::ExactlyOnce, 2),
            publish(QoS::AtLeastOnce, 3),
            puback(8),
        ]);
        let s = split_output(buf, false);
        assert_eq!(s.free, bytes_of(&[publish(QoS::AtLeastOnce, 1)]));
        assert_eq!(
            s.held,
            bytes_of(&[
                puback(7),
                publish(QoS::ExactlyOnce, 2),
                publish(QoS::AtLeastOnce, 3),
                puback(8),
            ])
        );
        assert!(s.barrier);
        // An earlier barrier still waiting: everything waits.
        let buf = bytes_of(&[publish(QoS::AtLeastOnce, 4)]);
        let s = split_output(buf.clone(), true);
        assert_eq!((s.free.len(), s.held, s.barrier), (0, buf, true));
    }

    /// [MQTT-3.2.0-1]: nothing goes before a held CONNACK.
    #[test]
    fn a_connack_holds_what_follows() {
        let connack = Packet::ConnAck(crate::codec::ConnAck {
            session_present: true,
            reason: crate::codec::ReasonCode::Success,
            properties: Default::default(),
        });
        let buf = bytes_of(&[connack, publish(QoS::AtLeastOnce, 1)]);
        let s = split_output(buf.clone(), false);
        assert_eq!((s.free.len(), s.held, s.barrier), (0, buf, true));
    }

    /// Against a model over random sequences: free = the free packets before the first
    /// barrier, held = the rest, each in its original order; nothing lost or added.
    #[test]
    fn split_matches_the_model_on_random_sequences() {
        let kinds = [
            publish(QoS::AtMostOnce, 0),
            publish(QoS::AtLeastOnce, 1),
            publish(QoS::ExactlyOnce, 2),
            puback(3),
            Packet::PubRec(PubResp::success(pid(4))),
            Packet::PubRel(PubResp::success(pid(5))),
            Packet::PingResp,
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 9) as usize;
            let seq: Vec<Packet> =
                (0..n).map(|i| kinds[((seed >> (8 + 5 * i)) % 7) as usize].clone()).collect();
            let (mut free, mut held, mut barrier) = (Vec::new(), Vec::new(), false);
            for p in &seq {
                let b = bytes_of(std::slice::from_ref(p));
                let class = hold_of(&header_at(&b).expect("whole"));
                barrier |= class == Hold::Barrier;
                if class == Hold::Free && !barrier {
                    free.push(p.clone());
                } else {
                    held.push(p.clone());
                }
            }
            let s = split_output(bytes_of(&seq), false);
            assert_eq!(s.free, bytes_of(&free), "{seq:?}");
            assert_eq!(s.held, bytes_of(&held), "{seq:?}");
            assert_eq!(s.barrier, barrier, "{seq:?}");
        }
    }

    #[test]
    fn bytes_that_do_not_parse_are_held_whole() {
        let mut buf = bytes_of(&[publish(QoS::AtLeastOnce, 1)]);
        let good = buf.len();
        buf.extend_from_slice(&[0x30, 0xFF]); // a PUBLISH header cut short
        let s = split_output(buf.clone(), false);
        assert_eq!(s.free, buf[..good]);
        assert_eq!(s.held, buf[good..]);
        assert!(s.barrier);
    }
}
