//! Group commit of the write-ahead log on this machine's disk: how many records per second
//! become durable when W writers each append a record and wait for its fsync (as a PUBACK that
//! waits for its record would), for W = 1, 16, 256.
//!
//! `cargo bench --bench wal` writes into a temporary directory under $TMPDIR (ext4 here).
//! Each measured iteration is one batch of `BATCH` records; criterion reports time per batch,
//! and the throughput line is records/s.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use tern::persist::record::Record;
use tern::persist::wal::{recover, Wal, WalConfig};

const BATCH: u64 = 2_048;

/// Time for `iters` batches of `BATCH` records written by `writers` tasks, each record synced.
fn run(writers: u64, iters: u64) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = WalConfig { dir: dir.path().to_path_buf(), shard: 0, segment_bytes_max: 64 << 20 };
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(256)
        .spawn(move || async move {
            let mut recovered = recover(&cfg).expect("recover");
            let wal = Rc::new(Wal::open(cfg, &mut recovered).await.expect("open"));
            let per = (BATCH * iters).div_ceil(writers);
            let start = Instant::now();
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let wal = Rc::clone(&wal);
                    glommio::spawn_local(async move {
                        for i in 0..per {
                            let r = Record::Acked {
                                client_id: format!("meter-{w:05}"),
                                packet_id: (i % 65_535 + 1) as u16,
                            };
                            let lsn = wal.append(&r);
                            wal.sync(lsn).await.expect("sync");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            let took = start.elapsed();
            let s = wal.stats();
            eprintln!(
                "  writers {writers}: {} records, {} fsyncs, {:.1} records/fsync",
                s.records_synced,
                s.fsyncs,
                s.records_synced as f64 / s.fsyncs.max(1) as f64
            );
            took
        })
        .expect("executor starts")
        .join()
        .expect("executor ran")
}

fn group_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_group_commit");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    for writers in [1u64, 16, 256] {
        g.bench_with_input(BenchmarkId::from_parameter(writers), &writers, |b, &w| {
            b.iter_custom(|iters| run(w, iters))
        });
    }
    g.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
