//! The process's log output (`[log]`): text or JSON lines on standard output, shaped for where
//! they go (issue 17).
//!
//! - Colour (ANSI escapes) only when standard output is a terminal and `NO_COLOR` is unset or
//!   empty (<https://no-color.org>); a file, a pipe or the journal gets plain text.
//! - Under systemd (`JOURNAL_STREAM` names standard output) the journal stamps each line, so the
//!   text format drops its timestamp and starts each line with the `<N>` syslog priority prefix
//!   journald reads (3 error, 4 warning, 6 info, 7 debug), so `journalctl -p warning` works.
//! - `format = "json"`: one JSON object per line with `timestamp`, `level`, `target`, `fields`
//!   and `span` (the connection span: `shard`, `peer`, `client_id`).

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// How the environment decides the text output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    /// Write ANSI colour escapes.
    pub ansi: bool,
    /// Standard output is the systemd journal.
    pub journal: bool,
}

impl Output {
    /// Decides from the environment and standard output.
    pub fn detect() -> Self {
        let journal = stdout_is_journal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Output { ansi: !journal && !no_color && std::io::stdout().is_terminal(), journal }
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, set by systemd) names the file standard output is.
/// A child that inherited the variable but writes elsewhere does not count.
fn stdout_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    std::fs::metadata("/proc/self/fd/1").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Installs the global subscriber for `cfg`. `RUST_LOG`, when set, overrides `cfg.level`.
pub fn init(cfg: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(cfg.level.as_str()));
    let out = Output::detect();
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (cfg.format, out.journal) {
        (LogFormat::Json, _) => {
            builder.json().with_current_span(true).with_span_list(false).try_init()
        }
        (_, true) => builder
            .with_ansi(false)
            .with_target(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format().with_target(false).without_time(),
            ))
            .try_init(),
        _ => builder.with_ansi(out.ansi).with_target(false).try_init(),
    };
    // Already installed (a test harness): keep that one.
    let _ = result;
}

/// Prefixes each line with the syslog priority journald reads (`SyslogLevelPrefix=`).
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    F: FormatEvent<S, N>,
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The syslog priority of a level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(
            [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].map(priority),
            [3, 4, 6, 7, 7]
        );
    }
}
