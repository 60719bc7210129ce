//! A million idle sessions through their timers, in the sans-IO shard (issue 11): how long the
//! longest turn of deadline work takes.
//!
//! `cargo test -p tern-core --release --test timers -- --ignored --nocapture` (an ignored test:
//! it takes a minute and several GB; `TERN_BENCH_SESSIONS=200000` for a smaller run). It runs
//! with the broker's allocator settings: mimalloc, transparent huge pages off, and a purge
//! delay of 10 ms (re-running itself with `MIMALLOC_PURGE_DELAY=10` unless the environment
//! sets another value: `MIMALLOC_PURGE_DELAY=1000` is mimalloc's own default). One shard; `N` MQTT 5 clients connect over a 10 s ramp of simulated time with keep alive
//! 60 s and a Session Expiry Interval of 120 s, then say nothing. Simulated time then advances a
//! second at a time; at each second the shard's deadline work runs as the runtime runs it:
//! [`Shard::tick_bounded`], then [`Shard::run_due`] calls of at most `DEADLINES_PER_TURN`
//! entries until nothing due is left. Every idle client is checked once after CONNECT, times out at 90 s (1.5 x keep alive,
//! the session goes offline) and its session expires 120 s later. Printed: the wall time of
//! every turn (worst, p99, count), and the keep-alive timeouts and expiries that happened, which
//! must equal `N` each.
//!
//! Not a criterion bench: the figure of merit is the worst single turn, not a mean. The wall
//! clock (`Instant`) is read here, outside the shard, only to time each turn (the shard itself
//! gets simulated time as an argument). Wall time, not CPU time: the thread's CPU clock ticks in
//! 4 ms steps on this machine, too coarse for a 1 ms bound; on a busy machine a turn's wall time
//! also includes time other processes held the core. So each turn also notes whether the
//! thread was switched out during it (its context-switch counts in `/proc/thread-self/status`)
//! or the machine's steal time moved (`/proc/stat`: the hypervisor held a vCPU), both read
//! outside the timed window: the worst turn *not* switched out is the shard's own pause.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;

// The broker's allocator (src/main.rs): a turn's cost includes what its closes and expiries free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_core::codec::{self, Connect, Packet, Properties, Property, ProtocolVersion};
use tern_core::shard::{Shard, ShardConfig, DEADLINES_PER_TURN};

fn connect_bytes(i: usize) -> BytesMut {
    let mut properties = Properties::default();
    properties.push(Property::SessionExpiryInterval(120));
    let c = Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: format!("dev-{i:07}"),
        will: None,
        username: None,
        password: None,
        properties,
    };
    let mut buf = BytesMut::new();
    codec::encode(&Packet::Connect(Box::new(c)), ProtocolVersion::V5, &mut buf)
        .expect("a CONNECT encodes");
    buf
}

#[test]
#[ignore = "a million sessions: minutes in a debug build; run with --release --ignored"]
fn million_idle_sessions_worst_turn() {
    // The broker runs mimalloc with a purge delay of 10 ms (`runtime.allocator_purge_delay_ms`,
    // set through the environment before the process loads): run this bench the same way, in
    // a child process, unless the environment already chooses a value.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        let exe = std::env::current_exe().expect("the bench's own executable");
        eprintln!("running the bench again with MIMALLOC_PURGE_DELAY=10 (as the broker runs)");
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("MIMALLOC_PURGE_DELAY", "10")
            .status()
            .expect("start the bench");
        assert!(status.success(), "the bench failed: {status}");
        return;
    }
    // As the broker's `main` does before its heap grows (`runtime.transparent_huge_pages`,
    // default off): with them, the first touch of each 2 MiB region of the allocator's arena
    // zeroes the whole region inside one turn (4-10 ms here). `TERN_BENCH_THP=1` keeps them.
    if std::env::var("TERN_BENCH_THP").is_err() {
        nix::sys::prctl::set_thp_disable(true).expect("PR_SET_THP_DISABLE");
    }
    let n: usize =
        std::env::var("TERN_BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut cfg = ShardConfig::for_tests(1);
    cfg.listeners[0].connections_max = n;
    cfg.sessions_max = n;
    cfg.session_expiry_secs_max = 3600;
    let mut shard = Shard::new(tern_core::ids::ShardId(0), cfg);
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("literal address");
    let t0 = Instant::now();
    let ramp = Duration::from_secs(10);
    let mut turns: Vec<Duration> = Vec::new();
    let budget: usize = std::env::var("TERN_BENCH_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEADLINES_PER_TURN);
    // Wall time of each turn, the simulated second it ran at, and whether the thread was
    // switched out during it.
    let mut timed: Vec<(Duration, u64, bool)> = Vec::new();
    let mut ready = Vec::new();
    // The thread's CPU time of each turn: what the shard itself spent, without the time other
    // processes held the core (the kernel's CPU clock of the thread is exact to the
    // nanosecond at each read, unlike `/proc/thread-self/schedstat`).
    // With whether the machine's steal time moved during the turn: on a VM the thread's clock
    // also runs while the hypervisor holds its vCPU.
    let mut cpu_times: Vec<(Duration, bool)> = Vec::new();
    let mut turn = |shard: &mut Shard, now: Instant, turns: &mut Vec<Duration>| {
        // Bounded: each call handles at most `budget` entries, and an entry is re-armed
        // strictly after `now`, so the loop ends.
        let mut more = true;
        let mut first = true;
        while more {
            let switches = context_switches();
            let stolen = steal_ticks();
            let cpu_start = thread_cpu();
            let start = Instant::now();
            more = if first { shard.tick_bounded(now, budget) } else { shard.run_due(now, budget) };
            first = false;
            let took = start.elapsed();
            let cpu = thread_cpu().saturating_sub(cpu_start);
            if took > Duration::from_millis(1) && std::env::var("TERN_BENCH_SLOW").is_ok() {
                // The wall-clock start (CLOCK_MONOTONIC) to find the turn in `perf record -k
                // CLOCK_MONOTONIC` samples.
                eprintln!(
                    "SLOW {start:?} {took:?} cpu {cpu:?} at {} s",
                    now.duration_since(t0).as_secs()
                );
            }
            // Switched out by the kernel, or the vCPU held by the hypervisor (steal time).
            let stolen = steal_ticks() != stolen;
            let switched = context_switches() != switches || stolen;
            cpu_times.push((cpu, stolen));
            turns.push(took);
            timed.push((took, now.duration_since(t0).as_secs(), switched));
            // As the runtime does after every call (outside the timed turn).
            shard.take_ready(&mut ready);
            ready.clear();
        }
    };
    let build = Instant::now();
    let mut open = Vec::with_capacity(n);
    let mut next_second = t0 + Duration::from_secs(1);
    for i in 0..n {
        let now = t0 + ramp.mul_f64(i as f64 / n as f64);
        // The runtime ticks once a second while clients keep connecting.
        if now >= next_second {
            turn(&mut shard, next_second, &mut turns);
            next_second += Duration::from_secs(1);
        }
        let id = shard.accept(0, peer, now).expect("under connections_max");
        shard.handle_read(id, &connect_bytes(i), now);
        let connack = shard.take_tx(id, now);
        assert!(!connack.is_empty(), "CONNACK for client {i}");
        open.push(id);
    }
    eprintln!(
        "{n} sessions connected in {:.1} s of wall time ({} connections, {} sessions)",
        build.elapsed().as_secs_f64(),
        shard.metrics.connections_current,
        shard.metrics.sessions_current,
    );
    // 10 s ramp + 90 s keep-alive + 120 s expiry, and some margin.
    let end = t0 + Duration::from_secs(240);
    let mut now = next_second;
    while now <= end {
        turn(&mut shard, now, &mut turns);
        // What the IO driver does for a connection the shard closed (outside the timed turn).
        open.retain(|&id| {
            let closing = shard.status(id).closing;
            if closing {
                shard.release(id, now);
            }
            !closing
        });
        now += Duration::from_secs(1);
    }
    let m = &shard.metrics;
    turns.sort_unstable();
    timed.sort_unstable();
    let slowest: Vec<String> = timed
        .iter()
        .rev()
        .take(8)
        .map(|(d, sec, sw)| {
            format!(
                "{:.3} ms at {sec} s{}",
                d.as_secs_f64() * 1e3,
                if *sw { " (switched out or stolen)" } else { "" }
            )
        })
        .collect();
    println!("slowest turns (wall time, simulated second): {}", slowest.join(", "));
    let own: Vec<Duration> = timed.iter().filter(|t| !t.2).map(|t| t.0).collect();
    let own_worst = own.last().copied().unwrap_or_default();
    let own_over = own.iter().filter(|t| **t > Duration::from_millis(1)).count();
    println!(
        "turns not switched out nor stolen: {} of {}, worst {:.3} ms, p99.9 {:.3} ms, {own_over} over 1 ms",
        own.len(),
        timed.len(),
        own_worst.as_secs_f64() * 1e3,
        own.get(own.len() * 999 / 1000).copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    let mut cpu_own: Vec<Duration> =
        cpu_times.iter().filter(|(_, stolen)| !stolen).map(|(cpu, _)| *cpu).collect();
    cpu_own.sort_unstable();
    let cpu_worst = cpu_own.last().copied().unwrap_or_default();
    let cpu_over = cpu_own.iter().filter(|t| **t > Duration::from_millis(1)).count();
    let cpu_all_worst = cpu_times.iter().map(|(cpu, _)| *cpu).max().unwrap_or_default();
    println!(
        "thread CPU time per turn, {} turns without steal time: worst {:.3} ms, p99.9 {:.3} ms, \
         p99 {:.3} ms, {cpu_over} over 1 ms (all {} turns: worst {:.3} ms)",
        cpu_own.len(),
        cpu_worst.as_secs_f64() * 1e3,
        cpu_own.get(cpu_own.len() * 999 / 1000).copied().unwrap_or_default().as_secs_f64() * 1e3,
        cpu_own.get(cpu_own.len() * 99 / 100).copied().unwrap_or_default().as_secs_f64() * 1e3,
        cpu_times.len(),
        cpu_all_worst.as_secs_f64() * 1e3,
    );
    let worst = turns.last().copied().unwrap_or_default();
    let p99 = turns.get(turns.len() * 99 / 100).copied().unwrap_or_default();
    let p999 = turns.get(turns.len() * 999 / 1000).copied().unwrap_or_default();
    let over = turns.iter().filter(|t| **t > Duration::from_millis(1)).count();
    let total: Duration = turns.iter().sum();
    println!(
        "timers: {n} idle sessions, {} turns of <= {budget} deadlines: wall worst {:.3} ms, \
         p99.9 {:.3} ms, p99 {:.3} ms, total {:.1} ms, {over} turns over 1 ms; keep-alive \
         timeouts {}, sessions expired {}, left: {} connections, {} sessions",
        turns.len(),
        worst.as_secs_f64() * 1e3,
        p999.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        m.keepalive_timeouts,
        m.sessions_expired,
        m.connections_current,
        m.sessions_current,
    );
    assert_eq!(m.keepalive_timeouts, n as u64, "every idle client timed out");
    assert_eq!(m.sessions_expired, n as u64, "every offline session expired");
    if own_worst > Duration::from_millis(1) {
        println!(
            "!!! {own_over} turns neither switched out nor stolen took more than 1 ms of wall time"
        );
    }
}

/// CPU time this thread has used so far (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Steal time of the whole machine so far, in clock ticks (`/proc/stat`, the `cpu` line's
/// eighth value): time the hypervisor ran something else while a vCPU wanted to run, which is
/// no context switch of this thread. Coarse (one tick is 4 ms here) but a turn it stretched by
/// more than a millisecond usually moves it. `None` without procfs.
fn steal_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    line.split_whitespace().nth(7)?.parse().ok()
}

/// Voluntary plus involuntary context switches of this thread so far (`None` without procfs).
fn context_switches() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let mut total = 0;
    for line in text.lines() {
        if let Some(v) = line
            .strip_prefix("voluntary_ctxt_switches:")
            .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
        {
            total += v.trim().parse::<u64>().ok()?;
        }
    }
    Some(total)
}
