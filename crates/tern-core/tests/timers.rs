//! A million idle sessions through their timers, in the sans-IO shard (issue 11): how long the
//! longest turn of deadline work takes.
//!
//! `cargo test -p tern-core --release --test timers -- --ignored --nocapture` (ignored tests:
//! about two minutes and several GB; `TERN_BENCH_SESSIONS=200000` for a smaller run). It runs
//! with the broker's allocator settings: mimalloc, transparent huge pages off, and a purge
//! delay of 10 ms (re-running itself with `MIMALLOC_PURGE_DELAY=10` unless the environment
//! sets another value: `MIMALLOC_PURGE_DELAY=1000` is mimalloc's own default). One shard; `N`
//! MQTT 5 clients connect over a 10 s ramp of simulated time with keep alive 60 s and a Session
//! Expiry Interval of 120 s, then say nothing. Simulated time then advances a second at a time;
//! at each second the shard's deadline work runs as the runtime runs it:
//! [`Shard::tick_bounded`], then [`Shard::run_due`] calls of at most `DEADLINES_PER_TURN`
//! entries until nothing due is left. Every idle client is checked once after CONNECT, times
//! out at 90 s (1.5 x keep alive, the session goes offline) and its session expires 120 s
//! later; the keep-alive timeouts and expiries must equal `N` each (asserted).
//!
//! Not a criterion bench: the figure of merit is the worst single turn, not a mean. Each turn
//! is timed by the wall clock and by the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`, which
//! leaves out time other processes held the core and, on this kernel, steal time), both read
//! here, outside the shard (it gets simulated time as an argument). On a VM both clocks also
//! count stalls of the vCPU inside the hypervisor, 1-5 ms a few times a minute here, on any
//! code: the `machine_floor` test shows them on turns of fixed work. So the bench runs
//! `TERN_BENCH_RUNS` times (default 3): every run does the same work in the same turns, and
//! the least CPU time of each turn over the runs is the shard's own cost (a stall falls on a
//! turn of one run; a pause of the code's own falls on the same turn in every run). Printed per
//! run: wall and CPU time per turn (worst, p99.9, p99, turns over 1 ms), and the slowest turns;
//! then the worst of each turn's least CPU time.
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
    let budget: usize = std::env::var("TERN_BENCH_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEADLINES_PER_TURN);
    let runs: usize =
        std::env::var("TERN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    // Every run does the same deadline work in the same turns (the order of the deadline heap
    // does not depend on hashing or addresses), so turn `i` of one run is turn `i` of the
    // next. The shard's own cost of a turn is then at most its smallest CPU time over the
    // runs: a stall of the machine (`machine_floor` below measures how often this VM has
    // them) falls on a given turn in one run, not in all, while a pause of the code's own (a
    // table that grows, a large free) falls on the same turn in every run.
    let mut least: Vec<Duration> = Vec::new();
    for run in 1..=runs {
        let cpu = run_once(run, n, budget);
        if least.is_empty() {
            least = cpu;
        } else {
            assert_eq!(cpu.len(), least.len(), "run {run} took another number of turns");
            for (l, c) in least.iter_mut().zip(cpu) {
                *l = (*l).min(c);
            }
        }
    }
    least.sort_unstable();
    let over = least.iter().filter(|t| **t > Duration::from_millis(1)).count();
    println!(
        "each turn's least thread CPU time over {runs} runs, {} turns of <= {budget} deadlines: \
         worst {:.3} ms, p99.9 {:.3} ms, p99 {:.3} ms, median {:.3} ms, {over} over 1 ms",
        least.len(),
        ms_at(&least, 1000),
        ms_at(&least, 999),
        ms_at(&least, 990),
        ms_at(&least, 500),
    );
}

/// One run of the bench: `n` sessions through their timers; prints what it measured and
/// returns the thread CPU time of every turn, in order.
fn run_once(run: usize, n: usize, budget: usize) -> Vec<Duration> {
    let mut cfg = ShardConfig::for_tests(1);
    cfg.listeners[0].connections_max = n;
    cfg.sessions_max = n;
    cfg.session_expiry_secs_max = 3600;
    let mut shard = Shard::new(tern_core::ids::ShardId(0), cfg);
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("literal address");
    let t0 = Instant::now();
    let ramp = Duration::from_secs(10);
    let mut turns: Vec<Duration> = Vec::new();
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
    // `TERN_BENCH_SLOW=<µs>` prints every turn longer than that (wall or CPU time).
    let slow_us: Option<u64> = std::env::var("TERN_BENCH_SLOW").ok().and_then(|v| v.parse().ok());
    let mut turn = |shard: &mut Shard, now: Instant, turns: &mut Vec<Duration>| {
        // Bounded: each call handles at most `budget` entries, and an entry is re-armed
        // strictly after `now`, so the loop ends.
        let mut more = true;
        let mut first = true;
        while more {
            let switches = context_switches();
            let stolen = steal_ticks();
            let faults = minor_faults();
            let cpu_start = thread_cpu();
            let start = Instant::now();
            more = if first { shard.tick_bounded(now, budget) } else { shard.run_due(now, budget) };
            first = false;
            let took = start.elapsed();
            let cpu = thread_cpu().saturating_sub(cpu_start);
            let faults = minor_faults().saturating_sub(faults);
            if slow_us.is_some_and(|us| took.max(cpu) > Duration::from_micros(us)) {
                // The wall-clock start (CLOCK_MONOTONIC) to find the turn in `perf record -k
                // CLOCK_MONOTONIC` samples.
                eprintln!(
                    "SLOW {start:?} {took:?} cpu {cpu:?} {faults} minor faults at {} s",
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
        "run {run}: {n} sessions connected in {:.1} s of wall time ({} connections, {} sessions)",
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
    println!("run {run}: slowest turns (wall time, simulated second): {}", slowest.join(", "));
    let own: Vec<Duration> = timed.iter().filter(|t| !t.2).map(|t| t.0).collect();
    let own_worst = own.last().copied().unwrap_or_default();
    let own_over = own.iter().filter(|t| **t > Duration::from_millis(1)).count();
    println!(
        "run {run}: turns not switched out nor stolen: {} of {}, worst {:.3} ms, p99.9 {:.3} ms, {own_over} over 1 ms",
        own.len(),
        timed.len(),
        ms_at(&own, 1000),
        ms_at(&own, 999),
    );
    let mut cpu_own: Vec<Duration> =
        cpu_times.iter().filter(|(_, stolen)| !stolen).map(|(cpu, _)| *cpu).collect();
    cpu_own.sort_unstable();
    let cpu_over = cpu_own.iter().filter(|t| **t > Duration::from_millis(1)).count();
    let cpu_all_worst = cpu_times.iter().map(|(cpu, _)| *cpu).max().unwrap_or_default();
    println!(
        "run {run}: thread CPU time per turn, {} turns without steal time: worst {:.3} ms, p99.9 {:.3} ms, \
         p99 {:.3} ms, {cpu_over} over 1 ms (all {} turns: worst {:.3} ms)",
        cpu_own.len(),
        ms_at(&cpu_own, 1000),
        ms_at(&cpu_own, 999),
        ms_at(&cpu_own, 990),
        cpu_times.len(),
        cpu_all_worst.as_secs_f64() * 1e3,
    );
    let over = turns.iter().filter(|t| **t > Duration::from_millis(1)).count();
    let total: Duration = turns.iter().sum();
    println!(
        "run {run}: timers: {n} idle sessions, {} turns of <= {budget} deadlines: wall worst {:.3} ms, \
         p99.9 {:.3} ms, p99 {:.3} ms, total {:.1} ms, {over} turns over 1 ms; keep-alive \
         timeouts {}, sessions expired {}, left: {} connections, {} sessions",
        turns.len(),
        ms_at(&turns, 1000),
        ms_at(&turns, 999),
        ms_at(&turns, 990),
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
    cpu_times.into_iter().map(|(cpu, _)| cpu).collect()
}

/// The machine's own floor for the bench above: turns of fixed, known work, timed the same way.
///
/// `cargo test -p tern-core --release --test timers machine_floor -- --ignored --nocapture`.
/// A turn follows `TERN_FLOOR_STEPS` (default 384) links of a random cycle through a 1 GiB
/// array (every step a cache and TLB miss, as the shard's deadline work is over its million
/// sessions), so every turn does exactly the same work, with no allocation, no system call
/// and no page fault inside it (the array is written whole first). Printed as the bench
/// prints: thread CPU time per turn, without the turns during which steal time moved. A turn
/// of this loop that takes several times the median is the machine's (hypervisor exits, host
/// memory management, interrupts charged to the thread), not the code's. It runs
/// `TERN_BENCH_RUNS` passes (default 3) over the same turns, as the bench runs.
#[test]
#[ignore = "a 1 GiB array and 100 000 timed turns: run with --release --ignored"]
fn machine_floor() {
    if std::env::var("TERN_BENCH_THP").is_err() {
        nix::sys::prctl::set_thp_disable(true).expect("PR_SET_THP_DISABLE");
    }
    let steps: usize =
        std::env::var("TERN_FLOOR_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(384);
    let turns: usize =
        std::env::var("TERN_FLOOR_TURNS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    // One cycle through every index (Sattolo's shuffle), from a fixed-seed xorshift.
    let len: usize = 1 << 28;
    let mut next: Vec<u32> = (0..len as u32).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..len).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % i as u64) as usize;
        next.swap(i, j);
    }
    let passes: usize =
        std::env::var("TERN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    // Each pass starts the walk at the same index, so turn `i` reads the same links in every
    // pass: the least CPU time of a turn over the passes is taken as the bench takes it.
    let mut least = vec![Duration::MAX; turns];
    let mut at = 0usize;
    for pass in 1..=passes {
        at = 0;
        let mut cpu_own: Vec<Duration> = Vec::with_capacity(turns);
        let mut wall_worst = Duration::ZERO;
        let mut over = Vec::new();
        for least in least.iter_mut() {
            let stolen = steal_ticks();
            let cpu_start = thread_cpu();
            let start = Instant::now();
            for _ in 0..steps {
                at = next[at] as usize;
            }
            let took = start.elapsed();
            let cpu = thread_cpu().saturating_sub(cpu_start);
            wall_worst = wall_worst.max(took);
            *least = (*least).min(cpu);
            if steal_ticks() == stolen {
                cpu_own.push(cpu);
                if cpu > Duration::from_millis(1) {
                    over.push(format!(
                        "{:.3} ms cpu / {:.3} ms wall",
                        cpu.as_secs_f64() * 1e3,
                        took.as_secs_f64() * 1e3
                    ));
                }
            }
        }
        cpu_own.sort_unstable();
        println!(
            "machine floor, pass {pass}: {turns} turns of {steps} dependent random reads over \
             1 GiB; thread CPU per turn, {} turns without steal time: median {:.3} ms, p99 \
             {:.3} ms, p99.9 {:.3} ms, worst {:.3} ms, {} over 1 ms; wall worst {:.3} ms",
            cpu_own.len(),
            ms_at(&cpu_own, 500),
            ms_at(&cpu_own, 990),
            ms_at(&cpu_own, 999),
            ms_at(&cpu_own, 1000),
            over.len(),
            wall_worst.as_secs_f64() * 1e3,
        );
        if !over.is_empty() {
            println!("  turns over 1 ms of CPU: {}", over.join(", "));
        }
    }
    std::hint::black_box(at);
    least.sort_unstable();
    println!(
        "machine floor: each turn's least thread CPU time over {passes} passes: median {:.3} ms, \
         p99.9 {:.3} ms, worst {:.3} ms, {} over 1 ms",
        ms_at(&least, 500),
        ms_at(&least, 999),
        ms_at(&least, 1000),
        least.iter().filter(|t| **t > Duration::from_millis(1)).count(),
    );
    assert!(ms_at(&least, 500) > 0.0, "the turns took measurable time");
}

/// The `per_mille` quantile of the sorted `v`, in milliseconds: 1000 is the largest, 0 when
/// `v` is empty.
fn ms_at(v: &[Duration], per_mille: usize) -> f64 {
    let i = (v.len() * per_mille / 1000).min(v.len().saturating_sub(1));
    v.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
}

/// Minor page faults of this thread so far (`getrusage(RUSAGE_THREAD)`).
fn minor_faults() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD)
        .map(|u| u.minor_page_faults())
        .unwrap_or_default()
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
