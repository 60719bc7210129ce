//! Counters a shard owns: plain `u64` fields, no atomics on the hot path. Once a second each
//! shard copies its counters and its latency histogram to the [`StatsBoard`] (a mutex per
//! shard, touched once a second, never per message); the metrics endpoint and `$SYS` read the
//! board and add the shards up.

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

pub use crate::counters::{new_latency_histogram, Metrics};

/// What one shard last reported.
#[derive(Clone)]
struct Slot {
    metrics: Metrics,
    latency: Histogram<u64>,
}

/// One bridge counter, for `/metrics` and `$SYS`.
struct BridgeValue {
    key: &'static str,
    value: u64,
    gauge: bool,
    help: &'static str,
}

/// The shards' last reports, for the metrics endpoint and `$SYS`.
pub struct StatsBoard {
    slots: Vec<Mutex<Slot>>,
    started: Instant,
    /// Highest total of connections seen at a report.
    connections_max: Mutex<u64>,
    /// The bridges' counters, set once at start.
    bridges: std::sync::OnceLock<Vec<std::sync::Arc<crate::bridge::BridgeStats>>>,
    /// The memory plan's figures (name, bytes, help), set once at start.
    memory_plan: std::sync::OnceLock<Vec<(&'static str, u64, &'static str)>>,
    /// The broker-wide memory budget, set once at start: what the shards hold for delivery.
    memory_budget: std::sync::OnceLock<std::sync::Arc<crate::shard::budget::MemoryBudget>>,
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
            bridges: std::sync::OnceLock::new(),
            memory_plan: std::sync::OnceLock::new(),
            memory_budget: std::sync::OnceLock::new(),
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

    /// Registers the memory plan's figures (once, at start) for `/metrics`
    /// (`tern_memory_plan_<name>`) and `$SYS/broker/memory/plan/<name>`.
    pub fn set_memory_plan(&self, values: Vec<(&'static str, u64, &'static str)>) {
        let _ = self.memory_plan.set(values);
    }

    /// Registers the broker-wide memory budget (once, at start): `/metrics` shows its charged
    /// bytes (`tern_memory_charged_bytes`) beside the process's resident memory
    /// (`tern_process_resident_bytes`), so messages held apart from memory the allocator or
    /// the buffers keep.
    pub fn set_memory_budget(&self, budget: std::sync::Arc<crate::shard::budget::MemoryBudget>) {
        let _ = self.memory_budget.set(budget);
    }

    /// The process's resident memory in bytes (`VmRSS` of `/proc/self/status`, in KiB there,
    /// whatever the page size), when it can be read.
    fn resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    }

    fn memory_plan_values(&self) -> &[(&'static str, u64, &'static str)] {
        self.memory_plan.get().map_or(&[], Vec::as_slice)
    }

    /// Registers the bridges' counters (once, at start) for `/metrics` and `$SYS`.
    pub fn set_bridges(&self, bridges: Vec<std::sync::Arc<crate::bridge::BridgeStats>>) {
        let _ = self.bridges.set(bridges);
    }

    /// Each bridge's name and counters.
    fn bridge_values(&self) -> Vec<(&str, [BridgeValue; 6])> {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let value = |key, value, gauge, help| BridgeValue { key, value, gauge, help };
        let Some(list) = self.bridges.get() else { return Vec::new() };
        list.iter()
            .map(|b| {
                let values = [
                    value("connected", get(&b.connected), true, "1 while the bridge is connected."),
                    value("connects", get(&b.connects), false, "Connections made to the remote."),
                    value("sent", get(&b.sent), false, "Messages forwarded to the remote."),
                    value(
                        "received",
                        get(&b.received),
                        false,
                        "Messages received from the remote.",
                    ),
                    value(
                        "inflight",
                        get(&b.inflight),
                        true,
                        "QoS 1 messages forwarded and not yet acknowledged.",
                    ),
                    value("dropped", get(&b.dropped), false, "Messages no bridge topic maps."),
                ];
                (b.name.as_str(), values)
            })
            .collect()
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
            // Not in Mosquitto's layout: the pre-authentication and user-property bounds.
            ("$SYS/broker/packets/refused/preauth size".into(), v(t.preauth_packets_refused_size)),
            ("$SYS/broker/packets/refused/user properties".into(), v(t.user_properties_refused)),
            // Every shard holds a replica: the count is one shard's, not the sum.
            (
                "$SYS/broker/retained messages/count".into(),
                v(self.per_shard().first().map_or(0, |m| m.retained_messages)),
            ),
            // Durability (zero without a data directory).
            ("$SYS/broker/persistence/log/bytes".into(), v(t.wal_bytes)),
            ("$SYS/broker/persistence/log/records".into(), v(t.wal_records)),
            ("$SYS/broker/persistence/fsyncs".into(), v(t.wal_fsyncs)),
            (
                "$SYS/broker/persistence/records per fsync".into(),
                v(t.wal_records_synced.checked_div(t.wal_fsyncs).unwrap_or(0)),
            ),
            (
                "$SYS/broker/persistence/commit latency mean us".into(),
                v(t.wal_commit_us_sum.checked_div(t.wal_fsyncs).unwrap_or(0)),
            ),
            ("$SYS/broker/persistence/pending full".into(), v(t.wal_pending_full)),
            (
                "$SYS/broker/persistence/recovery ms".into(),
                v(self.per_shard().iter().map(|m| m.wal_recovery_ms).max().unwrap_or(0)),
            ),
        ]
        .into_iter()
        .chain(self.bridge_values().into_iter().flat_map(|(name, values)| {
            values.map(|b| (format!("$SYS/broker/bridges/{name}/{}", b.key), v(b.value)))
        }))
        .chain(
            self.memory_plan_values()
                .iter()
                .map(|(name, bytes, _)| (format!("$SYS/broker/memory/plan/{name}"), v(*bytes))),
        )
        .collect()
    }

    /// The Prometheus text exposition: every counter per shard (`shard="N"`), and the
    /// publish-to-deliver latency histogram. There is no `shard="total"` series: it would be
    /// counted twice by `sum(tern_x)`; the total is `sum without (shard) (tern_x)`. (Every shard
    /// holds a replica of the retained store, so for `tern_retained_messages` take `max`.)
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let per = self.per_shard();
        let total = self.total();
        let mut out = String::with_capacity(16 * 1024);
        total.visit(|name, _, gauge, help| {
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
        });
        let bridges = self.bridge_values();
        if let Some((_, first)) = bridges.first() {
            for (k, BridgeValue { key, gauge, help, .. }) in first.iter().enumerate() {
                let metric = if *gauge {
                    format!("tern_bridge_{key}")
                } else {
                    format!("tern_bridge_{key}_total")
                };
                let kind = if *gauge { "gauge" } else { "counter" };
                let _ = writeln!(out, "# HELP {metric} {help}");
                let _ = writeln!(out, "# TYPE {metric} {kind}");
                for (name, values) in &bridges {
                    let _ = writeln!(out, "{metric}{{bridge=\"{name}\"}} {}", values[k].value);
                }
            }
        }
        for (name, bytes, help) in self.memory_plan_values() {
            let _ = writeln!(out, "# HELP tern_memory_plan_{name} {help}");
            let _ = writeln!(out, "# TYPE tern_memory_plan_{name} gauge");
            let _ = writeln!(out, "tern_memory_plan_{name} {bytes}");
        }
        if let Some(budget) = self.memory_budget.get() {
            let name = "tern_memory_charged_bytes";
            let help = "Bytes of messages held for delivery (all shards), as limits.\
                        memory_budget_bytes counts them.";
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {}", budget.used());
        }
        if let Some(rss) = Self::resident_bytes() {
            let name = "tern_process_resident_bytes";
            let _ = writeln!(out, "# HELP {name} Resident memory of the broker process (RSS).");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {rss}");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The start-up memory plan is in `/metrics` and `$SYS` (issue 11).
    #[test]
    fn memory_plan_is_exposed() {
        let board = StatsBoard::new(1);
        assert!(!board.prometheus().contains("tern_memory_plan_"), "nothing before it is set");
        let plan = crate::memory_plan::MemoryPlan::new(&crate::config::Config::default(), 1 << 30);
        board.set_memory_plan(plan.values());
        let text = board.prometheus();
        assert!(text.contains("# TYPE tern_memory_plan_connection_idle_bytes gauge"), "{text}");
        let line = format!("tern_memory_plan_session_worst_bytes {}", plan.session_worst_bytes);
        assert!(text.contains(&line), "{text}");
        let sys = board.sys_topics();
        let host = ("$SYS/broker/memory/plan/host_bytes".to_string(), (1u64 << 30).to_string());
        assert!(sys.contains(&host), "{sys:?}");
    }

    /// Issue 9: the bytes the shards hold for delivery beside the process's RSS, so growth
    /// the bounds see is told apart from memory the allocator or buffers keep.
    #[test]
    fn charged_and_resident_memory_are_exposed() {
        let board = StatsBoard::new(1);
        assert!(!board.prometheus().contains("tern_memory_charged_bytes"), "not set yet");
        let budget = std::sync::Arc::new(crate::shard::budget::MemoryBudget::new(1 << 20));
        budget.recharge(0, 12_345);
        board.set_memory_budget(std::sync::Arc::clone(&budget));
        let text = board.prometheus();
        assert!(text.contains("# TYPE tern_memory_charged_bytes gauge"), "{text}");
        assert!(text.contains("tern_memory_charged_bytes 12345\n"), "{text}");
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("tern_process_resident_bytes "))
            .and_then(|v| v.parse::<u64>().ok())
            .expect("resident bytes on Linux");
        assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
    }

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
        assert!(text.contains("tern_messages_received_total{shard=\"1\"} 4"), "{text}");
        // No total series: `sum()` over the shards would count it twice.
        assert!(!text.contains("total\""), "{text}");
        assert!(text.contains("tern_publish_latency_seconds_bucket{le=\"0.00025\"} 1"));
        assert!(text.contains("tern_publish_latency_seconds_bucket{le=\"0.0001\"} 0"));
        let sys = board.sys_topics();
        assert!(sys.contains(&("$SYS/broker/messages/received".into(), "7".into())));
        let bridge = std::sync::Arc::new(crate::bridge::BridgeStats {
            name: "cloud".into(),
            ..Default::default()
        });
        bridge.sent.store(5, std::sync::atomic::Ordering::Relaxed);
        bridge.connected.store(1, std::sync::atomic::Ordering::Relaxed);
        board.set_bridges(vec![bridge]);
        let text = board.prometheus();
        assert!(text.contains("# TYPE tern_bridge_connected gauge"), "{text}");
        assert!(text.contains("tern_bridge_connected{bridge=\"cloud\"} 1"), "{text}");
        assert!(text.contains("tern_bridge_sent_total{bridge=\"cloud\"} 5"), "{text}");
        let sys = board.sys_topics();
        assert!(sys.contains(&("$SYS/broker/bridges/cloud/sent".into(), "5".into())), "{sys:?}");
        assert!(sys.contains(&("$SYS/broker/clients/maximum".into(), "2".into())));
    }
}
