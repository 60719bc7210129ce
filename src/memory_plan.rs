//! The memory plan printed at start-up and exposed in `/metrics` and `$SYS` (issue 11): what an
//! idle connection costs, the worst case of one connection and of one session under the
//! configured limits, those times `connections_max` and `sessions_max`, against the host's
//! memory and `memory_budget_bytes`.
//!
//! The worst cases are what the limits allow one client to hold, so their products are an
//! upper bound nobody reaches (every client at every limit at once); the memory budget is what
//! bounds the broker in practice. The idle figure is the one to size a host with: a million idle
//! connections cost `connections_max x idle` of broker memory plus the kernel's socket memory
//! (see `loadtest/README.md`).

use crate::config::Config;

/// Broker memory one idle plain-TCP connection and its session hold besides the records
/// counted by [`crate::shard::record_sizes`]: the client id's map entries, the deadline heap
/// entry, the waker and parked-socket slots, and allocator rounding. A parked connection has no
/// task and no glommio `Source` (`crate::net`, parking). Measured with `tern-loadtest conn`
/// (transparent huge pages off, the default): 976-998 B per connection at 19 000 idle
/// connections, 900 B per connection between 5 000 and 19 000, minus the ~600 B of records
/// (loadtest/README.md, "Compact connections").
pub const RUNTIME_BYTES_PER_CONNECTION: usize = 400;

/// The figures, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// One idle plain-TCP connection with its session: records plus runtime.
    pub connection_idle_bytes: u64,
    /// One connection at every per-connection limit (a packet being read, output at its
    /// bound, topic aliases both ways, a will, a retained backlog), on top of idle.
    pub connection_worst_bytes: u64,
    /// One session at every per-session limit (queue and in-flight bytes, subscriptions).
    pub session_worst_bytes: u64,
    /// `connections_max` summed over the listeners.
    pub connections_max: u64,
    /// `sessions_max`.
    pub sessions_max: u64,
    /// `connections_max x connection_idle_bytes`.
    pub idle_total_bytes: u64,
    /// `connections_max x connection_worst_bytes + sessions_max x session_worst_bytes`.
    pub worst_total_bytes: u64,
    /// `memory_budget_bytes`: what queues, wills and backlogs may hold together.
    pub memory_budget_bytes: u64,
    /// The host's memory (`MemTotal` of /proc/meminfo), 0 when unknown.
    pub host_bytes: u64,
}

impl MemoryPlan {
    /// The plan for `config` on a host with `host_bytes` of memory (0: unknown).
    pub fn new(config: &Config, host_bytes: u64) -> Self {
        let l = &config.limits;
        let records = crate::shard::record_sizes();
        let idle = (records.conn + records.session_slot + RUNTIME_BYTES_PER_CONNECTION) as u64;
        let packet = u64::from(l.packet_size_bytes_max);
        let topic = u64::from(l.topic_bytes_max);
        let aliases = u64::from(l.topic_alias_max) * (topic + 64);
        let connection_worst = idle
            + records.conn_cold as u64
            // A packet being read, and the output buffer at the point reads pause (twice the
            // output bound), plus the one being written.
            + packet
            + 3 * crate::broker::TX_BYTES_MAX as u64
            // Inbound and outbound topic aliases, a will of the largest packet.
            + 2 * aliases
            + packet
            + u64::from(l.retained_messages_max) * records.retained_out as u64;
        let session_worst = records.session_slot as u64
            + l.session_queue_bytes_max
            + u64::from(l.client_id_bytes_max)
            + u64::from(l.subscriptions_per_client_max) * (topic + 96);
        let connections_max: u64 =
            config.listeners.iter().map(|x| u64::from(x.connections_max)).sum();
        let sessions_max = u64::from(l.sessions_max);
        Self {
            connection_idle_bytes: idle,
            connection_worst_bytes: connection_worst,
            session_worst_bytes: session_worst,
            connections_max,
            sessions_max,
            idle_total_bytes: connections_max.saturating_mul(idle),
            worst_total_bytes: connections_max
                .saturating_mul(connection_worst)
                .saturating_add(sessions_max.saturating_mul(session_worst)),
            memory_budget_bytes: l.memory_budget_bytes,
            host_bytes,
        }
    }

    /// The plan for `config` on this host.
    pub fn for_this_host(config: &Config) -> Self {
        Self::new(config, host_memory_bytes().unwrap_or(0))
    }

    /// The start-up log line: info, or a warning when the idle connections alone, or the
    /// memory budget, would not fit in the host's memory.
    pub fn log(&self) {
        let mib = |b: u64| b / (1 << 20);
        let tight = self.host_bytes > 0
            && (self.idle_total_bytes.saturating_add(self.memory_budget_bytes) > self.host_bytes);
        let line = format!(
            "memory plan: idle connection {} B; worst case per connection {} MiB, per session \
             {} MiB; connections_max {} x idle = {} MiB; worst case all at their limits {} MiB; \
             memory_budget_bytes {} MiB bounds queues, wills and backlogs; host memory {} MiB",
            self.connection_idle_bytes,
            mib(self.connection_worst_bytes),
            mib(self.session_worst_bytes),
            self.connections_max,
            mib(self.idle_total_bytes),
            mib(self.worst_total_bytes),
            mib(self.memory_budget_bytes),
            mib(self.host_bytes),
        );
        if tight {
            tracing::warn!(
                "{line}: idle connections plus the memory budget exceed the host's memory; lower \
                 connections_max or memory_budget_bytes"
            );
        } else {
            tracing::info!("{line}");
        }
    }

    /// Name, value and help of each figure, for `/metrics` (`tern_memory_plan_<name>`) and
    /// `$SYS/broker/memory/plan/<name>`.
    pub fn values(&self) -> Vec<(&'static str, u64, &'static str)> {
        vec![
            ("connection_idle_bytes", self.connection_idle_bytes, "Bytes of one idle connection."),
            (
                "connection_worst_bytes",
                self.connection_worst_bytes,
                "Bytes one connection may hold at every per-connection limit.",
            ),
            (
                "session_worst_bytes",
                self.session_worst_bytes,
                "Bytes one session may hold at every per-session limit.",
            ),
            ("idle_total_bytes", self.idle_total_bytes, "connections_max idle connections."),
            (
                "worst_total_bytes",
                self.worst_total_bytes,
                "Every connection and session at its limits (an upper bound).",
            ),
            ("budget_bytes", self.memory_budget_bytes, "The configured memory_budget_bytes."),
            ("host_bytes", self.host_bytes, "The host's memory (0: unknown)."),
        ]
    }
}

/// `MemTotal` of /proc/meminfo in bytes.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_kib() {
        let text = "MemTotal:       24596344 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(text), Some(24_596_344 * 1024));
        assert_eq!(parse_mem_total("MemFree: 3 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn plan_scales_with_the_configured_limits() {
        let mut config = Config::default();
        let base = MemoryPlan::new(&config, 1 << 34);
        assert_eq!(base.sessions_max, u64::from(config.limits.sessions_max));
        assert_eq!(base.idle_total_bytes, base.connections_max * base.connection_idle_bytes);
        // A larger queue bound raises the per-session worst case by exactly that much.
        config.limits.session_queue_bytes_max += 1 << 20;
        let more = MemoryPlan::new(&config, 1 << 34);
        assert_eq!(more.session_worst_bytes, base.session_worst_bytes + (1 << 20));
        assert_eq!(more.worst_total_bytes - base.worst_total_bytes, base.sessions_max * (1 << 20));
        // The packet bound counts twice per connection: the packet being read and a will.
        config.limits.packet_size_bytes_max += 1000;
        let bigger = MemoryPlan::new(&config, 1 << 34);
        assert_eq!(bigger.connection_worst_bytes, base.connection_worst_bytes + 2000);
        // The idle figure does not depend on the limits.
        assert_eq!(bigger.connection_idle_bytes, base.connection_idle_bytes);
        assert!(base.values().iter().any(|(k, v, _)| *k == "host_bytes" && *v == 1 << 34));
    }
}
