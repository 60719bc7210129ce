//! Subscription trie benchmarks: match throughput on a realistic device fleet.
//!
//! The trie holds 100 000 device subscriptions, `fleet/{region}/{device}/telemetry` (20 regions
//! of 5 000 devices, one subscriber each), plus the wildcard subscriptions of the services
//! around them: per-region dashboards (`fleet/{region}/+/telemetry`), per-region archivers
//! (`fleet/{region}/#`), an alert handler (`fleet/+/+/alerts`) and a `$SYS/#` monitor.
//!
//! Throughput is in elements: topic names matched per second for the match benches, subscribers
//! visited per second for the fan-out bench.
//!
//! Run: `cargo bench --bench trie -- --warm-up-time 1 --measurement-time 3`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern::topic::SubscriptionTrie;

const REGIONS: u32 = 20;
const DEVICES_PER_REGION: u32 = 5_000;
/// Topic names per measured iteration, so the loop cost and the cache state are averaged over
/// many devices rather than one hot path.
const TOPICS_PER_ITER: u32 = 1_024;

/// The subscriber data a shard would store: a QoS and a subscription identifier.
#[derive(Clone, Copy)]
struct Options {
    qos: u8,
    identifier: u32,
}

fn fleet() -> SubscriptionTrie<u32, Options> {
    let mut trie = SubscriptionTrie::new();
    let mut key = 0;
    let mut subscribe = |trie: &mut SubscriptionTrie<u32, Options>, filter: &str| {
        key += 1;
        trie.insert(filter, key, Options { qos: 1, identifier: key });
    };
    for region in 0..REGIONS {
        for device in 0..DEVICES_PER_REGION {
            subscribe(&mut trie, &format!("fleet/r{region}/d{device}/telemetry"));
        }
        subscribe(&mut trie, &format!("fleet/r{region}/+/telemetry"));
        subscribe(&mut trie, &format!("fleet/r{region}/#"));
    }
    subscribe(&mut trie, "fleet/+/+/alerts");
    subscribe(&mut trie, "$SYS/#");
    assert_eq!(trie.len(), (REGIONS * (DEVICES_PER_REGION + 2) + 2) as usize);
    trie
}

/// Topic names of pseudo-random devices (a fixed LCG, so every run sees the same ones).
fn topics(suffix: &str) -> Vec<String> {
    let mut state: u32 = 0x2545_f491;
    (0..TOPICS_PER_ITER)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let region = (state >> 8) % REGIONS;
            let device = (state >> 12) % DEVICES_PER_REGION;
            format!("fleet/r{region}/d{device}/{suffix}")
        })
        .collect()
}

/// Matches every topic; returns the number of subscriptions visited and, so that keys and
/// values are read as a broker would read them, a checksum of them.
fn match_all(trie: &SubscriptionTrie<u32, Options>, topics: &[String]) -> (u64, u64) {
    let (mut visited, mut checksum) = (0_u64, 0_u64);
    for topic in topics {
        trie.for_each_match(topic, |key, options| {
            visited += 1;
            checksum += u64::from(options.qos) + u64::from(key ^ options.identifier);
        });
    }
    (visited, checksum)
}

fn bench_match(c: &mut Criterion) {
    let trie = fleet();
    let mut group = c.benchmark_group("trie_match");
    group.throughput(Throughput::Elements(u64::from(TOPICS_PER_ITER)));
    // Telemetry: the device's own subscription, its region's dashboard and archiver (3 each).
    // Alerts: the alert handler and the region's archiver (2). Unknown: no subscriber at all.
    for (name, suffix, per_topic) in
        [("telemetry_3_matches", "telemetry", 3), ("alerts_2_matches", "alerts", 2)]
    {
        let topics = topics(suffix);
        assert_eq!(match_all(&trie, &topics).0, per_topic * u64::from(TOPICS_PER_ITER));
        group.bench_function(name, |b| b.iter(|| match_all(&trie, black_box(&topics))));
    }
    let unknown: Vec<String> =
        topics("telemetry").iter().map(|t| t.replacen("fleet/", "other/", 1)).collect();
    assert_eq!(match_all(&trie, &unknown).0, 0);
    group.bench_function("no_match", |b| b.iter(|| match_all(&trie, black_box(&unknown))));
    let sys: Vec<String> = (0..TOPICS_PER_ITER).map(|i| format!("$SYS/broker/load/{i}")).collect();
    assert_eq!(match_all(&trie, &sys).0, u64::from(TOPICS_PER_ITER));
    group.bench_function("sys_1_match", |b| b.iter(|| match_all(&trie, black_box(&sys))));
    group.finish();
}

/// One topic with many subscribers on the same filter: the per-subscriber cost of fan-out.
fn bench_fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_fan_out");
    for subscribers in [10_u32, 1_000, 100_000] {
        let mut trie = fleet();
        for key in 0..subscribers {
            trie.insert("fleet/broadcast", 1_000_000 + key, Options { qos: 0, identifier: 0 });
        }
        let topic = ["fleet/broadcast".to_string()];
        group.throughput(Throughput::Elements(u64::from(subscribers)));
        group.bench_with_input(BenchmarkId::from_parameter(subscribers), &topic, |b, topic| {
            b.iter(|| match_all(&trie, black_box(topic)))
        });
    }
    group.finish();
}

/// Subscribe then unsubscribe one device filter: the control-plane cost per subscription.
fn bench_churn(c: &mut Criterion) {
    let mut trie = fleet();
    let filters = topics("config");
    let mut group = c.benchmark_group("trie_churn");
    group.throughput(Throughput::Elements(u64::from(TOPICS_PER_ITER)));
    group.bench_function("insert_remove", |b| {
        b.iter(|| {
            for (key, filter) in (0_u32..).zip(&filters) {
                trie.insert(filter, key, Options { qos: 1, identifier: key });
            }
            for (key, filter) in (0_u32..).zip(&filters) {
                black_box(trie.remove(filter, &key));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_match, bench_fan_out, bench_churn);
criterion_main!(benches);
