//! What a run reports and the files it writes: the [`Summary`] (JSON), the summary table, the
//! HDR percentile distribution, the SVG latency plot; and the commands that read summaries
//! back: `table` (broker comparison with ratios), `check` (CI regression gate), `merge`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Percentiles.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a nanosecond histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    /// The percentile distribution as HdrHistogram prints it: (value µs, quantile, count up to
    /// here), 5 steps per halving of the distance to 100 %.
    pub fn curve(h: &Histogram<u64>) -> Vec<[f64; 3]> {
        if h.is_empty() {
            return Vec::new();
        }
        h.iter_quantiles(5)
            .map(|v| {
                [
                    h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
                    v.quantile_iterated_to(),
                    v.count_since_last_iteration() as f64,
                ]
            })
            .collect()
    }
}

/// Connection figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnStats {
    /// Connections the scenario opens.
    pub target: u64,
    /// Connections that got a successful CONNACK.
    pub connected: u64,
    /// Connections that did not.
    pub failed: u64,
    /// Connections per second, first attempt to last CONNACK.
    pub rate_per_sec: f64,
    /// Connect-to-CONNACK time.
    pub connack_us: Latency,
}

/// The broker's cost, from /proc (`--broker-pid`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerStats {
    /// RSS before the run opened its connections.
    pub rss_before_bytes: u64,
    /// RSS in the middle of the busy phase (publishing, or holding the connections).
    pub rss_busy_bytes: u64,
    /// RSS at the end of the busy phase.
    pub rss_end_bytes: u64,
    /// (busy RSS - RSS before) / connected: memory per (idle, for `conn`) connection.
    pub bytes_per_connection: f64,
    /// CPU used during the busy phase, percent of one core.
    pub cpu_percent: f64,
}

/// Everything one run reports. Also the unit of `loadtest/baseline.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    /// Run label (`--label`); rows of the comparison table.
    pub label: String,
    /// Scenario name.
    pub scenario: String,
    /// Broker under test (`--target`); columns of the comparison table.
    pub target: String,
    /// MQTT protocol level (4 or 5).
    pub version: u8,
    /// QoS.
    pub qos: u8,
    /// Publishing connections.
    pub publishers: u64,
    /// Subscribing connections.
    pub subscribers: u64,
    /// Payload bytes.
    pub payload_bytes: u64,
    /// Target rate, msg/s over all publishers (0 = as fast as possible).
    pub rate_per_sec: u64,
    /// Publish phase limit, seconds.
    pub duration_secs: f64,
    /// Publish count limit.
    pub messages_max: u64,
    /// Clean sessions.
    pub clean: bool,
    /// PUBLISH packets written.
    pub sent: u64,
    /// Acknowledged publishes (QoS 1/2).
    pub acked: u64,
    /// Deliveries, duplicates included.
    pub received: u64,
    /// Deliveries the publishes should have caused (sent x receiving groups).
    pub expected: u64,
    /// Distinct deliveries.
    pub unique: u64,
    /// expected - unique.
    pub lost: u64,
    /// received - unique.
    pub duplicates: u64,
    /// Deliveries with a lower sequence than an earlier one from the same publisher.
    pub reordered: u64,
    /// Retained deliveries (`retained`).
    pub retained_received: u64,
    /// Publish phase start to last PUBLISH written.
    pub publish_secs: f64,
    /// Publishes written per second.
    pub msgs_per_sec_in: f64,
    /// Deliveries per second (publish start to last delivery; `retained`: subscribe to last).
    pub msgs_per_sec_out: f64,
    /// Publish-to-deliver latency.
    pub latency_us: Latency,
    /// Connection figures.
    pub connections: ConnStats,
    /// Broker cost, when `--broker-pid` was given.
    pub broker: Option<BrokerStats>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub error_total: u64,
    /// Latency distribution: [value µs, quantile, count] (see [`Latency::curve`]).
    pub percentiles: Vec<[f64; 3]>,
    /// /proc/loadavg at the end of the run: how busy the machine was.
    pub loadavg: String,
    /// Worker threads per process.
    pub threads: u64,
    /// Client processes.
    pub processes: u64,
    /// Wall time of the whole run.
    pub elapsed_secs: f64,
    /// Start, Unix seconds.
    pub started_unix_secs: u64,
}

impl Summary {
    /// Lost deliveries as a percentage of the expected ones.
    pub fn loss_percent(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.expected as f64
        }
    }

    /// The delivered rate with the loss beside it, e.g. `1 950 000 (0 lost)` or
    /// `1 140 000 (LOST 76.00 %)`: a rate is never shown without its loss.
    pub fn rate_with_loss(&self) -> String {
        if self.lost == 0 {
            format!("{:.0} (0 lost)", self.msgs_per_sec_out)
        } else {
            format!("{:.0} (LOST {:.2} %)", self.msgs_per_sec_out, self.loss_percent())
        }
    }

    /// Adds another client process's `conn` result (they ran concurrently).
    pub fn absorb(&mut self, o: &Summary) {
        let c = &mut self.connections;
        c.connected += o.connections.connected;
        c.failed += o.connections.failed;
        c.rate_per_sec += o.connections.rate_per_sec;
        // Percentiles do not add up; keep the worse process's (conservative).
        if o.connections.connack_us.p99 > c.connack_us.p99 {
            c.connack_us = o.connections.connack_us.clone();
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.error_total += o.error_total;
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let l = &self.latency_us;
        let _ = writeln!(
            t,
            "== {} ({}{}, mqtt {}, qos {}, {} pub / {} sub, {} B, rate {}) ==",
            self.label,
            self.scenario,
            if self.target.is_empty() { String::new() } else { format!(" @ {}", self.target) },
            self.version,
            self.qos,
            self.publishers,
            self.subscribers,
            self.payload_bytes,
            if self.rate_per_sec == 0 { "max".into() } else { format!("{}/s", self.rate_per_sec) },
        );
        if self.scenario == "conn" {
            let c = &self.connections;
            let _ = writeln!(
                t,
                "connections   {} of {} held, {} failed, {:.0}/s ({} processes)",
                c.connected, c.target, c.failed, c.rate_per_sec, self.processes
            );
            let a = &c.connack_us;
            let _ = writeln!(
                t,
                "CONNACK us    p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
                a.p50, a.p90, a.p99, a.p999, a.max
            );
        } else {
            // One table: what was delivered, what was lost, how long it took.
            let _ = writeln!(
                t,
                "| delivered msg/s | lost | lost % | duplicates | reordered | p50 us | p90 us | \
                 p99 us | p99.9 us | max us |"
            );
            let _ = writeln!(t, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            let _ = writeln!(
                t,
                "| {:.0} | {} | {:.3} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                self.msgs_per_sec_out,
                self.lost,
                self.loss_percent(),
                self.duplicates,
                self.reordered,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max
            );
            if self.lost > 0 {
                let _ = writeln!(
                    t,
                    "!!! LOSS: {} of {} expected deliveries ({:.3} %) never arrived: the \
                     delivered rate above is not a throughput !!!",
                    self.lost,
                    self.expected,
                    self.loss_percent()
                );
            }
            let _ = writeln!(
                t,
                "messages      sent {}  acked {}  received {}  expected {}",
                self.sent, self.acked, self.received, self.expected
            );
            let _ = writeln!(
                t,
                "integrity     lost {}  duplicates {}  reordered {}{}",
                self.lost,
                self.duplicates,
                self.reordered,
                if self.scenario == "retained" {
                    format!("  retained {}", self.retained_received)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                t,
                "throughput    in {:.0} msg/s  out {:.0} msg/s  (publishing {:.2} s)",
                self.msgs_per_sec_in, self.msgs_per_sec_out, self.publish_secs
            );
            let _ = writeln!(
                t,
                "latency us    p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
        }
        if let Some(b) = &self.broker {
            // Per-connection memory only means something when the connections are idle.
            let per_conn = if self.scenario == "conn" {
                format!(", {:.0} B/connection", b.bytes_per_connection)
            } else {
                String::new()
            };
            let _ = writeln!(
                t,
                "broker        RSS {:.1} -> {:.1} MiB{per_conn}, CPU {:.0} % of one core",
                b.rss_before_bytes as f64 / 1048576.0,
                b.rss_busy_bytes as f64 / 1048576.0,
                b.cpu_percent
            );
        }
        let _ = writeln!(t, "errors        {} {:?}", self.error_total, self.errors);
        let _ = writeln!(t, "loadavg       {}", self.loadavg);
        t
    }

    /// The HDR percentile distribution file (HdrHistogram's outputPercentileDistribution
    /// layout, values in microseconds).
    pub fn hdr_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        let mut total = 0.0;
        for [v, q, n] in &self.percentiles {
            total += n;
            if *q < 1.0 {
                let _ = writeln!(t, "{v:>12.3} {q:>14.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q));
            } else {
                let _ = writeln!(t, "{v:>12.3} {q:>14.12} {total:>10}");
            }
        }
        let l = &self.latency_us;
        let _ = writeln!(t, "#[Mean    = {:>12.3}, Unit = microseconds]", l.mean);
        let _ = writeln!(t, "#[Max     = {:>12.3}, Total count    = {:>12}]", l.max, l.count);
        t
    }

    /// Writes JSON, HDR and SVG outputs; `None` skips one. `-` for JSON means stdout.
    pub fn write_files(
        &self,
        json: Option<&str>,
        hdr: Option<&str>,
        svg: Option<&str>,
    ) -> Result<()> {
        if let Some(p) = json {
            let text = serde_json::to_string(self)?;
            if p == "-" {
                println!("{text}");
            } else {
                std::fs::write(p, text + "\n").with_context(|| format!("writing {p}"))?;
            }
        }
        if let Some(p) = hdr {
            std::fs::write(p, self.hdr_text()).with_context(|| format!("writing {p}"))?;
        }
        if let Some(p) = svg {
            let title = format!("{} latency ({})", self.label, self.target);
            std::fs::write(p, svg_plot(&title, &[self])).with_context(|| format!("writing {p}"))?;
        }
        Ok(())
    }
}

/// Reads summaries: each file holds one summary or an array of them.
pub fn read_summaries(paths: &[String]) -> Result<Vec<Summary>> {
    let mut out = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {p}"))?;
        match v {
            serde_json::Value::Array(a) => {
                for x in a {
                    out.push(serde_json::from_value(x).with_context(|| format!("parsing {p}"))?);
                }
            }
            x => out.push(serde_json::from_value(x).with_context(|| format!("parsing {p}"))?),
        }
    }
    Ok(out)
}

/// The latency plot: latency (log scale) against percentile, x spaced by 1/(1-p) on a log
/// scale as HdrHistogram plots are, one line per summary.
pub fn svg_plot(title: &str, runs: &[&Summary]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 520.0;
    const L: f64 = 80.0;
    const R: f64 = 180.0;
    const T: f64 = 40.0;
    const B: f64 = 60.0;
    const COLORS: [&str; 8] =
        ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
    let x_decades = 5.0; // 0 % .. 99.999 %
    let pts = runs.iter().flat_map(|r| r.percentiles.iter().map(|p| p[0]));
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for v in pts {
        lo = lo.min(v.max(0.1));
        hi = hi.max(v);
    }
    if hi <= 0.0 {
        lo = 1.0;
        hi = 10.0;
    }
    let (y0, y1) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let px = |q: f64| {
        let d = (1.0 / (1.0 - q.min(0.999_999_9))).log10().min(x_decades);
        L + d / x_decades * (W - L - R)
    };
    let py = |v: f64| T + (1.0 - (v.max(0.1).log10() - y0) / (y1 - y0)) * (H - T - B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        (W - R + L) / 2.0,
        xml(title)
    );
    for d in 0..=(x_decades as i32) {
        let q = 1.0 - 10f64.powi(-d);
        let x = px(q);
        let label = if d == 0 { "0%".to_string() } else { format!("{}%", trim(q * 100.0)) };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{}" stroke="#ddd"/>"##,
            H - B
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            H - B + 18.0
        );
    }
    let mut e = y0 as i32;
    while e <= y1 as i32 {
        let v = 10f64.powi(e);
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##,
            W - R
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 6.0,
            y + 4.0,
            fmt_us(v)
        );
        e += 1;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (W - R + L) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">latency (log scale)</text>"#,
        (H - B + T) / 2.0,
        (H - B + T) / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        W - L - R,
        H - T - B
    );
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut path = String::new();
        for [v, q, _] in &r.percentiles {
            let _ = write!(path, "{:.1},{:.1} ", px(*q), py(*v));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>"#
        );
        let y = T + 16.0 + i as f64 * 34.0;
        let name = if r.target.is_empty() { r.label.clone() } else { r.target.clone() };
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/>"#,
            W - R + 12.0,
            y - 5.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{y}">{}</text>"#, W - R + 32.0, xml(&name));
        let l = &r.latency_us;
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-size="10" fill="#555">p50 {} p99 {}</text>"##,
            W - R + 32.0,
            y + 14.0,
            fmt_us(l.p50),
            fmt_us(l.p99)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn trim(v: f64) -> String {
    let t = format!("{v:.4}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn fmt_us(v: f64) -> String {
    // Three significant digits at most: legend and axis labels stay short.
    let short = |x: f64| if x >= 100.0 { format!("{x:.0}") } else { trim_to(x, 1) };
    if v >= 1e6 {
        format!("{} s", short(v / 1e6))
    } else if v >= 1e3 {
        format!("{} ms", short(v / 1e3))
    } else {
        format!("{} us", short(v))
    }
}

fn trim_to(v: f64, decimals: usize) -> String {
    let t = format!("{v:.decimals$}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `table`: rows = labels, columns = targets, with Tern/peer ratios. `primary` is the target
/// the ratios are taken of (tern).
pub fn comparison_table(runs: &[Summary], primary: &str) -> String {
    let mut targets: Vec<String> =
        runs.iter().map(|r| r.target.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    // Primary first, then the peers, the raw relay ceiling last.
    targets.sort_by_key(|t| (t != primary, t.starts_with("relay"), t.clone()));
    let mut labels: Vec<String> = Vec::new();
    for r in runs {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
    }
    let find = |l: &str, t: &str| runs.iter().find(|r| r.label == l && r.target == t);
    let peers: Vec<&String> = targets.iter().filter(|t| *t != primary).collect();
    let mut s = String::new();
    let _ = write!(s, "| scenario | metric |");
    for t in &targets {
        let _ = write!(s, " {t} |");
    }
    for p in &peers {
        let _ = write!(s, " {primary}/{p} |");
    }
    s.push('\n');
    let _ = write!(s, "|---|---|");
    for _ in 0..targets.len() + peers.len() {
        s.push_str("---:|");
    }
    s.push('\n');
    type Metric = (&'static str, fn(&Summary) -> Option<f64>, fn(f64) -> String);
    let msgs: Metric = ("msg/s out", |r| Some(r.msgs_per_sec_out), |v| format!("{:.0}", v));
    let lost_pct: Metric = ("lost %", |r| Some(r.loss_percent()), |v| format!("{v:.2}"));
    let p50: Metric =
        ("p50 us", |r| (r.latency_us.count > 0).then_some(r.latency_us.p50), |v| format!("{v:.0}"));
    let p99: Metric =
        ("p99 us", |r| (r.latency_us.count > 0).then_some(r.latency_us.p99), |v| format!("{v:.0}"));
    let lost: Metric = ("lost", |r| Some(r.lost as f64), |v| format!("{v:.0}"));
    let conn_rate: Metric = ("conn/s", |r| Some(r.connections.rate_per_sec), |v| format!("{v:.0}"));
    let held: Metric = ("held", |r| Some(r.connections.connected as f64), |v| format!("{v:.0}"));
    let per_conn: Metric = (
        "broker B/conn",
        |r| r.broker.as_ref().map(|b| b.bytes_per_connection),
        |v| format!("{v:.0}"),
    );
    let cpu: Metric =
        ("broker CPU %", |r| r.broker.as_ref().map(|b| b.cpu_percent), |v| format!("{v:.0}"));
    for l in &labels {
        let any = targets.iter().find_map(|t| find(l, t));
        let is_conn = any.is_some_and(|r| r.scenario == "conn");
        let metrics: Vec<Metric> = if is_conn {
            vec![held, conn_rate, per_conn]
        } else {
            vec![msgs, lost_pct, p50, p99, lost, cpu]
        };
        for (name, get, fmt) in metrics {
            let is_rate = name == msgs.0;
            let _ = write!(s, "| {l} | {name} |");
            for t in &targets {
                let run = find(l, t);
                // A delivered rate is never shown without its loss.
                let cell = match run {
                    Some(r) if is_rate => r.rate_with_loss(),
                    _ => run.and_then(get).map_or("-".into(), fmt),
                };
                let _ = write!(s, " {cell} |");
            }
            let base_run = find(l, primary);
            let base = base_run.and_then(get);
            for p in &peers {
                let peer_run = find(l, p);
                let v = peer_run.and_then(get);
                let cell = match (base, v) {
                    // A lossy rate is not a throughput: no ratio, never a win.
                    _ if is_rate && base_run.is_some_and(|r| r.lost > 0) => "lossy".into(),
                    (Some(a), Some(b))
                        if b > 0.0 && is_rate && peer_run.is_some_and(|r| r.lost > 0) =>
                    {
                        format!("{:.2} (peer lossy)", a / b)
                    }
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
    }
    s
}

/// Bounds of the CI regression check (see scripts/perf-smoke.sh for how they were chosen).
/// Every figure is a ratio to the raw relay measured in the same run, so machine noise that
/// slows both cancels; the bounds compare that ratio with the baseline's.
#[derive(Clone, Copy, Debug)]
pub struct CheckBounds {
    /// Fail when Tern's delivered rate over the relay's falls below this fraction of the
    /// baseline's ratio.
    pub throughput_ratio_min: f64,
    /// Fail when Tern's latency over the relay's, at p50, p90, p99 or p99.9, exceeds this
    /// multiple of the baseline's ratio...
    pub latency_ratio_max: f64,
    /// ... and Tern's latency there also exceeds the relay's by more than this many
    /// microseconds (sub-millisecond differences are scheduling noise on a shared CPU).
    pub latency_slack_us: f64,
}

/// A percentile's name and how to read it.
type Percentile = (&'static str, fn(&Latency) -> f64);

/// The percentiles the check compares.
const CHECKED_PERCENTILES: [Percentile; 4] =
    [("p50", |l| l.p50), ("p90", |l| l.p90), ("p99", |l| l.p99), ("p99.9", |l| l.p999)];

/// `check`: for each baseline label, Tern's figures over the relay's (target `relay`) in the
/// current run, compared with the same ratios in the baseline. Fails on any QoS 1/2 loss.
/// Returns the report and whether it passed.
pub fn check(baseline: &[Summary], current: &[Summary], b: CheckBounds) -> (String, bool) {
    let mut s = String::new();
    let mut ok = true;
    let _ = writeln!(
        s,
        "perf check, every figure as tern/relay of the same run: fail if the delivered-rate ratio \
         < {:.0} % of the baseline's, or a latency ratio (p50/p90/p99/p99.9) > {:.1}x the \
         baseline's and tern > relay + {:.0} us there, or any QoS 1/2 message is lost",
        b.throughput_ratio_min * 100.0,
        b.latency_ratio_max,
        b.latency_slack_us
    );
    let _ = writeln!(
        s,
        "{:<18} {:>22} {:>22} {:>9} {:>9} {:>9} {:>9}  verdict",
        "label",
        "rate now (tern/relay)",
        "rate base (tern/relay)",
        "p50 x",
        "p90 x",
        "p99 x",
        "p99.9 x"
    );
    let find = |runs: &[Summary], label: &str, relay: bool| {
        runs.iter().find(|r| r.label == label && (r.target == "relay") == relay).cloned()
    };
    let mut labels: Vec<&str> = Vec::new();
    for r in baseline.iter().filter(|r| r.target != "relay") {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    for label in labels {
        let runs = (
            find(baseline, label, false),
            find(baseline, label, true),
            find(current, label, false),
            find(current, label, true),
        );
        let (Some(bt), Some(br), Some(ct), Some(cr)) = runs else {
            ok = false;
            let _ =
                writeln!(s, "{label:<18} missing tern or relay run (baseline or current)  FAIL");
            continue;
        };
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let rate_now = ratio(ct.msgs_per_sec_out, cr.msgs_per_sec_out);
        let rate_base = ratio(bt.msgs_per_sec_out, br.msgs_per_sec_out);
        let mut why = Vec::new();
        // Throughput only matters for as-fast-as-possible runs; a fixed-rate run delivers its
        // rate by construction, and a shortfall there shows up as losses or latency.
        if bt.rate_per_sec == 0
            && rate_base.is_finite()
            && (rate_now.is_nan() || rate_now < rate_base * b.throughput_ratio_min)
        {
            why.push(format!(
                "delivered-rate ratio {:.0} % of the baseline's",
                rate_now / rate_base * 100.0
            ));
        }
        let mut cells = Vec::new();
        for (name, get) in CHECKED_PERCENTILES {
            let now = ratio(get(&ct.latency_us), get(&cr.latency_us));
            let base = ratio(get(&bt.latency_us), get(&br.latency_us));
            let rel = now / base;
            cells.push(if rel.is_finite() { format!("{rel:.2}") } else { "-".into() });
            let excess = get(&ct.latency_us) - get(&cr.latency_us);
            if rel.is_finite() && rel > b.latency_ratio_max && excess > b.latency_slack_us {
                why.push(format!("{name} ratio {rel:.1}x the baseline's"));
            }
        }
        if ct.qos > 0 && ct.lost > 0 {
            why.push(format!(
                "{} QoS {} messages not delivered by the end of the drain time",
                ct.lost, ct.qos
            ));
        }
        if ct.sent == 0 || cr.sent == 0 {
            why.push("nothing was published (broker or relay down?)".into());
        }
        let verdict =
            if why.is_empty() { "ok".to_string() } else { format!("FAIL: {}", why.join("; ")) };
        ok &= why.is_empty();
        let _ = writeln!(
            s,
            "{label:<18} {:>22} {:>22} {:>9} {:>9} {:>9} {:>9}  {verdict}",
            format!("{:.3}", rate_now),
            format!("{:.3}", rate_base),
            cells[0],
            cells[1],
            cells[2],
            cells[3]
        );
        if ct.lost > 0 {
            let _ = writeln!(s, "{label:<18} tern {}", ct.rate_with_loss());
        }
    }
    let _ = writeln!(
        s,
        "{}",
        if ok {
            "perf check PASSED"
        } else {
            "perf check FAILED: regression against loadtest/baseline.json, relative to the raw relay of the same run (rerun scripts/perf-baseline.sh only if the change is intended)"
        }
    );
    (s, ok)
}

/// Writes `runs` as one JSON array (the baseline format).
pub fn write_array(path: &Path, runs: &[Summary]) -> Result<()> {
    let text = serde_json::to_string_pretty(runs)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, target: &str, msgs: f64, p99: f64) -> Summary {
        Summary {
            label: label.into(),
            target: target.into(),
            scenario: "p2p".into(),
            msgs_per_sec_out: msgs,
            sent: 10,
            latency_us: Latency {
                p50: p99 / 4.0,
                p90: p99 / 2.0,
                p99,
                p999: p99 * 2.0,
                count: 1,
                ..Default::default()
            },
            percentiles: vec![[10.0, 0.0, 1.0], [p99, 0.99, 1.0], [p99 * 2.0, 1.0, 1.0]],
            ..Default::default()
        }
    }

    #[test]
    fn check_is_relative_to_the_relay_of_the_same_run() {
        let bounds = CheckBounds {
            throughput_ratio_min: 0.5,
            latency_ratio_max: 4.0,
            latency_slack_us: 2000.0,
        };
        let base = [run("a", "tern", 100_000.0, 100.0), run("a", "relay", 200_000.0, 50.0)];
        let pair = |t: f64, tp99: f64, r: f64, rp99: f64| {
            [run("a", "tern", t, tp99), run("a", "relay", r, rp99)]
        };
        // A machine twice as slow for both: the ratios hold, it passes.
        assert!(check(&base, &pair(50_000.0, 200.0, 100_000.0, 100.0), bounds).1);
        // Tern alone slower: fails, though its absolute rate is what the baseline had.
        let (text, ok) = check(&base, &pair(100_000.0, 100.0, 800_000.0, 50.0), bounds);
        assert!(!ok, "{text}");
        // Tern's tail alone grows (and by more than the slack): fails.
        assert!(!check(&base, &pair(100_000.0, 20_000.0, 200_000.0, 50.0), bounds).1);
        // Any QoS 1 loss fails.
        let mut lossy = pair(100_000.0, 100.0, 200_000.0, 50.0);
        lossy[0].qos = 1;
        lossy[0].lost = 1;
        assert!(!check(&base, &lossy, bounds).1);
        // No relay run: fails.
        assert!(!check(&base, &[run("a", "tern", 100_000.0, 100.0)], bounds).1);
    }

    #[test]
    fn loss_is_beside_every_rate_and_a_lossy_row_is_never_a_win() {
        let mut lossy = run("f", "tern", 1_000_000.0, 10.0);
        lossy.expected = 100;
        lossy.lost = 76;
        let runs = [lossy, run("f", "rumqttd", 500_000.0, 20.0)];
        let t = comparison_table(&runs, "tern");
        assert!(
            t.contains("| f | msg/s out | 1000000 (LOST 76.00 %) | 500000 (0 lost) | lossy |"),
            "{t}"
        );
        assert!(runs[0].table().contains("!!! LOSS: 76 of 100"), "{}", runs[0].table());
        assert!(!runs[1].table().contains("LOSS"));
    }

    #[test]
    fn table_has_ratios_and_svg_is_well_formed() {
        let runs = [run("p2p", "tern", 200.0, 10.0), run("p2p", "mosquitto", 100.0, 20.0)];
        let t = comparison_table(&runs, "tern");
        assert!(t.contains("| p2p | msg/s out | 200 (0 lost) | 100 (0 lost) | 2.00 |"), "{t}");
        let svg = svg_plot("x", &[&runs[0], &runs[1]]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
