//! Reads another process's resident memory and CPU time from /proc (Linux only): the broker's
//! cost, given `--broker-pid`.

use std::time::Instant;

/// Clock ticks per second of /proc/PID/stat times. 100 on every Linux architecture this runs
/// on (USER_HZ); reading it properly needs sysconf(_SC_CLK_TCK), i.e. unsafe libc.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// Resident set size, bytes (VmRSS).
    pub rss_bytes: u64,
    /// User + system CPU time of all threads, ticks.
    pub cpu_ticks: u64,
    /// When it was read.
    pub at: Instant,
}

/// Reads `pid`; `None` when the process is gone or /proc is not there.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample { rss_bytes: rss_kib * 1024, cpu_ticks: utime + stime, at: Instant::now() })
}

/// CPU used between two samples, in percent of one core.
pub fn cpu_percent(a: &ProcSample, b: &ProcSample) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / TICKS_PER_SEC) / secs * 100.0
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_itself() {
        let s = super::sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_bytes > 0);
    }
}
