//! One shard's counters: plain `u64` fields, no atomics on the hot path, and its
//! publish-to-deliver latency histogram. The shard owns them; the runtime copies them out (see
//! `tern::metrics::StatsBoard`). No IO, no clock.

use hdrhistogram::Histogram;

macro_rules! metrics {
    ($( #[doc = $doc:literal] $kind:ident $name:ident, )*) => {
        /// One shard's counters. Gauges say "now"; the rest only grow.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Metrics {
            $( #[doc = $doc] pub $name: u64, )*
        }

        impl Metrics {
            /// Adds `other` field by field (gauges too: a total over shards).
            pub fn add(&mut self, other: &Metrics) {
                $( self.$name += other.$name; )*
            }

            /// Visits every counter: name, value, whether it is a gauge, and its help text.
            pub fn visit(&self, mut f: impl FnMut(&'static str, u64, bool, &'static str)) {
                $( f(stringify!($name), self.$name, metrics!(@gauge $kind), $doc.trim()); )*
            }
        }
    };
    (@gauge gauge) => { true };
    (@gauge counter) => { false };
}

metrics! {
    /// Connections open now.
    gauge connections_current,
    /// Idle plain-TCP connections parked now: no task of their own, their socket in the shard's epoll set (counted in `connections_current` too).
    gauge connections_parked,
    /// Connections accepted since start.
    counter connections_total,
    /// Connections refused because a listener's `connections_max` was reached.
    counter connections_refused_limit,
    /// Times a listener stopped accepting because `limits.connecting_max` connections were between accept and CONNACK (the next clients waited in the listen backlog).
    counter accepts_deferred,
    /// Successful CONNECTs.
    counter connects,
    /// CONNECTs answered with a refusal.
    counter connect_refused,
    /// CONNECTs refused for missing or bad credentials.
    counter auth_failures,
    /// Sessions taken over from another shard.
    counter takeovers,
    /// Pending CONNECTs closed before CONNACK because a newer CONNECT took their client id.
    counter takeovers_superseded,
    /// Sessions handed to another shard while messages may still be routed here for them.
    counter handover_records,
    /// Messages forwarded to a session's new shard after its handover.
    counter handover_forwarded,
    /// Direct deliveries to a joining session skipped (its previous shard forwards them).
    counter handover_skipped,
    /// Deliveries to a joining session dropped as the second copy of one message.
    counter handover_duplicates,
    /// Message ids a joining session could not record: its de-duplication set was full.
    counter handover_dedup_full,
    /// Sessions held now (connected or not).
    gauge sessions_current,
    /// Sessions ended by their expiry interval.
    counter sessions_expired,
    /// Subscriptions held by this shard's sessions.
    gauge subscriptions_current,
    /// SUBSCRIBE filters refused by `subscriptions_per_client_max`.
    counter subscriptions_refused_limit,
    /// Retained messages held (each shard holds a replica).
    gauge retained_messages,
    /// Bytes the retained messages count for (this shard's replica).
    gauge retained_bytes,
    /// Retained messages refused by the retained bounds.
    counter retained_refused,
    /// Subscriptions whose retained messages did not all fit the connection's backlog (one per filter).
    counter retained_dropped_backlog,
    /// Retained messages not sent because their publisher may no longer publish to the topic.
    counter retained_denied_source,
    /// PUBLISH packets received from clients.
    counter messages_received,
    /// PUBLISH packets written to clients.
    counter messages_sent,
    /// Publishes handed to another shard.
    counter messages_forwarded,
    /// Bytes received from clients.
    counter bytes_received,
    /// Bytes queued for clients.
    counter bytes_sent,
    /// QoS 0 deliveries dropped: the connected subscriber's queue holds `flow_qos0_queue_bytes_max`.
    counter messages_dropped_qos0_slow,
    /// QoS 0 deliveries dropped: the session has no connection.
    counter messages_dropped_qos0_offline,
    /// Deliveries dropped by the session queue bounds.
    counter messages_dropped_queue_full,
    /// Deliveries dropped: the message expired first.
    counter messages_dropped_expired,
    /// Deliveries dropped: larger than the client's Maximum Packet Size.
    counter messages_dropped_too_large,
    /// Control packets not sent: over the client's Maximum Packet Size even without options.
    counter packets_dropped_too_large,
    /// Closes whose input drain hit its bound (2 s or 1 MiB) before the client closed.
    counter close_drains_cut,
    /// Queued messages dropped because their session ended.
    counter messages_dropped_session_end,
    /// Shared deliveries dropped: the chosen member and every local member left.
    counter messages_dropped_no_member,
    /// Publishes refused (to `$SYS`, bad payload format, or by ACL).
    counter publish_denied,
    /// Subscriptions refused by ACL.
    counter subscribe_denied,
    /// QoS 2 PUBLISH resent before PUBREL, not routed again.
    counter inbound_qos2_duplicates,
    /// Wills published.
    counter wills_published,
    /// Malformed packets received.
    counter protocol_errors,
    /// Packets refused before authentication by `limits.preauth_packet_bytes_max` (also in `protocol_errors`).
    counter preauth_packets_refused_size,
    /// Packets refused by `limits.user_properties_max` / `user_property_bytes_max` (also in `protocol_errors`).
    counter user_properties_refused,
    /// Connections closed for a protocol error.
    counter protocol_closes,
    /// TLS connections closed for more than 32 records in a row without application data (empty records, key updates, warning alerts), Tern's TLS record layer.
    counter tls_empty_record_runs_refused,
    /// Connections closed by keep alive.
    counter keepalive_timeouts,
    /// Connections closed before CONNECT by the connect timeout.
    counter connect_timeouts,
    /// Times a peer shard's channel was full and the flusher had to wait.
    counter mesh_backpressure,
    /// Emptied cross-shard batches freed instead of going back to their sender for reuse (the pair held its 2 spares, or the batch grew past `mesh_batch_max`): an allocation per flush, not a loss.
    counter mesh_spare_batches_freed,
    /// Times a publisher was paused by a congested subscriber or a full peer outbox.
    counter flow_pauses,
    /// Times such a pause was lifted (the subscriber drained to `flow_low_water_messages`).
    counter flow_resumes,
    /// Publishing sessions paused now.
    gauge flow_paused_publishers,
    /// Subscribers disconnected as slow consumers (policy `disconnect`).
    counter slow_consumers_disconnected,
    /// Subscribers that became slow consumers under policy `drop`.
    counter slow_consumers_dropping,
    /// Deliveries dropped for a slow consumer under policy `drop`.
    counter messages_dropped_slow_consumer,
    /// QoS 1/2 PUBLISH answered 0x97 (Quota exceeded) because a full offline queue refused it.
    counter publish_quota_exceeded,
    /// CONNECTs refused because the memory budget was used up.
    counter connect_refused_memory,
    /// Deliveries not queued because the memory budget was used up.
    counter messages_dropped_memory,
    /// 1 while the broker-wide memory budget is used up (as seen at this shard's last tick).
    gauge memory_exhausted,
    /// SUBSCRIBE packets refused whole: more filters than `subscriptions_per_client_max`.
    counter subscribe_refused_too_many,
    /// Connections closed because the peer accepted no output for `write_timeout_secs`.
    counter write_timeouts,
    /// Sessions restored from the write-ahead log at start.
    counter sessions_restored,
    /// Sessions found in the log but not restored (`sessions_max` reached, or duplicated).
    counter sessions_not_restored,
    /// Delayed wills restored from the write-ahead log at start, waiting again.
    counter wills_restored,
    /// Delayed wills found in the log whose session was not restored (dropped).
    counter wills_not_restored,
    /// Records appended to the write-ahead log.
    counter wal_records,
    /// Bytes appended to the write-ahead log.
    counter wal_bytes,
    /// Group commits (one write and one fdatasync each): fsyncs per second as a rate.
    counter wal_fsyncs,
    /// Records made durable by those commits (divided by `wal_fsyncs`: records per fsync).
    counter wal_records_synced,
    /// Commit latency histogram, cumulative buckets: commits that took at most 250 µs.
    counter wal_commit_le_250us,
    /// Commits that took at most 1 ms (includes the smaller buckets).
    counter wal_commit_le_1ms,
    /// Commits that took at most 4 ms.
    counter wal_commit_le_4ms,
    /// Commits that took at most 16 ms.
    counter wal_commit_le_16ms,
    /// Commits that took at most 64 ms.
    counter wal_commit_le_64ms,
    /// Sum of every commit's latency, microseconds (with `wal_fsyncs`: the mean).
    counter wal_commit_us_sum,
    /// Times the records not yet durable reached `pending_records_max` (publishers paused).
    counter wal_pending_full,
    /// Bytes dropped from torn or corrupt log tails at start.
    counter wal_discarded_bytes,
    /// Time the log recovery took at start, milliseconds.
    gauge wal_recovery_ms,
}

impl Metrics {
    /// Every message dropped, whatever the reason.
    pub fn messages_dropped(&self) -> u64 {
        self.messages_dropped_qos0_slow
            + self.messages_dropped_qos0_offline
            + self.messages_dropped_queue_full
            + self.messages_dropped_expired
            + self.messages_dropped_too_large
            + self.messages_dropped_session_end
            + self.messages_dropped_no_member
            + self.messages_dropped_slow_consumer
            + self.messages_dropped_memory
    }
}

/// Publish-to-deliver latency in microseconds, 1 µs to 60 s, 3 significant digits (~40 KiB).
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("invariant: constant, valid bounds")
}
