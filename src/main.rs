//! The `tern` binary: parses arguments, loads the configuration, starts the broker and waits
//! for SIGINT/SIGTERM (SIGHUP re-reads the TLS certificates). It holds no broker logic.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use mimalloc::MiMalloc;
use tern::config::Config;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const USAGE: &str = "usage: tern [--config FILE] [--shards N] [--data-dir DIR] [--version] [--help]

With no arguments, tern listens on 127.0.0.1:1883 with anonymous access and
embedded defaults, and keeps everything in memory. --data-dir DIR (or
[persistence] dir) keeps persistent sessions and retained messages in DIR.
See tern.toml for every setting and its default.";

struct Args {
    config: Option<PathBuf>,
    shards: Option<u16>,
    data_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args { config: None, shards: None, data_dir: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => {
                args.config = Some(it.next().ok_or("--config needs a file")?.into());
            }
            "--shards" => {
                let v = it.next().ok_or("--shards needs a number")?;
                let n: u16 = v.parse().map_err(|_| format!("--shards: not a number: {v}"))?;
                if n == 0 {
                    return Err("--shards must be at least 1".into());
                }
                args.shards = Some(n);
            }
            "--data-dir" => {
                args.data_dir = Some(it.next().ok_or("--data-dir needs a directory")?.into());
            }
            "--version" | "-V" => {
                println!("tern {}", tern::VERSION);
                return Ok(None);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument: {other}\n{USAGE}")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    // `tern passwd ...` edits a password file and exits (src/auth/passwd_cmd.rs).
    if std::env::args().nth(1).as_deref() == Some("passwd") {
        let args: Vec<String> = std::env::args().skip(2).collect();
        return match tern::auth::passwd_cmd::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern passwd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tern: configuration error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(n) = args.shards {
        config.broker.shards = Some(n);
        if let Err(e) = config.validate() {
            eprintln!("tern: --shards: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(dir) = args.data_dir {
        config.persistence.dir = Some(dir);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log.level.as_str()));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();

    let broker = match tern::broker::start(&config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = broker.stop_flag();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, std::sync::Arc::clone(&stop)) {
            eprintln!("tern: cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    // SIGHUP: re-read the TLS certificate files (the shards poll the counter). A thread of
    // its own, because a signal handler may only set flags.
    let reload = broker.reload_counter();
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    tracing::info!("SIGHUP: reloading certificates");
                    reload.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        Err(e) => {
            eprintln!("tern: cannot install the SIGHUP handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    for addr in &broker.local_addrs {
        tracing::info!(%addr, shards = config.shard_count(), "tern {} listening", tern::VERSION);
    }
    broker.join();
    tracing::info!(stopped = stop.load(Ordering::Relaxed), "tern stopped");
    ExitCode::SUCCESS
}
