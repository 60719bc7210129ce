//! The raw-relay ceiling: a trivial single-threaded MQTT forwarder. It answers CONNECT,
//! SUBSCRIBE, PINGREQ and the QoS handshakes with fixed frames and copies every PUBLISH frame,
//! byte for byte, to the connections whose filter matches. No sessions, no queues, no
//! retained store, no validation beyond framing: what a broker on one core could do if MQTT
//! cost nothing. A broker's result divided by the relay's is its fraction of this machine's
//! loopback ceiling for the same frames.
//!
//! Overflow policy: a subscriber whose unsent bytes exceed `OUT_BYTES_MAX` loses the frames
//! that do not fit (counted and printed at exit); the relay never blocks a publisher.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use tern::codec::{self, PacketType};

const LISTENER: Token = Token(usize::MAX);
const OUT_BYTES_MAX: usize = 64 * 1024 * 1024;
const SCRATCH_BYTES: usize = 256 * 1024;
const CONNECTIONS_MAX: usize = 100_000;

struct RConn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    v5: bool,
}

struct Group {
    members: Vec<usize>,
    next: usize,
}

#[derive(Default)]
struct Router {
    /// (filter, connection) for plain subscriptions.
    plain: Vec<(String, usize)>,
    /// (filter, group name) -> members, for `$share/group/filter`.
    groups: Vec<(String, String, Group)>,
    /// topic -> (plain subscribers, group indices); cleared when subscriptions change.
    cache: HashMap<Vec<u8>, (Vec<usize>, Vec<usize>)>,
}

/// MQTT topic filter matching (`+` one level, `#` the rest, `$` topics only by `$` filters):
/// the broker's own matcher.
pub use tern::topic::matches;

impl Router {
    fn subscribe(&mut self, filter: &str, conn: usize) {
        self.cache.clear();
        if let Some(rest) = filter.strip_prefix("$share/") {
            if let Some((group, f)) = rest.split_once('/') {
                if let Some(g) = self.groups.iter_mut().find(|g| g.0 == f && g.1 == group) {
                    g.2.members.push(conn);
                } else {
                    let g = Group { members: vec![conn], next: 0 };
                    self.groups.push((f.to_string(), group.to_string(), g));
                }
                return;
            }
        }
        self.plain.push((filter.to_string(), conn));
    }

    fn remove(&mut self, conn: usize) {
        self.cache.clear();
        self.plain.retain(|p| p.1 != conn);
        for g in &mut self.groups {
            g.2.members.retain(|&m| m != conn);
        }
    }

    /// Connections that get a PUBLISH to `topic`.
    fn route(&mut self, topic: &[u8], out: &mut Vec<usize>) {
        if !self.cache.contains_key(topic) {
            let t = String::from_utf8_lossy(topic);
            let plain = self.plain.iter().filter(|p| matches(&p.0, &t)).map(|p| p.1).collect();
            let groups =
                (0..self.groups.len()).filter(|&i| matches(&self.groups[i].0, &t)).collect();
            self.cache.insert(topic.to_vec(), (plain, groups));
        }
        let Some((plain, groups)) = self.cache.get(topic) else { return };
        out.extend_from_slice(plain);
        for &gi in groups {
            let g = &mut self.groups[gi].2;
            if !g.members.is_empty() {
                out.push(g.members[g.next % g.members.len()]);
                g.next = g.next.wrapping_add(1);
            }
        }
    }
}

/// Serves on `listen` until `max_secs` have passed.
pub fn run(listen: SocketAddr, max_secs: f64) -> Result<()> {
    crate::runner::raise_nofile();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("relay listening on {listen} for at most {max_secs} s");
    let mut conns: Vec<Option<RConn>> = Vec::new();
    let mut router = Router::default();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0u8; SCRATCH_BYTES];
    let mut dirty: Vec<usize> = Vec::new();
    let mut targets = Vec::new();
    let mut dropped = 0u64;
    let deadline = Instant::now() + Duration::from_secs_f64(max_secs);
    while Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&listener, &mut poll, &mut conns)?;
                continue;
            }
            let i = ev.token().0;
            if ev.is_writable() {
                dirty.push(i);
            }
            if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
                continue;
            }
            let closed = read_conn(
                i,
                &mut conns,
                &mut router,
                &mut scratch,
                &mut dirty,
                &mut targets,
                &mut dropped,
            );
            if closed {
                router.remove(i);
                conns[i] = None;
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        for i in dirty.drain(..) {
            let Some(c) = conns.get_mut(i).and_then(Option::as_mut) else { continue };
            if flush(c).is_err() {
                router.remove(i);
                conns[i] = None;
            }
        }
    }
    eprintln!("relay: time limit reached; {dropped} frames dropped to slow subscribers");
    Ok(())
}

fn accept_all(
    listener: &TcpListener,
    poll: &mut Poll,
    conns: &mut Vec<Option<RConn>>,
) -> Result<()> {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let slot = match conns.iter().position(Option::is_none) {
                    Some(s) => s,
                    None if conns.len() < CONNECTIONS_MAX => {
                        conns.push(None);
                        conns.len() - 1
                    }
                    None => continue, // refuse by dropping
                };
                stream.set_nodelay(true)?;
                poll.registry().register(
                    &mut stream,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                conns[slot] = Some(RConn {
                    stream,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    out_pos: 0,
                    v5: false,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("relay: accept: {e}");
                return Ok(());
            }
        }
    }
}

/// Reads and handles everything connection `i` sent; returns true when it closed.
fn read_conn(
    i: usize,
    conns: &mut [Option<RConn>],
    router: &mut Router,
    scratch: &mut [u8],
    dirty: &mut Vec<usize>,
    targets: &mut Vec<usize>,
    dropped: &mut u64,
) -> bool {
    loop {
        let Some(c) = conns[i].as_mut() else { return false };
        let n = match c.stream.read(scratch) {
            Ok(0) => return true,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        };
        let mut buf = std::mem::take(&mut c.inbuf);
        buf.extend_from_slice(&scratch[..n]);
        let mut pos = 0;
        while pos < buf.len() {
            let h = match codec::check(&buf[pos..], 268_435_460, None) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => return true,
            };
            if buf.len() - pos < h.packet_len() {
                break;
            }
            let frame = &buf[pos..pos + h.packet_len()];
            let body = &frame[h.header_len..];
            if handle(
                i,
                h.packet_type,
                h.flags,
                frame,
                body,
                conns,
                router,
                dirty,
                targets,
                dropped,
            ) {
                return true;
            }
            pos += h.packet_len();
        }
        buf.drain(..pos);
        if let Some(c) = conns[i].as_mut() {
            c.inbuf = buf;
        }
        dirty.push(i);
    }
}

#[allow(clippy::too_many_arguments)]
fn handle(
    i: usize,
    t: PacketType,
    flags: u8,
    frame: &[u8],
    body: &[u8],
    conns: &mut [Option<RConn>],
    router: &mut Router,
    dirty: &mut Vec<usize>,
    targets: &mut Vec<usize>,
    dropped: &mut u64,
) -> bool {
    let Some(c) = conns[i].as_mut() else { return true };
    let pid = |at: usize| body.get(at..at + 2).map_or([0, 1], |b| [b[0], b[1]]);
    match t {
        PacketType::Connect => {
            let name_len =
                body.get(..2).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
            c.v5 = body.get(2 + name_len) == Some(&5);
            let ack: &[u8] = if c.v5 { &[0x20, 3, 0, 0, 0] } else { &[0x20, 2, 0, 0] };
            c.out.extend_from_slice(ack);
        }
        PacketType::Subscribe => {
            let p = pid(0);
            let mut at = 2;
            if c.v5 {
                // Skip the properties (their length is a varint; small here).
                let Some(&l) = body.get(at) else { return true };
                at += 1 + usize::from(l & 0x7F);
            }
            let mut granted = Vec::new();
            while at + 2 <= body.len() {
                let l = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
                let Some(f) = body.get(at + 2..at + 2 + l) else { return true };
                let opts = body.get(at + 2 + l).copied().unwrap_or(0);
                router.subscribe(&String::from_utf8_lossy(f), i);
                granted.push(opts & 3);
                at += 3 + l;
            }
            let props = usize::from(c.v5);
            c.out.extend_from_slice(&[0x90, (2 + props + granted.len()) as u8, p[0], p[1]]);
            if c.v5 {
                c.out.push(0);
            }
            c.out.extend_from_slice(&granted);
        }
        PacketType::Unsubscribe => {
            let p = pid(0);
            c.out.extend_from_slice(&[0xB0, 2, p[0], p[1]]);
        }
        PacketType::Publish => {
            let qos = (flags >> 1) & 3;
            let tl = body.get(..2).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
            let Some(topic) = body.get(2..2 + tl) else { return true };
            match qos {
                1 => {
                    let p = pid(2 + tl);
                    c.out.extend_from_slice(&[0x40, 2, p[0], p[1]]);
                }
                2 => {
                    let p = pid(2 + tl);
                    c.out.extend_from_slice(&[0x50, 2, p[0], p[1]]);
                }
                _ => {}
            }
            targets.clear();
            router.route(topic, targets);
            for &s in targets.iter() {
                let Some(sc) = conns.get_mut(s).and_then(Option::as_mut) else { continue };
                if sc.out.len() - sc.out_pos + frame.len() > OUT_BYTES_MAX {
                    *dropped += 1;
                    continue;
                }
                sc.out.extend_from_slice(frame);
                dirty.push(s);
            }
        }
        PacketType::PubRel => {
            let p = pid(0);
            c.out.extend_from_slice(&[0x70, 2, p[0], p[1]]);
        }
        PacketType::PubRec => {
            let p = pid(0);
            c.out.extend_from_slice(&[0x62, 2, p[0], p[1]]);
        }
        PacketType::PingReq => c.out.extend_from_slice(&[0xD0, 0]),
        PacketType::Disconnect => return true,
        _ => {}
    }
    false
}

fn flush(c: &mut RConn) -> std::io::Result<()> {
    while c.out_pos < c.out.len() {
        match c.stream.write(&c.out[c.out_pos..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if c.out_pos == c.out.len() {
        c.out.clear();
        c.out_pos = 0;
    } else if c.out_pos > 1 << 20 {
        c.out.drain(..c.out_pos);
        c.out_pos = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matching() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a/c"));
    }

    #[test]
    fn shared_groups_round_robin() {
        let mut r = Router::default();
        r.subscribe("$share/g/t/+", 1);
        r.subscribe("$share/g/t/+", 2);
        r.subscribe("t/#", 3);
        let mut out = Vec::new();
        r.route(b"t/x", &mut out);
        r.route(b"t/x", &mut out);
        assert_eq!(out, vec![3, 1, 3, 2]);
    }
}
