//! Counters a shard owns: plain `u64` fields, no atomics on the hot path. The metrics endpoint
//! and `$SYS` gather them from every shard by message and add them up.

/// One shard's counters. `*_current` fields are gauges; the rest only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Connections open now.
    pub connections_current: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections refused because a listener's `connections_max` was reached.
    pub connections_refused_limit: u64,
    /// Successful CONNECTs.
    pub connects: u64,
    /// CONNECTs answered with a refusal.
    pub connect_refused: u64,
    /// CONNECTs refused for missing or bad credentials.
    pub auth_failures: u64,
    /// Sessions taken over from another shard.
    pub takeovers: u64,
    /// Sessions held now (connected or not).
    pub sessions_current: u64,
    /// Sessions ended by their expiry interval.
    pub sessions_expired: u64,
    /// Subscriptions held by this shard's sessions.
    pub subscriptions_current: u64,
    /// SUBSCRIBE filters refused by `subscriptions_per_client_max`.
    pub subscriptions_refused_limit: u64,
    /// Retained messages held (replica).
    pub retained_messages: u64,
    /// Retained messages refused by the retained bounds.
    pub retained_refused: u64,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets written to clients.
    pub messages_sent: u64,
    /// Publishes handed to another shard.
    pub messages_forwarded: u64,
    /// Bytes received from clients.
    pub bytes_received: u64,
    /// Bytes queued for clients.
    pub bytes_sent: u64,
    /// QoS 0 deliveries dropped: the subscriber's output buffer was full.
    pub messages_dropped_qos0_slow: u64,
    /// QoS 0 deliveries dropped: the session has no connection.
    pub messages_dropped_qos0_offline: u64,
    /// Deliveries dropped by the session queue bounds.
    pub messages_dropped_queue_full: u64,
    /// Deliveries dropped: the message expired first.
    pub messages_dropped_expired: u64,
    /// Deliveries dropped: larger than the client's Maximum Packet Size.
    pub messages_dropped_too_large: u64,
    /// Queued messages dropped because their session ended.
    pub messages_dropped_session_end: u64,
    /// Shared deliveries dropped: the chosen member and every local member left.
    pub messages_dropped_no_member: u64,
    /// Publishes refused (to `$SYS`, or by ACL).
    pub publish_denied: u64,
    /// QoS 2 PUBLISH resent before PUBREL, not routed again.
    pub inbound_qos2_duplicates: u64,
    /// Wills published.
    pub wills_published: u64,
    /// Malformed packets received.
    pub protocol_errors: u64,
    /// Connections closed for a protocol error.
    pub protocol_closes: u64,
    /// Connections closed by keep alive.
    pub keepalive_timeouts: u64,
    /// Connections closed before CONNECT by the connect timeout.
    pub connect_timeouts: u64,
    /// Times a publisher was paused because a peer shard's channel was full.
    pub mesh_backpressure: u64,
}
