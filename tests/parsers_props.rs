//! Property tests for every parser of outside input besides the MQTT codec: SCRAM messages, the
//! WebSocket upgrade request and frames, the client certificate's subject CN, the ACL file, the
//! password file and `tern.toml`. Each property calls the body in `tern::fuzzing` that the
//! cargo-fuzz target of the same name calls (`tests/fuzz/fuzz_targets/`), so `cargo test` runs
//! exactly the fuzzers' checks on inputs built from valid pieces, mutated.
//!
//! Cases per property default to 256 to keep CI fast on 2 cores; set `PROPTEST_CASES` for more.

use proptest::collection::vec;
use proptest::prelude::*;
use tern::fuzzing;
use tern::net::ws::frame::client_frame;

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 256;
    }
    c
}

/// Text made of `pieces`, joined by `sep`, sometimes with arbitrary characters in between.
fn text_of(pieces: &'static [&'static str], sep: &'static str) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => proptest::sample::select(pieces).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => "[ -~]{0,12}",
    ];
    vec(piece, 0..24).prop_map(move |v| v.join(sep))
}

/// One operation of `fuzzing::tls_records`: a sealed application data record (sometimes
/// empty, sometimes one byte over 2^14), a sealed record of a chosen inner type (alert, KeyUpdate,
/// other handshake messages, change_cipher_spec, unknown) with padding, raw bytes, or a flipped
/// byte.
fn tls_record_op() -> impl Strategy<Value = Vec<u8>> {
    let with_len = |head: Vec<u8>, body: Vec<u8>| {
        let mut op = head;
        op.extend((body.len() as u16).to_be_bytes());
        op.extend(body);
        op
    };
    prop_oneof![
        4 => vec(any::<u8>(), 0..64).prop_map(move |b| with_len(vec![0], b)),
        1 => prop_oneof![Just(0x4000u16), Just(0x4001), Just(0)]
            .prop_map(|n| { let l = (n | 0x8000).to_be_bytes(); vec![0, l[0], l[1], 0x5a] }),
        3 => (
            proptest::sample::select(vec![0u8, 20, 21, 22, 23, 24, 99]),
            any::<u8>(),
            prop_oneof![
                Just(vec![24u8, 0, 0, 1, 0]),
                Just(vec![24u8, 0, 0, 1, 1]),
                Just(vec![24u8, 0, 0, 1, 2]),
                Just(vec![24u8, 0, 0]),
                Just(vec![4u8, 0, 0, 1, 0]),
                Just(vec![1u8, 0]),
                Just(vec![2u8, 90]),
                Just(vec![1u8, 0]),
                vec(any::<u8>(), 0..8),
            ],
        )
            .prop_map(move |(t, pad, b)| with_len(vec![1, t, pad % 40], b)),
        1 => vec(any::<u8>(), 0..12).prop_map(|b| { let mut op = vec![2, b.len() as u8]; op.extend(b); op }),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(at, m)| { let a = at.to_be_bytes(); vec![3, a[0], a[1], m] }),
    ]
}

/// `base` with a few bytes overwritten and maybe truncated: mutations of a valid input.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    (vec((0..len, any::<u8>()), 0..4), 0..=len + 1).prop_map(move |(edits, cut)| {
        let mut b = base.clone();
        for (i, v) in edits {
            if let Some(x) = b.get_mut(i) {
                *x = v;
            }
        }
        b.truncate(cut);
        b
    })
}

const SCRAM_PIECES: &[&str] = &[
    "n,,",
    "y,,",
    "p=x,,",
    "n=user",
    "n=nobody",
    "n=u=2Cv=3D",
    "n=€",
    "r=abc",
    "r=",
    ",",
    "=",
    "€=x",
    "c=biws",
    "r=abcfuzz-server-nonce",
    "p=AAAA",
    "p=",
    "s=c2FsdA==",
    "i=4096",
    "i=0",
    "$scram-sha-256$1$c2FsdA==$",
    "\0",
];

const WS_REQUEST: &str = "GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

const WS_LINES: &[&str] = &[
    "GET /mqtt HTTP/1.1",
    "POST /mqtt HTTP/1.1",
    "GET /mqtt?x HTTP/1.0",
    "GET / HTTP/1.1",
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Version: 8",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Key: c2hvcnQ=",
    "Sec-WebSocket-Protocol: mqttv3.1, mqtt",
    "X: \u{ff}",
    "",
    "bad line",
    " folded",
];

/// Frame sequences: binary, fragments, pings, pongs, closes, text, with any first byte.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let one = (
        proptest::sample::select(&[0x82u8, 0x02, 0x00, 0x80, 0x89, 0x8A, 0x88, 0x81, 0xC2][..]),
        vec(any::<u8>(), 0..300),
        any::<[u8; 4]>(),
    )
        .prop_map(|(first, payload, mask)| client_frame(first, &payload, mask));
    (any::<u8>(), vec(one, 0..6)).prop_map(|(chunk, fs)| {
        let mut out = vec![chunk];
        fs.into_iter().for_each(|f| out.extend(f));
        out
    })
}

const ACL_PIECES: &[&str] = &[
    "user alice",
    "user ",
    "user +",
    "topic read public/#",
    "topic write a/+",
    "topic readwrite #",
    "topic deny home/#",
    "topic",
    "topic read",
    "topic bogus x",
    "pattern write devices/%c/#",
    "pattern read %u/%c",
    "pattern %",
    "# comment",
    "",
    "   ",
    "topic read $SYS/#",
    "topic read a/#/b",
    "topic  read  a",
];

const PASSWD_PIECES: &[&str] = &[
    "alice:$7$101$ovTPebm9XGjn5I6M$b6bZX5QLUAo8/AYJqyLDa2mrsYl9C/mw38c1Aaw8rkkS+igwOoaBN044GhvY3Kr5yCneoRE83p59+wQfyFNAMA==",
    "carol:$6$3HtLf7GQAdUTXcsu$RLQc/69TmkACvK+iNv1af6gFCb3f3tRNEjcVJoz4PIxoT2uXSR2iG33zSyWPO0CoanbcMsBWYMMFpjuntU6VVw==",
    "argon:$argon2id$v=19$m=1024,t=1,p=1$dGVybi1maXh0dXJlLXNhbHQ$4FeBWv3yBSEdMOKNI0MaWorxahwho4Sp6vfIXAmAoIw",
    "big:$argon2id$v=19$m=4294967295,t=1,p=1$dGVybi1maXh0dXJlLXNhbHQ$4FeBWv3yBSEdMOKNI0MaWorxahwho4Sp6vfIXAmAoIw",
    "it:$7$4294967295$ovTPebm9XGjn5I6M$b6bZX5QLUAo8/AYJqyLDa2mrsYl9C/mw38c1Aaw8rkkS+igwOoaBN044GhvY3Kr5yCneoRE83p59+wQfyFNAMA==",
    "s:$scram-sha-256$4096$c2FsdHNhbHQ=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "# comment", "", ":", "x:", ":y", "dup:$6$", "  spaced : $7$ ", "€:$argon2id$",
];

const TOML_PIECES: &[&str] = &[
    "[broker]",
    "shards = 2",
    "shards = 0",
    "shards = 99999999999999999999",
    "[limits]",
    "packet_size_bytes_max = 64",
    "packet_size_bytes_max = 268435460",
    "inflight_max = 0",
    "session_queue_bytes_max = 1",
    "mesh_batch_max = 4096",
    "[[listener]]",
    "bind = \"127.0.0.1:1883\"",
    "bind = \"nonsense\"",
    "transport = \"ws\"",
    "transport = \"tls\"",
    "redirect = { reference = \"x\" }",
    "[runtime]",
    "ring_depth = 3",
    "[log]",
    "level = \"debug\"",
    "[auth]",
    "unknown = 1",
    "x = [",
    "\"\\u0000\"",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scram_messages(data in prop_oneof![
        text_of(SCRAM_PIECES, "").prop_map(String::into_bytes),
        vec(any::<u8>(), 0..200),
    ]) {
        fuzzing::scram(&data);
    }

    #[test]
    fn ws_handshake_requests(data in prop_oneof![
        mutated(WS_REQUEST.as_bytes().to_vec()),
        text_of(WS_LINES, "\r\n").prop_map(|t| (t + "\r\n\r\n").into_bytes()),
        vec(any::<u8>(), 0..300),
    ]) {
        fuzzing::ws_handshake(&data);
    }

    #[test]
    fn ws_frames(data in prop_oneof![
        frames(),
        frames().prop_flat_map(mutated),
        vec(any::<u8>(), 0..300),
    ]) {
        fuzzing::ws_frames(&data);
    }

    #[test]
    fn tls_stream_input(data in prop_oneof![
        // A ClientHello first (odd first byte), then garbage or a record header and a body.
        (any::<u8>(), vec(any::<u8>(), 0..300)).prop_map(|(f, rest)| {
            let mut d = vec![f | 1];
            d.extend(rest);
            d
        }),
        (1u8..=255, any::<u8>(), vec(any::<u8>(), 0..200)).prop_map(|(f, kind, body)| {
            let mut d = vec![f, 0x14 + kind % 4, 0x03, 0x03];
            d.extend((body.len() as u16).to_be_bytes());
            d.extend(body);
            d
        }),
        vec(any::<u8>(), 0..300),
    ]) {
        fuzzing::tls_stream(&data);
    }

    #[test]
    fn tls_records_input(setup in any::<u8>(), ops in vec(tls_record_op(), 0..12)) {
        let mut data = vec![setup];
        for op in ops {
            data.extend(op);
        }
        fuzzing::tls_records(&data);
    }

    #[test]
    fn tls_records_bytes(data in vec(any::<u8>(), 0..400)) {
        fuzzing::tls_records(&data);
    }

    #[test]
    fn certificate_cn(data in prop_oneof![
        mutated(test_certificate()),
        vec(any::<u8>(), 0..300),
    ]) {
        fuzzing::certificate_cn(&data);
    }

    #[test]
    fn acl_file(text in text_of(ACL_PIECES, "\n")) {
        fuzzing::acl_file(text.as_bytes());
    }

    #[test]
    fn password_file(text in prop_oneof![
        text_of(PASSWD_PIECES, "\n").prop_map(String::into_bytes),
        text_of(PASSWD_PIECES, "\n").prop_flat_map(|t| mutated(t.into_bytes())),
    ]) {
        fuzzing::password_file(&text);
    }

    #[test]
    fn config_file(text in text_of(TOML_PIECES, "\n")) {
        fuzzing::config_text(text.as_bytes());
    }
}

/// A self-signed certificate with a CN, DER.
fn test_certificate() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "device-1");
    params.self_signed(&key).expect("cert").der().to_vec()
}

/// The bodies' checks do fire: a valid certificate's CN is found, and the corpus pieces above
/// are accepted where they should be (so the properties explore beyond the first error).
#[test]
fn valid_inputs_are_accepted() {
    assert_eq!(
        tern::net::tls::subject_common_name(&test_certificate()).as_deref(),
        Some("device-1")
    );
    assert!(matches!(tern::net::ws::parse_request(WS_REQUEST.as_bytes(), "/mqtt"), Ok(Some(_))));
    let acl = "user alice\ntopic read public/#\npattern write devices/%c/#\n";
    assert!(tern::auth::Acl::parse("a", acl).is_ok());
    assert!(tern::auth::PasswordDb::parse("p", PASSWD_PIECES[0]).is_ok());
}

/// Inputs the fuzz targets found, kept as regressions.
#[test]
fn fuzz_findings() {
    // password_file: a lone `\r` line did not survive a write-back (`\r` -> `\r\n` -> ``).
    fuzzing::password_file(b"\r");
    fuzzing::password_file(b"# c\r\n\r");
    fuzzing::password_file(b"\r\r");
    // scram: a server-first message asking the client for 40 955 095 iterations timed out.
    fuzzing::scram(b"r=acdAA,s=caaaaaaa,i=40955095");
}

/// The first find of the `tls_records` cargo-fuzz target (a check of the body, not of the
/// layer): a TLS 1.3 record sealed with inner type 0 and content `00 15 17 00` is application
/// data `00 15` to the receiver (the type is the last non-zero byte, RFC 8446 §5.2); the body
/// expected nothing.
#[test]
fn tls_records_inner_type_zero_is_read_as_the_last_non_zero_byte() {
    fuzzing::tls_records(&[0x00, 0x15, 0x00, 0x00, 0x01, 0x02, 0x00, 0x15, 0x17, 0x00]);
}
