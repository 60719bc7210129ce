//! Counters a shard owns: plain `u64` fields, no atomics on the hot path. Once a second each
//! shard copies its counters and its latency histogram to the [`StatsBoard`] (a mutex per
//! shard, touched once a second, never per message); the metrics endpoint and `$SYS` read the
//! board and add the shards up.

use std::sync::Mutex;
use std::time::Instant;

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
    /// Connections accepted since start.
    counter connections_total,
    /// Connections refused because a listener's `connections_max` was reached.
    counter connections_refused_limit,
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
    /// Retained messages not sent after a SUBACK: the connection already owed the maximum.
    counter retained_dropped_backlog,
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
    /// QoS 0 deliveries dropped: the subscriber's output buffer was full.
    counter messages_dropped_qos0_slow,
    /// QoS 0 deliveries dropped: the session has no connection.
    counter messages_dropped_qos0_offline,
    /// Deliveries dropped by the session queue bounds.
    counter messages_dropped_queue_full,
    /// Deliveries dropped: the message expired first.
    counter messages_dropped_expired,
    /// Deliveries dropped: larger than the client's Maximum Packet Size.
    counter messages_dropped_too_large,
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
    /// Connections closed for a protocol error.
    counter protocol_closes,
    /// Connections closed by keep alive.
    counter keepalive_timeouts,
    /// Connections closed before CONNECT by the connect timeout.
    counter connect_timeouts,
    /// Times a peer shard's channel was full and the flusher had to wait.
    counter mesh_backpressure,
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
            + self.messages_dropped_memory
    }
}

/// Publish-to-deliver latency in microseconds, 1 µs to 60 s, 3 significant digits (~40 KiB).
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("invariant: constant, valid bounds")
}

/// What one shard last reported.
#[derive(Clone)]
struct Slot {
    metrics: Metrics,
    latency: Histogram<u64>,
}

/// The shards' last reports, for the metrics endpoint and `$SYS`.
pub struct StatsBoard {
    slots: Vec<Mutex<Slot>>,
    started: Instant,
    /// Highest total of connections seen at a report.
    connections_max: Mutex<u64>,
}

impl std::fmt::Debug for StatsBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsBoard").field("shards", &self.slots.len()).finish()
    }
}

impl StatsBoard {
    /// A board for `shards` shards.
    pub fn new(shards: usize) -> Self {
        let slot = Slot { metrics: Metrics::default(), latency: new_latency_histogram() };
        Self {
            slots: (0..shards).map(|_| Mutex::new(slot.clone())).collect(),
            started: Instant::now(),
            connections_max: Mutex::new(0),
        }
    }

    /// Shard `shard` reports its counters and latency histogram (once a second).
    pub fn update(&self, shard: usize, metrics: &Metrics, latency: &Histogram<u64>) {
        if let Some(slot) = self.slots.get(shard) {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            s.metrics.clone_from(metrics);
            s.latency.reset();
            let _ = s.latency.add(latency);
        }
        let total: u64 = self.per_shard().iter().map(|m| m.connections_current).sum();
        let mut max = self.connections_max.lock().unwrap_or_else(|p| p.into_inner());
        *max = (*max).max(total);
    }

    /// Each shard's last report.
    pub fn per_shard(&self) -> Vec<Metrics> {
        self.slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).metrics.clone())
            .collect()
    }

    /// The sum over shards.
    pub fn total(&self) -> Metrics {
        let mut t = Metrics::default();
        for m in self.per_shard() {
            t.add(&m);
        }
        t
    }

    /// The merged latency histogram.
    pub fn latency(&self) -> Histogram<u64> {
        let mut h = new_latency_histogram();
        for s in &self.slots {
            let _ = h.add(&s.lock().unwrap_or_else(|p| p.into_inner()).latency);
        }
        h
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The `$SYS/broker/...` topics and values, in Mosquitto's layout.
    pub fn sys_topics(&self) -> Vec<(String, String)> {
        let t = self.total();
        let max = *self.connections_max.lock().unwrap_or_else(|p| p.into_inner());
        let v = |n: u64| n.to_string();
        vec![
            ("$SYS/broker/version".into(), format!("tern {}", crate::VERSION)),
            ("$SYS/broker/uptime".into(), format!("{} seconds", self.uptime_secs())),
            ("$SYS/broker/clients/connected".into(), v(t.connections_current)),
            ("$SYS/broker/clients/total".into(), v(t.sessions_current.max(t.connections_current))),
            (
                "$SYS/broker/clients/disconnected".into(),
                v(t.sessions_current.saturating_sub(t.connections_current)),
            ),
            ("$SYS/broker/clients/maximum".into(), v(max)),
            ("$SYS/broker/messages/received".into(), v(t.messages_received)),
            ("$SYS/broker/messages/sent".into(), v(t.messages_sent)),
            ("$SYS/broker/publish/messages/dropped".into(), v(t.messages_dropped())),
            ("$SYS/broker/bytes/received".into(), v(t.bytes_received)),
            ("$SYS/broker/bytes/sent".into(), v(t.bytes_sent)),
            ("$SYS/broker/subscriptions/count".into(), v(t.subscriptions_current)),
            // Every shard holds a replica: the count is one shard's, not the sum.
            (
                "$SYS/broker/retained messages/count".into(),
                v(self.per_shard().first().map_or(0, |m| m.retained_messages)),
            ),
        ]
    }

    /// The Prometheus text exposition: every counter per shard (`shard="N"`) and in total
    /// (`shard="total"`), and the publish-to-deliver latency histogram.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let per = self.per_shard();
        let total = self.total();
        let mut out = String::with_capacity(16 * 1024);
        total.visit(|name, value, gauge, help| {
            let kind = if gauge { "gauge" } else { "counter" };
            let metric = if gauge { format!("tern_{name}") } else { format!("tern_{name}_total") };
            let _ = writeln!(out, "# HELP {metric} {help}");
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (i, m) in per.iter().enumerate() {
                m.visit(|n, v, _, _| {
                    if n == name {
                        let _ = writeln!(out, "{metric}{{shard=\"{i}\"}} {v}");
                    }
                });
            }
            let _ = writeln!(out, "{metric}{{shard=\"total\"}} {value}");
        });
        let _ = writeln!(out, "# HELP tern_uptime_seconds Seconds since the broker started.");
        let _ = writeln!(out, "# TYPE tern_uptime_seconds gauge");
        let _ = writeln!(out, "tern_uptime_seconds {}", self.uptime_secs());
        let h = self.latency();
        let name = "tern_publish_latency_seconds";
        let _ = writeln!(out, "# HELP {name} Publish (received) to deliver (written) latency.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for le_us in [50u64, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 100_000, 1_000_000]
        {
            let count: u64 = h
                .iter_recorded()
                .filter(|v| v.value_iterated_to() <= le_us)
                .map(|v| v.count_at_value())
                .sum();
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {count}", le_us as f64 / 1e6);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
        let sum_us: f64 = h
            .iter_recorded()
            .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
            .sum();
        let _ = writeln!(out, "{name}_sum {}", sum_us / 1e6);
        let _ = writeln!(out, "{name}_count {}", h.len());
        out
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` from a plain thread until `stop`
/// is set. Control plane only: one request at a time, requests bounded to 8 KiB and 2 s.
pub fn serve_http(
    listener: std::net::TcpListener,
    board: std::sync::Arc<StatsBoard>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("tern-metrics".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let (mut conn, _) = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint accept failed");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
            let mut req = [0u8; 8192];
            let mut len = 0;
            while len < req.len() && !req[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut req[len..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&req[..len]);
            let (status, body) = if head.starts_with("GET /metrics ") {
                ("200 OK", board.prometheus())
            } else {
                ("404 Not Found", "only GET /metrics is served here\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_and_render() {
        let board = StatsBoard::new(2);
        let mut a = Metrics { messages_received: 3, connections_current: 1, ..Default::default() };
        let mut h = new_latency_histogram();
        h.record(120).expect("in range");
        board.update(0, &a, &h);
        a.messages_received = 4;
        board.update(1, &a, &new_latency_histogram());
        assert_eq!(board.total().messages_received, 7);
        let text = board.prometheus();
        assert!(text.contains("tern_messages_received_total{shard=\"0\"} 3"), "{text}");
        assert!(text.contains("tern_messages_received_total{shard=\"total\"} 7"));
        assert!(text.contains("tern_connections_current{shard=\"total\"} 2"));
        assert!(text.contains("tern_publish_latency_seconds_bucket{le=\"0.00025\"} 1"));
        assert!(text.contains("tern_publish_latency_seconds_bucket{le=\"0.0001\"} 0"));
        let sys = board.sys_topics();
        assert!(sys.contains(&("$SYS/broker/messages/received".into(), "7".into())));
        assert!(sys.contains(&("$SYS/broker/clients/maximum".into(), "2".into())));
    }
}
