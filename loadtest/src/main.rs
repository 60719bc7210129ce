//! `tern-loadtest`: the bundled load-test harness. See loadtest/README.md.
//!
//! # Layout
//!
//! - [`scenario`]: parameters and the connection plan (pure data).
//! - [`client`]: the MQTT client: one epoll loop per worker thread, many connections each.
//! - [`stats`]: counters, histograms, sequence tracking; merging worker results.
//! - [`runner`]: drives the phases, prints progress, builds the summary; multi-process `conn`.
//! - [`report`]: summary JSON, HDR distribution, SVG plot, comparison table, CI check.
//! - [`relay`]: the raw-relay ceiling (a trivial forwarder).
//! - [`procfs`]: broker RSS and CPU from /proc.
#![forbid(unsafe_code)]

mod client;
mod procfs;
mod relay;
mod report;
mod runner;
mod scenario;
mod stats;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: tern-loadtest SCENARIO [--option value ...]
       tern-loadtest relay --listen 127.0.0.1:1890 [--max-secs 3600]
       tern-loadtest table [--primary tern] RESULT.json ...
       tern-loadtest check --baseline loadtest/baseline.json [bounds] RESULT.json ...
       tern-loadtest merge --out FILE RESULT.json ...
       tern-loadtest plot --out FILE.svg [--title T] RESULT.json ...

SCENARIO: conn | p2p | fanout | fanin | sharedsub | retained

target     --host 127.0.0.1 --port 1883 --mqtt 4|5 (4 = 3.1.1) --target NAME (report column)
shape      --publishers N --subscribers N (defaults: p2p 8/8, fanout 1/8, fanin 8/1,
           sharedsub 8/4, retained 1/4)
messages   --qos 0|1|2 --payload BYTES (>= 24; default 64) --rate MSG/S (all publishers
           together; 0 = as fast as possible) --inflight N (QoS 1/2 window, default 16)
           --clean 1|0 (0 = persistent sessions) --retained N (retained: topics stored first)
bounds     --duration SECS (default 10) --messages N (total, default 50000000) --drain SECS (3)
conn       --connections N --conn-rate N/S (0 = as fast as possible) --hold SECS (10)
           --procs N (client processes) --connects-pending N (256 per thread)
           --connect-timeout SECS (60) --keepalive SECS (60)
sockets    --threads N (default: CPUs allowed) --source-addrs N (127.0.0.2.., default 8; 0 = none)
broker     --broker-pid PID (RSS, CPU, bytes per connection from /proc)
output     --label NAME --json FILE|- --hdr FILE --svg FILE

check bounds (ratios tern/relay of the same run, against the baseline's; RESULT files hold
           both, target tern and target relay) --throughput-min 0.5 --latency-max 4
           --latency-slack-us 2000";

/// `--key value` options and positional arguments.
pub struct Args {
    opts: BTreeMap<String, String>,
    positional: Vec<String>,
}

impl Args {
    /// Splits `it` into options (every option takes a value) and positional arguments.
    pub fn parse(it: impl Iterator<Item = String>) -> Result<Self> {
        let mut opts = BTreeMap::new();
        let mut positional = Vec::new();
        let mut it = it.peekable();
        while let Some(a) = it.next() {
            if let Some(k) = a.strip_prefix("--") {
                let v = it.next().with_context(|| format!("--{k} needs a value"))?;
                opts.insert(k.to_string(), v);
            } else {
                positional.push(a);
            }
        }
        Ok(Self { opts, positional })
    }

    /// A string option.
    pub fn str(&self, k: &str, default: &str) -> String {
        self.opts.get(k).cloned().unwrap_or_else(|| default.to_string())
    }

    /// A numeric option.
    pub fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T> {
        match self.opts.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| anyhow::anyhow!("--{k}: not a valid number: {v}")),
        }
    }

    /// An optional numeric option.
    pub fn opt_num<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>> {
        self.opts
            .get(k)
            .map(|v| v.parse().map_err(|_| anyhow::anyhow!("--{k}: not a valid number: {v}")))
            .transpose()
    }

    fn check_known(&self, known: &[&str]) -> Result<()> {
        for k in self.opts.keys() {
            if !known.contains(&k.as_str()) {
                bail!("unknown option --{k}\n\n{USAGE}");
            }
        }
        Ok(())
    }
}

const SCENARIO_OPTS: &[&str] = &[
    "host",
    "port",
    "mqtt",
    "target",
    "publishers",
    "subscribers",
    "qos",
    "payload",
    "rate",
    "inflight",
    "clean",
    "retained",
    "duration",
    "messages",
    "drain",
    "connections",
    "conn-rate",
    "hold",
    "procs",
    "connects-pending",
    "connect-timeout",
    "keepalive",
    "threads",
    "source-addrs",
    "broker-pid",
    "label",
    "json",
    "hdr",
    "svg",
    "conn-offset",
    "run-id",
    "child",
];

/// Options a parent passes on to its client processes unchanged.
const CHILD_DROP: &[&str] = &[
    "procs",
    "broker-pid",
    "connections",
    "conn-rate",
    "label",
    "json",
    "hdr",
    "svg",
    "conn-offset",
    "child",
    "target",
];

fn run_scenario(kind: scenario::Kind, args: &Args) -> Result<ExitCode> {
    args.check_known(SCENARIO_OPTS)?;
    let s = scenario::Scenario::from_args(kind, args)?;
    let child = args.num::<u8>("child", 0)? != 0;
    let procs: usize = args.num("procs", 1)?;
    let mut summary = if procs > 1 {
        let mut pass = Vec::new();
        for (k, v) in &args.opts {
            if !CHILD_DROP.contains(&k.as_str()) {
                pass.push(format!("--{k}"));
                pass.push(v.clone());
            }
        }
        // One run id for all children so client ids stay unique across processes.
        if !args.opts.contains_key("run-id") {
            pass.push("--run-id".into());
            pass.push(s.run_id.clone());
        }
        runner::run_multi(s, procs, &pass)?
    } else {
        runner::run(s, child)?
    };
    summary.target = args.str("target", "");
    if child {
        // The parent reads the last stdout line.
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    eprint!("{}", summary.table());
    let opt = |k: &str| args.opts.get(k).map(String::as_str);
    summary.write_files(opt("json"), opt("hdr"), opt("svg"))?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tern-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let mut argv = std::env::args().skip(1);
    let Some(cmd) = argv.next() else {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let args = Args::parse(argv)?;
    match cmd.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "relay" => {
            args.check_known(&["listen", "max-secs"])?;
            let listen = args.str("listen", "127.0.0.1:1890").parse().context("--listen")?;
            relay::run(listen, args.num("max-secs", 3600.0)?)?;
            Ok(ExitCode::SUCCESS)
        }
        "table" => {
            args.check_known(&["primary"])?;
            let runs = report::read_summaries(&args.positional)?;
            print!("{}", report::comparison_table(&runs, &args.str("primary", "tern")));
            Ok(ExitCode::SUCCESS)
        }
        "check" => {
            args.check_known(&["baseline", "throughput-min", "latency-max", "latency-slack-us"])?;
            let base = report::read_summaries(&[args
                .opts
                .get("baseline")
                .context("--baseline FILE")?
                .clone()])?;
            let cur = report::read_summaries(&args.positional)?;
            let bounds = report::CheckBounds {
                throughput_ratio_min: args.num("throughput-min", 0.5)?,
                latency_ratio_max: args.num("latency-max", 4.0)?,
                latency_slack_us: args.num("latency-slack-us", 2000.0)?,
            };
            let (text, ok) = report::check(&base, &cur, bounds);
            print!("{text}");
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        "merge" => {
            args.check_known(&["out"])?;
            let runs = report::read_summaries(&args.positional)?;
            report::write_array(args.opts.get("out").context("--out FILE")?.as_ref(), &runs)?;
            Ok(ExitCode::SUCCESS)
        }
        "plot" => {
            args.check_known(&["out", "title"])?;
            let runs = report::read_summaries(&args.positional)?;
            let refs: Vec<_> = runs.iter().collect();
            let out = args.opts.get("out").context("--out FILE")?;
            std::fs::write(out, report::svg_plot(&args.str("title", "latency"), &refs))?;
            Ok(ExitCode::SUCCESS)
        }
        name => {
            let kind = scenario::Kind::parse(name).with_context(|| USAGE.to_string())?;
            run_scenario(kind, &args)
        }
    }
}
