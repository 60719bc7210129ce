//! What Tern's TLS record layer (src/net/tls/records.rs) costs per wake of a parked
//! connection: a parked connection keeps its traffic keys unexpanded, so the first record
//! after a wake expands both ring AEAD keys again. Compared per cipher: sealing one small
//! record (a PINGRESP's 2 bytes) with the keys cached, against parking first (dropping the
//! expanded keys) and then sealing it, which is what a wake that answers one packet costs.
//!
//! `cargo bench --bench tls_records`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tern::net::tls::records::{Cipher, Records, Version};

fn records(cipher: Cipher) -> Records {
    let key = [0x42u8; 32];
    let iv = [0x24u8; 12];
    let k = &key[..cipher.key_len()];
    let mut r =
        Records::from_fixed(Version::Tls13, cipher, (k, &iv), (k, &iv)).expect("fixed secrets");
    // Millions of iterations: no key update (which needs rustls' key schedule).
    r.set_confidentiality_limit(u64::MAX);
    r
}

fn bench_wake(c: &mut Criterion) {
    let mut g = c.benchmark_group("tls_records_seal_2_bytes");
    for (name, cipher) in [
        ("aes128gcm", Cipher::Aes128Gcm),
        ("aes256gcm", Cipher::Aes256Gcm),
        ("chacha20poly1305", Cipher::Chacha20Poly1305),
    ] {
        let mut r = records(cipher);
        let mut out = Vec::with_capacity(64);
        g.bench_function(BenchmarkId::new("keys_cached", name), |b| {
            b.iter(|| {
                out.clear();
                r.write(&[0xD0, 0x00], &mut out).expect("seal");
            })
        });
        g.bench_function(BenchmarkId::new("after_park", name), |b| {
            b.iter(|| {
                r.park();
                out.clear();
                r.write(&[0xD0, 0x00], &mut out).expect("seal");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_wake);
criterion_main!(benches);
