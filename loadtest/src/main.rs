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
mod tls;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

/// Load generator, latency recorder and peer comparison for MQTT brokers.
///
/// Every run is bounded in time (--duration, --hold) and in count (--messages).
#[derive(Parser, Debug)]
#[command(name = "tern-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connection storm: N connections opened at R/s, then held idle (with keep-alive pings).
    Conn(ScenarioArgs),
    /// Point-to-point: publisher i -> topic i -> subscriber i (default 8/8).
    P2p(ScenarioArgs),
    /// Fan-out: every subscriber receives every publisher's topic (default 1 -> 8).
    Fanout(ScenarioArgs),
    /// Fan-in: many publishers, one wildcard subscriber (default 8 -> 1).
    Fanin(ScenarioArgs),
    /// Shared-subscription fan-in: each message to one member (default 8 -> 4).
    Sharedsub(ScenarioArgs),
    /// Retained-heavy wildcard subscribe: R retained topics first, then subscribers (1 -> 4).
    Retained(ScenarioArgs),
    /// The raw-relay ceiling: a trivial forwarder to measure the harness against.
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:1890")]
        listen: std::net::SocketAddr,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 3600.0)]
        max_secs: f64,
    },
    /// A comparison table of result files.
    Table {
        /// The target the other columns are compared with.
        #[arg(long, default_value = "tern")]
        primary: String,
        /// Result files (JSON).
        #[arg(value_name = "RESULT.json")]
        files: Vec<String>,
    },
    /// Checks results against a baseline: ratios tern/relay of the same run, against the
    /// baseline's (RESULT files hold both, target tern and target relay).
    Check {
        /// The baseline result file.
        #[arg(long, value_name = "FILE")]
        baseline: String,
        /// Lowest throughput ratio allowed, relative to the baseline's.
        #[arg(long, default_value_t = 0.5)]
        throughput_min: f64,
        /// Highest latency ratio allowed, relative to the baseline's.
        #[arg(long, default_value_t = 4.0)]
        latency_max: f64,
        /// Latency differences below this many microseconds always pass.
        #[arg(long, default_value_t = 2000.0)]
        latency_slack_us: f64,
        /// Result files (JSON).
        #[arg(value_name = "RESULT.json")]
        files: Vec<String>,
    },
    /// Merges result files into one JSON array.
    Merge {
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Result files (JSON).
        #[arg(value_name = "RESULT.json")]
        files: Vec<String>,
    },
    /// An SVG latency plot of result files.
    Plot {
        /// The SVG file to write.
        #[arg(long, value_name = "FILE.svg")]
        out: PathBuf,
        /// The plot's title.
        #[arg(long, default_value = "latency")]
        title: String,
        /// Result files (JSON).
        #[arg(value_name = "RESULT.json")]
        files: Vec<String>,
    },
    /// A client process of a multi-process `conn` run: the scenario as JSON, written by the
    /// parent. Prints READY, then its summary as JSON on its last line.
    #[command(hide = true)]
    Child {
        /// The scenario (serde_json of `scenario::Scenario`).
        scenario: String,
    },
}

/// The options of every scenario. Defaults that depend on the scenario (shape, label) are
/// filled in by [`scenario::Scenario::from_args`].
#[derive(Args, Debug, Clone)]
pub struct ScenarioArgs {
    /// Broker host (an IP address).
    #[arg(long, default_value = "127.0.0.1", help_heading = "Target")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883, help_heading = "Target")]
    pub port: u16,
    /// MQTT version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_name = "4|5", help_heading = "Target")]
    pub mqtt: u8,
    /// Name of the target in the report's columns.
    #[arg(long, default_value = "", value_name = "NAME", help_heading = "Target")]
    pub target: String,
    /// Publishing connections (defaults: p2p 8, fanout 1, fanin 8, sharedsub 8, retained 1).
    #[arg(long, value_name = "N", help_heading = "Shape")]
    pub publishers: Option<usize>,
    /// Subscribing connections (defaults: p2p 8, fanout 8, fanin 1, sharedsub 4, retained 4).
    #[arg(long, value_name = "N", help_heading = "Shape")]
    pub subscribers: Option<usize>,
    /// QoS of every publish and subscription.
    #[arg(long, default_value_t = 0, value_name = "0|1|2", help_heading = "Messages")]
    pub qos: u8,
    /// Payload bytes per message (at least 24: the timestamp and sequence header).
    #[arg(long, default_value_t = 64, value_name = "BYTES", help_heading = "Messages")]
    pub payload: usize,
    /// Publish rate of all publishers together, msg/s; 0 = as fast as possible.
    #[arg(long, default_value_t = 0, value_name = "MSG/S", help_heading = "Messages")]
    pub rate: u64,
    /// QoS 1/2 window per publisher.
    #[arg(long, default_value_t = 16, value_name = "N", help_heading = "Messages")]
    pub inflight: u16,
    /// 1 = clean sessions, 0 = persistent sessions.
    #[arg(long, default_value_t = 1, value_name = "1|0", help_heading = "Messages")]
    pub clean: u8,
    /// `retained`: retained topics stored first.
    #[arg(long, default_value_t = 10_000, value_name = "N", help_heading = "Messages")]
    pub retained: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0, value_name = "SECS", help_heading = "Bounds")]
    pub duration: f64,
    /// Messages in total, at most.
    #[arg(long, default_value_t = 50_000_000, value_name = "N", help_heading = "Bounds")]
    pub messages: u64,
    /// Seconds to wait for outstanding deliveries after publishing.
    #[arg(long, default_value_t = 3.0, value_name = "SECS", help_heading = "Bounds")]
    pub drain: f64,
    /// `conn`: connections to open.
    #[arg(long, default_value_t = 1000, value_name = "N", help_heading = "Conn")]
    pub connections: usize,
    /// `conn`: connection attempts per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0, value_name = "N/S", help_heading = "Conn")]
    pub conn_rate: u64,
    /// `conn`: seconds to hold the connections once all are up.
    #[arg(long, default_value_t = 10.0, value_name = "SECS", help_heading = "Conn")]
    pub hold: f64,
    /// `conn`: client processes (each gets its share of the connections).
    #[arg(long, default_value_t = 1, value_name = "N", help_heading = "Conn")]
    pub procs: usize,
    /// Connection attempts in flight at once per thread.
    #[arg(long, default_value_t = 256, value_name = "N", help_heading = "Conn")]
    pub connects_pending: usize,
    /// Seconds allowed for connecting (and subscribing).
    #[arg(long, default_value_t = 60.0, value_name = "SECS", help_heading = "Conn")]
    pub connect_timeout: f64,
    /// Keep alive sent in CONNECT (rumqttd refuses 0).
    #[arg(long, default_value_t = 60, value_name = "SECS", help_heading = "Conn")]
    pub keepalive: u16,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long, value_name = "N", help_heading = "Sockets")]
    pub threads: Option<usize>,
    /// Loopback source addresses 127.0.0.2.. to spread connections over; 0 = none.
    #[arg(long, default_value_t = 8, value_name = "N", help_heading = "Sockets")]
    pub source_addrs: u8,
    /// Broker pid: RSS, CPU and bytes per connection from /proc.
    #[arg(long, value_name = "PID", help_heading = "Broker")]
    pub broker_pid: Option<u32>,
    /// TLS: verify the broker's certificate against this CA (PEM file).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_ca: Option<String>,
    /// TLS without verifying the broker's certificate (loopback measurements only).
    #[arg(long, help_heading = "TLS")]
    pub tls_insecure: bool,
    /// TLS 1.2 only (with --tls-ca or --tls-insecure).
    #[arg(long, help_heading = "TLS")]
    pub tls12: bool,
    /// Name the broker's certificate must carry (also the SNI).
    #[arg(long, default_value = "localhost", value_name = "NAME", help_heading = "TLS")]
    pub tls_server_name: String,
    /// MQTT over WebSocket (subprotocol "mqtt"; over TLS with --tls-ca/--tls-insecure: wss).
    #[arg(long, help_heading = "WebSocket")]
    pub ws: bool,
    /// The WebSocket request path.
    #[arg(long, default_value = "/mqtt", value_name = "PATH", help_heading = "WebSocket")]
    pub ws_path: String,
    /// Label copied into the report (default: the scenario name).
    #[arg(long, value_name = "NAME", help_heading = "Output")]
    pub label: Option<String>,
    /// Write the summary JSON here (`-` = standard output).
    #[arg(long, value_name = "FILE|-", help_heading = "Output")]
    pub json: Option<String>,
    /// Write the HDR latency distribution here.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub hdr: Option<String>,
    /// Write an SVG latency plot here.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub svg: Option<String>,
    /// Prefix of topics and client ids (default: unique per run).
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
}

fn run_scenario(kind: scenario::Kind, args: &ScenarioArgs) -> Result<ExitCode> {
    let s = scenario::Scenario::from_args(kind, args)?;
    let mut summary =
        if args.procs > 1 { runner::run_multi(s, args.procs)? } else { runner::run(s, false)? };
    summary.target.clone_from(&args.target);
    eprint!("{}", summary.table());
    summary.write_files(args.json.as_deref(), args.hdr.as_deref(), args.svg.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// A client process: runs the scenario its parent serialized, prints the summary JSON last.
fn run_child(json: &str) -> Result<ExitCode> {
    let s: scenario::Scenario = serde_json::from_str(json).context("the child's scenario")?;
    s.validate()?;
    let summary = runner::run(s, true)?;
    // The parent reads the last stdout line.
    println!("{}", serde_json::to_string(&summary)?);
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
    use scenario::Kind;
    match Cli::parse().command {
        Command::Conn(a) => run_scenario(Kind::Conn, &a),
        Command::P2p(a) => run_scenario(Kind::P2p, &a),
        Command::Fanout(a) => run_scenario(Kind::Fanout, &a),
        Command::Fanin(a) => run_scenario(Kind::Fanin, &a),
        Command::Sharedsub(a) => run_scenario(Kind::Sharedsub, &a),
        Command::Retained(a) => run_scenario(Kind::Retained, &a),
        Command::Child { scenario } => run_child(&scenario),
        Command::Relay { listen, max_secs } => {
            relay::run(listen, max_secs)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Table { primary, files } => {
            let runs = report::read_summaries(&files)?;
            print!("{}", report::comparison_table(&runs, &primary));
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { baseline, throughput_min, latency_max, latency_slack_us, files } => {
            let base = report::read_summaries(&[baseline])?;
            let cur = report::read_summaries(&files)?;
            let bounds = report::CheckBounds {
                throughput_ratio_min: throughput_min,
                latency_ratio_max: latency_max,
                latency_slack_us,
            };
            let (text, ok) = report::check(&base, &cur, bounds);
            print!("{text}");
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Merge { out, files } => {
            let runs = report::read_summaries(&files)?;
            report::write_array(&out, &runs)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plot { out, title, files } => {
            let runs = report::read_summaries(&files)?;
            let refs: Vec<_> = runs.iter().collect();
            std::fs::write(out, report::svg_plot(&title, &refs))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
