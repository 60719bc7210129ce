//! Runs one scenario: starts the worker threads, advances the phases, prints the progress line,
//! and turns the merged worker results into a [`Summary`]. Also the multi-process `conn` run,
//! where this process is the parent of several client processes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Worker;
use crate::procfs::{self, ProcSample};
use crate::report::{BrokerStats, ConnStats, Latency, Summary};
use crate::scenario::{Kind, Role, Scenario};
use crate::stats::{Phase, Shared, WorkerResult};

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// Runs `s` in this process. `child`: print `READY` on stdout when the `conn` connect phase is
/// over (the parent samples broker memory then).
pub fn run(s: Scenario, child: bool) -> Result<Summary> {
    let nofile = raise_nofile();
    let needed = match s.kind {
        Kind::Conn => s.connections,
        _ => s.publishers + s.subscribers,
    } as u64;
    if needed + 64 > nofile {
        bail!(
            "{needed} connections need more open files than RLIMIT_NOFILE allows ({nofile}); \
             run several processes (--procs N) or raise the hard limit (see loadtest/README.md)"
        );
    }
    let s = Arc::new(s);
    let shared = Arc::new(Shared::default());
    let broker_before = s.broker_pid.and_then(procfs::sample);
    let plan = s.plan();
    let total_conns = plan.len() as u64;
    let mut slices: Vec<Vec<_>> = (0..s.threads).map(|_| Vec::new()).collect();
    for (i, c) in plan.into_iter().enumerate() {
        slices[i % s.threads].push(c);
    }
    let run_start = Instant::now();
    let handles: Vec<_> = slices
        .into_iter()
        .enumerate()
        .map(|(t, plans)| {
            let (s, shared) = (s.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("loadtest-{t}"))
                .spawn(move || Worker::new(s, shared, plans).run())
                .context("spawning a worker thread")
        })
        .collect::<Result<_>>()?;
    let mut progress = Progress::new(&s, &shared, run_start);
    let mut phases = Phases::default();

    // Connect.
    let connect_deadline = run_start + Duration::from_secs_f64(s.connect_timeout_secs);
    progress.wait(
        |sh| Shared::get(&sh.connected) + Shared::get(&sh.failed) >= total_conns,
        connect_deadline,
    );
    phases.connected = Some(Instant::now());
    if s.kind == Kind::Conn {
        run_hold(&s, &shared, &mut progress, &mut phases, child)?;
    } else {
        run_messages(&s, &shared, &mut progress, &mut phases);
    }
    let broker_end = s.broker_pid.and_then(procfs::sample);
    shared.set_phase(Phase::Stop);
    let mut merged = WorkerResult::default();
    for h in handles {
        match h.join() {
            Ok(r) => merged.merge(r),
            Err(_) => bail!("a worker thread panicked"),
        }
    }
    progress.line(true);
    let mut summary = summarize(&s, merged, &phases, run_start);
    if let Some(before) = broker_before {
        summary.broker = Some(broker_stats(
            before,
            phases.broker_mid,
            broker_end,
            &phases,
            summary.connections.connected,
        ));
    }
    Ok(summary)
}

/// Instants and samples the main thread records while it drives the phases.
#[derive(Default)]
struct Phases {
    connected: Option<Instant>,
    publish_start: Option<Instant>,
    subscribe_start: Option<Instant>,
    publish_end: Option<Instant>,
    /// Broker sample in the middle of the busy phase (publishing, or holding connections).
    broker_mid: Option<ProcSample>,
    broker_busy_start: Option<ProcSample>,
    /// Broker sample when the busy phase ended (publishers done, before the drain wait), so
    /// the CPU figure is not diluted by idle drain time.
    broker_busy_end: Option<ProcSample>,
}

fn run_hold(
    s: &Scenario,
    shared: &Shared,
    progress: &mut Progress,
    phases: &mut Phases,
    child: bool,
) -> Result<()> {
    if child {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {} {}", Shared::get(&shared.connected), Shared::get(&shared.failed))?;
        out.flush()?;
    }
    let start = Instant::now();
    let _ = shared.publish_start.set(start);
    shared.set_phase(Phase::Publish);
    phases.publish_start = Some(start);
    phases.broker_busy_start = s.broker_pid.and_then(procfs::sample);
    // Sample the broker once the connections have settled (2 s in, or half way).
    let settle = Duration::from_secs_f64(s.hold_secs.min(4.0) / 2.0);
    progress.wait(|_| false, start + settle);
    phases.broker_mid = s.broker_pid.and_then(procfs::sample);
    progress.wait(|_| false, start + Duration::from_secs_f64(s.hold_secs));
    phases.publish_end = Some(Instant::now());
    phases.broker_busy_end = s.broker_pid.and_then(procfs::sample);
    Ok(())
}

fn run_messages(s: &Scenario, shared: &Shared, progress: &mut Progress, phases: &mut Phases) {
    let publishers = s.publishers as u64;
    let drain = Duration::from_secs_f64(s.drain_secs);
    if s.kind != Kind::Retained {
        phases.subscribe_start = Some(Instant::now());
        shared.start_subscribe();
        let deadline = Instant::now() + Duration::from_secs_f64(s.connect_timeout_secs.min(30.0));
        progress.wait(|sh| Shared::get(&sh.subscribed) >= s.subscribers as u64, deadline);
    }
    let start = Instant::now();
    let _ = shared.publish_start.set(start);
    phases.publish_start = Some(start);
    phases.broker_busy_start = s.broker_pid.and_then(procfs::sample);
    shared.set_phase(Phase::Publish);
    // Publishers stop on their own at the duration or count; allow `drain` more for the last
    // acknowledgements.
    let mid = start + s.duration() / 2;
    progress.wait(|sh| Shared::get(&sh.publishers_done) >= publishers, mid);
    phases.broker_mid = s.broker_pid.and_then(procfs::sample);
    progress
        .wait(|sh| Shared::get(&sh.publishers_done) >= publishers, start + s.duration() + drain);
    phases.publish_end = Some(Instant::now());
    shared.set_phase(Phase::Drain);
    let expected = |sh: &Shared| Shared::get(&sh.sent) * s.groups_per_message();
    if s.kind == Kind::Retained {
        phases.subscribe_start = Some(Instant::now());
        shared.start_subscribe();
        let deadline = Instant::now() + s.duration() + drain;
        progress.wait(|sh| Shared::get(&sh.received) >= expected(sh), deadline);
        phases.broker_busy_end = s.broker_pid.and_then(procfs::sample);
    } else {
        progress.wait(|sh| Shared::get(&sh.received) >= expected(sh), Instant::now() + drain);
    }
}

/// The once-a-second progress line on stderr, and bounded waiting.
struct Progress {
    shared: Arc<Shared>,
    label: String,
    start: Instant,
    last_print: Instant,
    last_sent: u64,
    last_recv: u64,
    total_conns: u64,
}

impl Progress {
    fn new(s: &Scenario, shared: &Arc<Shared>, start: Instant) -> Self {
        let total_conns = s.plan_len() as u64;
        Self {
            shared: shared.clone(),
            label: s.label.clone(),
            start,
            last_print: start,
            last_sent: 0,
            last_recv: 0,
            total_conns,
        }
    }

    /// Sleeps in 20 ms steps until `done` or `deadline`, printing the progress line.
    fn wait(&mut self, done: impl Fn(&Shared) -> bool, deadline: Instant) {
        while !done(&self.shared) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if self.last_print.elapsed() >= Duration::from_secs(1) {
                self.line(false);
            }
        }
    }

    fn line(&mut self, last: bool) {
        let now = Instant::now();
        let dt = now.duration_since(self.last_print).as_secs_f64().max(1e-3);
        let sh = &self.shared;
        let (sent, recv) = (Shared::get(&sh.sent), Shared::get(&sh.received));
        eprintln!(
            "[{:>6.1}s] {} {:?} | conn {}/{} fail {} | sent {} ({}/s) acked {} | recv {} ({}/s) | err {}{}",
            now.duration_since(self.start).as_secs_f64(),
            self.label,
            sh.phase(),
            Shared::get(&sh.connected),
            self.total_conns,
            Shared::get(&sh.failed),
            sent,
            si((sent - self.last_sent) as f64 / dt),
            Shared::get(&sh.acked),
            recv,
            si((recv - self.last_recv) as f64 / dt),
            Shared::get(&sh.errors),
            if last { " (done)" } else { "" },
        );
        self.last_print = now;
        self.last_sent = sent;
        self.last_recv = recv;
    }
}

/// 1234567 -> "1.23M".
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

impl Scenario {
    fn plan_len(&self) -> usize {
        match self.kind {
            Kind::Conn => self.connections,
            _ => self.publishers + self.subscribers,
        }
    }
}

fn secs_between(a: Option<Instant>, b: Option<Instant>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if b > a => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    }
}

fn summarize(s: &Scenario, r: WorkerResult, ph: &Phases, run_start: Instant) -> Summary {
    let sent: u64 = r.publishers.iter().map(|p| p.sent).sum();
    let acked: u64 = r.publishers.iter().map(|p| p.acked).sum();
    let received: u64 = r.seqs.values().map(|t| t.received).sum();
    let unique: u64 = r.seqs.values().map(|t| t.unique()).sum();
    let expected = sent * s.groups_per_message();
    let publish_secs = secs_between(ph.publish_start, r.last_send);
    let (out_from, out_count) = if s.kind == Kind::Retained {
        (ph.subscribe_start, r.retained_received)
    } else {
        (ph.publish_start, received)
    };
    let out_secs = secs_between(out_from, r.last_recv);
    let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let conn_secs = secs_between(r.first_connect, r.last_connack);
    let _ = Role::Idle;
    Summary {
        label: s.label.clone(),
        scenario: s.kind.name().to_string(),
        target: String::new(),
        version: s.version.level(),
        qos: s.qos as u8,
        publishers: s.publishers as u64,
        subscribers: s.subscribers as u64,
        payload_bytes: s.payload_bytes as u64,
        rate_per_sec: s.rate_per_sec,
        duration_secs: s.duration_secs,
        messages_max: s.messages_max,
        clean: s.clean,
        sent,
        acked,
        received,
        expected,
        unique,
        lost: expected.saturating_sub(unique),
        duplicates: received - unique,
        reordered: r.reordered,
        retained_received: r.retained_received,
        publish_secs,
        msgs_per_sec_in: rate(sent, publish_secs),
        msgs_per_sec_out: rate(out_count, out_secs),
        latency_us: Latency::of(&r.latency),
        connections: ConnStats {
            target: s.plan_len() as u64,
            connected: r.connected,
            failed: r.failed,
            rate_per_sec: rate(r.connected, conn_secs),
            connack_us: Latency::of(&r.connack),
        },
        broker: None,
        error_total: r.errors.values().sum(),
        errors: r.errors,
        percentiles: Latency::curve(&r.latency),
        loadavg: procfs::loadavg(),
        threads: s.threads as u64,
        processes: 1,
        elapsed_secs: run_start.elapsed().as_secs_f64(),
        started_unix_secs: crate::client::wall_ns() / 1_000_000_000,
    }
}

fn broker_stats(
    before: ProcSample,
    mid: Option<ProcSample>,
    end: Option<ProcSample>,
    ph: &Phases,
    connections: u64,
) -> BrokerStats {
    let held = mid.or(end).unwrap_or(before);
    let cpu = match (ph.broker_busy_start, ph.broker_busy_end.or(end)) {
        (Some(a), Some(b)) => procfs::cpu_percent(&a, &b),
        _ => 0.0,
    };
    let delta = held.rss_bytes.saturating_sub(before.rss_bytes);
    BrokerStats {
        rss_before_bytes: before.rss_bytes,
        rss_busy_bytes: held.rss_bytes,
        rss_end_bytes: end.map_or(0, |e| e.rss_bytes),
        bytes_per_connection: if connections > 0 { delta as f64 / connections as f64 } else { 0.0 },
        cpu_percent: cpu,
    }
}

/// `conn` over `procs` client processes (each is this binary with a slice of the connections):
/// one process may hold at most RLIMIT_NOFILE sockets. The parent samples the broker when every
/// child has reported READY, then merges the children's summaries.
pub fn run_multi(s: Scenario, procs: usize) -> Result<Summary> {
    if s.kind != Kind::Conn {
        bail!("--procs applies to the conn scenario only (latency needs one clock domain)");
    }
    let exe = std::env::current_exe().context("locating tern-loadtest")?;
    let before = s.broker_pid.and_then(procfs::sample);
    let start = Instant::now();
    let mut children = Vec::new();
    let per = s.connections.div_ceil(procs);
    for k in 0..procs {
        let offset = k * per;
        let n = per.min(s.connections.saturating_sub(offset));
        if n == 0 {
            break;
        }
        // The child's own share of the scenario, handed over as JSON: the same run id (so client
        // ids stay unique across processes), its connections and rate, no broker sampling.
        let mut part = s.clone();
        part.connections = n;
        part.conn_offset = offset;
        part.conn_rate_per_sec = s.conn_rate_per_sec / procs as u64;
        part.label = format!("{}#{k}", s.label);
        part.broker_pid = None;
        let mut cmd = Command::new(&exe);
        cmd.arg("child").arg(serde_json::to_string(&part).context("serializing the scenario")?);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        children.push(cmd.spawn().context("spawning a client process")?);
    }
    // Each child's stdout: "READY c f" once, then the summary JSON on its last line.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String)>();
    let mut readers = Vec::new();
    for (k, ch) in children.iter_mut().enumerate() {
        let out = ch.stdout.take().context("child stdout")?;
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((k, line));
            }
        }));
    }
    drop(tx);
    let mut ready = 0;
    let mut summaries = Vec::new();
    let mut mid = None;
    let deadline = start + Duration::from_secs_f64(s.connect_timeout_secs + s.hold_secs + 60.0);
    while let Ok((_, line)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.starts_with("READY") {
            ready += 1;
            if ready == children.len() {
                let settle = Duration::from_secs_f64(s.hold_secs.min(4.0) / 2.0);
                std::thread::sleep(settle);
                mid = s.broker_pid.and_then(procfs::sample);
                eprintln!("all {ready} client processes connected; broker sampled");
            }
        } else if line.starts_with('{') {
            summaries.push(serde_json::from_str::<Summary>(&line).context("child summary")?);
        }
    }
    for mut ch in children {
        let _ = ch.wait();
    }
    for r in readers {
        let _ = r.join();
    }
    if summaries.is_empty() {
        bail!("no client process reported a result");
    }
    let mut total = summaries[0].clone();
    total.label = s.label.clone();
    for x in &summaries[1..] {
        total.absorb(x);
    }
    total.processes = summaries.len() as u64;
    total.connections.target = s.connections as u64;
    total.elapsed_secs = start.elapsed().as_secs_f64();
    if let Some(b) = before {
        let ph = Phases::default();
        let mut st = broker_stats(b, mid, mid, &ph, total.connections.connected);
        st.rss_end_bytes = s.broker_pid.and_then(procfs::sample).map_or(0, |e| e.rss_bytes);
        total.broker = Some(st);
    }
    Ok(total)
}
