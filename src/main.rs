//! The `tern` binary: parses arguments (clap), loads the configuration, starts the broker and
//! waits for SIGINT/SIGTERM (SIGHUP re-reads the TLS certificates, password file and ACL). It
//! holds no broker logic. Subcommands: `passwd`, `check-config`, `default-config`,
//! `import-mosquitto-conf`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use tern::config::{Config, KeyPositions};
use tern::runtime::StartError;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// An MQTT 3.1/3.1.1/5.0 broker.
///
/// With no arguments, tern listens on 127.0.0.1:1883 with anonymous access and embedded
/// defaults. See tern.toml for every setting and its default.
#[derive(Parser, Debug)]
#[command(name = "tern", version, about)]
struct Cli {
    /// The configuration file (TOML).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Number of shards (threads), overriding broker.shards.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    shards: Option<u16>,
    /// Keep persistent sessions and retained messages in DIR (write-ahead log; overrides
    /// persistence.dir). Without it, and without persistence.dir, everything is in memory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or edit a password file (Mosquitto's format, like mosquitto_passwd).
    Passwd(tern::auth::passwd_cmd::PasswdArgs),
    /// Parse and validate a configuration file and the files it names; exit 0 when good,
    /// else print FILE:LINE:COL: key: reason and exit 1.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Print every configuration key at its default, with its documentation and bound
    /// (generated from the declarations in src/config.rs).
    DefaultConfig,
    /// Write a tern.toml from a mosquitto.conf, listing every directive not translated.
    ImportMosquittoConf {
        /// The mosquitto.conf to read.
        file: PathBuf,
        /// Where to write the tern.toml (default: standard output).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // First, before the allocator's arena is touched much: with transparent huge pages every
    // 2 MiB region touched counts whole (`runtime.transparent_huge_pages`, default off; `serve`
    // turns them back on when configured).
    let thp_disabled = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Passwd(args)) => match tern::auth::passwd_cmd::run_args(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tern passwd: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::CheckConfig { file }) => match tern::check::check_config(&file) {
            Ok(s) => {
                println!(
                    "{}: OK ({} listener(s), {} with TLS)",
                    file.display(),
                    s.listeners,
                    s.tls_listeners
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::DefaultConfig) => {
            print!("{}", Config::reference());
            ExitCode::SUCCESS
        }
        Some(Command::ImportMosquittoConf { file, output }) => import(&file, output.as_deref()),
        None => serve(cli.config, cli.shards, cli.data_dir, thp_disabled.is_ok()),
    }
}

fn import(file: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tern: {}: cannot read: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let import = tern::mosquitto_conf::import(&text);
    for s in &import.skipped {
        eprintln!("{}:{}: not translated: {} ({})", file.display(), s.line, s.text, s.reason);
    }
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &import.toml) {
                eprintln!("tern: {}: cannot write: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!(
                "wrote {} ({} directive(s) not translated)",
                path.display(),
                import.skipped.len()
            );
        }
        None => print!("{}", import.toml),
    }
    ExitCode::SUCCESS
}

fn serve(
    config_path: Option<PathBuf>,
    shards: Option<u16>,
    data_dir: Option<PathBuf>,
    thp_disabled: bool,
) -> ExitCode {
    let (mut config, positions) = match &config_path {
        Some(path) => match Config::load_located(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tern: configuration error: {e}");
                return ExitCode::from(2);
            }
        },
        None => (Config::default(), KeyPositions::built_in()),
    };
    if let Some(n) = shards {
        config.broker.shards = Some(n);
        if let Err(e) = config.validate() {
            eprintln!("tern: --shards: {e}");
            return ExitCode::from(2);
        }
    }
    if let Some(dir) = data_dir {
        config.persistence.dir = Some(dir);
    }
    // Before logging, threads or sockets exist: the allocator's purge delay is read only when
    // the process is loaded, so the process replaces itself once to change it
    // (`runtime.allocator_purge_delay_ms`, src/allocator.rs).
    let purge = tern::allocator::plan_from_env(config.runtime.allocator_purge_delay_ms);
    let reexec_failed = match &purge {
        tern::allocator::PurgeDelay::Reexec(value) => Some(tern::allocator::reexec(value)),
        _ => None,
    };
    tern::logging::init(&config.log);
    if let Some(e) = reexec_failed {
        tracing::warn!(
            error = %e,
            "could not restart with the allocator's purge delay (runtime.allocator_purge_delay_ms); \
             running with mimalloc's default"
        );
    } else if let tern::allocator::PurgeDelay::Mismatch { found, wanted } = &purge {
        tracing::warn!(
            ?found,
            wanted,
            "the allocator's purge delay differs from runtime.allocator_purge_delay_ms after a restart"
        );
    }
    if config.runtime.transparent_huge_pages {
        // `main` turned them off before anything else; the configuration wants them.
        if let Err(e) = nix::sys::prctl::set_thp_disable(false) {
            tracing::warn!(error = %e, "could not enable transparent huge pages");
        }
    } else if !thp_disabled {
        tracing::warn!("could not disable transparent huge pages (runtime.transparent_huge_pages)");
    }

    let running = match tern::broker::start(&config) {
        Ok(r) => r,
        Err(e) => {
            match &e {
                StartError::AddrInUse { key, .. } => {
                    eprintln!("{}: {e}", positions.file_line_col(&[key.as_str()]))
                }
                _ => eprintln!("tern: {e}"),
            }
            return ExitCode::FAILURE;
        }
    };
    let broker = running.broker;
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
    if let Some(addr) = running.admin_addr {
        tracing::info!(%addr, "admin HTTP listening (/metrics, /healthz, /readyz, /api/v1)");
    }
    // systemd Type=notify: every listener accepts now. Not under systemd: a no-op.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
    broker.join();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(stopped = stop.load(Ordering::Relaxed), "tern stopped");
    ExitCode::SUCCESS
}
