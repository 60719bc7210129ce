//! Password file, ACL file and SCRAM over the password file, end to end on a two-shard broker,
//! including the CVE-class inputs (wildcards in identities, empty ACL file).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{connect, start_with, RawClient};
use tern::auth::PasswordHash;
use tern::codec::{Packet, Property, ProtocolVersion, QoS, ReasonCode};

const V4: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-auth-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn password_file(tag: &str) -> PathBuf {
    let alice = PasswordHash::new_pbkdf2_sha512(b"wonderland", 1000).expect("hash");
    let bob = PasswordHash::new_scram_sha256(b"builder").expect("hash");
    let text = format!("# test users\nalice:{}\nbob:{}\n", alice.as_str(), bob.as_str());
    temp_file(&format!("{tag}.passwd"), &text)
}

const ACL: &str = "\
# anonymous clients: nothing
user alice
topic readwrite alice/#
topic read shared/#
user bob
topic readwrite shared/#
topic write alice/inbox
pattern readwrite devices/%c/#
";

fn login(
    addr: std::net::SocketAddr,
    v: ProtocolVersion,
    id: &str,
    user: Option<&str>,
    pw: Option<&[u8]>,
) -> (RawClient, ReasonCode) {
    let mut c = RawClient::connect_tcp(addr, v);
    let mut p = connect(v, id, true, 30);
    if let Packet::Connect(cp) = &mut p {
        cp.username = user.map(Into::into);
        cp.password = pw.map(|b| b.to_vec().into());
    }
    c.send(&p);
    match c.recv() {
        Packet::ConnAck(a) => (c, a.reason),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn suback(c: &mut RawClient, filter: &str) -> ReasonCode {
    c.subscribe_with(common::subscribe_packet(filter, QoS::AtLeastOnce, 1)).reasons[0]
}

#[test]
fn password_file_decides_who_connects() {
    let pw = password_file("login");
    let b = start_with(2, |c| {
        c.auth.password_file = Some(pw.clone());
        c.listeners[0].allow_anonymous = false;
    });
    let (_c, r) = login(b.addr, V4, "a1", Some("alice"), Some(b"wonderland"));
    assert_eq!(r, ReasonCode::Success);
    // $scram-sha-256$ entries also check plain passwords.
    let (_c, r) = login(b.addr, V4, "b1", Some("bob"), Some(b"builder"));
    assert_eq!(r, ReasonCode::Success);
    // v3 return code 4 "bad user name or password" (§3.2.2.3).
    let (_c, r) = login(b.addr, V4, "a2", Some("alice"), Some(b"wrong"));
    assert_eq!(r, ReasonCode::BadUserNameOrPassword);
    let (_c, r) = login(b.addr, V5, "a3", Some("mallory"), Some(b"x"));
    assert_eq!(r, ReasonCode::BadUserNameOrPassword);
    let (_c, r) = login(b.addr, V5, "a4", Some("alice"), None);
    assert_eq!(r, ReasonCode::BadUserNameOrPassword, "no password never matches");
    // No user name on a listener without anonymous access: 5 / 0x87.
    let (_c, r) = login(b.addr, V4, "anon", None, None);
    assert_eq!(r, ReasonCode::NotAuthorized);
}

#[test]
fn user_names_cannot_be_claimed_without_a_password_file() {
    // Anonymous access off and nothing to check a password against: refuse, never trust.
    let b = start_with(2, |c| c.listeners[0].allow_anonymous = false);
    let (_c, r) = login(b.addr, V4, "x", Some("admin"), Some(b"anything"));
    assert_eq!(r, ReasonCode::NotAuthorized);
}

#[test]
fn acl_on_subscribe_publish_and_delivery() {
    let pw = password_file("acl");
    let acl = temp_file("acl.acl", ACL);
    let b = start_with(2, |c| {
        c.auth.password_file = Some(pw.clone());
        c.auth.acl_file = Some(acl.clone());
    });
    let (mut alice, _) =
        login(b.shard_addrs[0], V4, "alice-dev", Some("alice"), Some(b"wonderland"));
    assert_eq!(suback(&mut alice, "alice/#"), ReasonCode::GrantedQoS1);
    // v3: 0x80 for a denied filter.
    assert_eq!(suback(&mut alice, "bob/#"), ReasonCode::UnspecifiedError);
    assert_eq!(suback(&mut alice, "shared/#"), ReasonCode::GrantedQoS1);
    let (mut bob, _) = login(b.shard_addrs[1], V5, "bob-dev", Some("bob"), Some(b"builder"));
    // v5: 0x87 for a denied filter.
    assert_eq!(suback(&mut bob, "alice/#"), ReasonCode::NotAuthorized);
    // bob may write alice/inbox and shared/x; alice receives both.
    bob.publish("alice/inbox", b"hi alice", QoS::AtLeastOnce, 1, false);
    assert!(matches!(bob.recv(), Packet::PubAck(r) if r.reason == ReasonCode::Success));
    assert_eq!(&alice.recv_publish().payload[..], b"hi alice");
    // bob may not write alice/secret: v5 PUBACK 0x87, nothing delivered.
    bob.publish("alice/secret", b"no", QoS::AtLeastOnce, 2, false);
    assert!(matches!(bob.recv(), Packet::PubAck(r) if r.reason == ReasonCode::NotAuthorized));
    // alice (v3) may not write shared/: dropped, still acknowledged (v3 cannot refuse).
    let (mut watcher, _) = login(b.shard_addrs[1], V4, "bob-watch", Some("bob"), Some(b"builder"));
    assert_eq!(suback(&mut watcher, "shared/#"), ReasonCode::GrantedQoS1);
    alice.publish("shared/x", b"denied", QoS::AtLeastOnce, 3, false);
    assert!(matches!(alice.recv(), Packet::PubAck(_)));
    assert!(watcher.recv_timeout(Duration::from_millis(400)).is_none());
}

#[test]
fn wildcards_in_client_ids_never_widen_patterns() {
    // CVE class: client id "+" or "#" substituted into `devices/%c/#` must not match others.
    let pw = password_file("cve");
    let acl = temp_file("cve.acl", ACL);
    let b = start_with(2, |c| {
        c.auth.password_file = Some(pw.clone());
        c.auth.acl_file = Some(acl.clone());
    });
    let (mut good, _) = login(b.addr, V4, "meter7", Some("bob"), Some(b"builder"));
    assert_eq!(suback(&mut good, "devices/meter7/#"), ReasonCode::GrantedQoS1);
    for evil in ["+", "#", "a/b"] {
        let (mut c, r) = login(b.addr, V4, evil, Some("bob"), Some(b"builder"));
        assert_eq!(r, ReasonCode::Success);
        assert_eq!(suback(&mut c, "devices/meter7/#"), ReasonCode::UnspecifiedError, "{evil}");
        assert_eq!(suback(&mut c, "devices/+/#"), ReasonCode::UnspecifiedError, "{evil}");
    }
}

#[test]
fn empty_acl_file_denies_everything() {
    let acl = temp_file("empty.acl", "# nothing granted\n");
    let b = start_with(2, |c| c.auth.acl_file = Some(acl.clone()));
    let (mut c, r) = login(b.addr, V5, "anyone", None, None);
    assert_eq!(r, ReasonCode::Success);
    assert_eq!(suback(&mut c, "a"), ReasonCode::NotAuthorized);
}

#[test]
fn retained_messages_are_checked_on_delivery() {
    let pw = password_file("ret");
    let acl = temp_file("ret.acl", ACL);
    let b = start_with(2, |c| {
        c.auth.password_file = Some(pw.clone());
        c.auth.acl_file = Some(acl.clone());
    });
    let (mut bob, _) = login(b.addr, V4, "bob-r", Some("bob"), Some(b"builder"));
    bob.publish("devices/bob-r/state", b"on", QoS::AtLeastOnce, 1, true);
    assert!(matches!(bob.recv(), Packet::PubAck(_)));
    // Every shard's replica holds it (the only retained message), so the check below is made
    // against a stored message on whichever shard `bob-s` lands.
    for shard in 0..2 {
        assert!(b.wait_shard_stats(shard, |m| m.retained_messages == 1), "replica {shard}");
    }
    // Another bob client may subscribe to its own devices/%c/#, never sees bob-r's retained.
    let (mut other, _) = login(b.addr, V4, "bob-s", Some("bob"), Some(b"builder"));
    assert_eq!(suback(&mut other, "devices/bob-s/#"), ReasonCode::GrantedQoS1);
    assert!(other.recv_timeout(Duration::from_millis(300)).is_none());
}

#[test]
fn scram_over_the_password_file() {
    use tern::enhanced_auth::{client, SCRAM_SHA_256};
    let pw = password_file("scram");
    let b = start_with(2, |c| c.auth.password_file = Some(pw.clone()));
    let mut c = RawClient::connect_tcp(b.addr, V5);
    let first = client::first("bob", "abcdef");
    let mut p = connect(V5, "bob-scram", true, 30);
    if let Packet::Connect(cp) = &mut p {
        cp.properties.push(Property::AuthenticationMethod(SCRAM_SHA_256.into()));
        cp.properties.push(Property::AuthenticationData(first.clone().into_bytes().into()));
    }
    c.send(&p);
    let server_first = match c.recv() {
        Packet::Auth(a) => {
            String::from_utf8(a.properties.authentication_data().expect("data").to_vec())
                .expect("utf8")
        }
        other => panic!("expected AUTH, got {other:?}"),
    };
    let (fin, sig) = client::finish(b"builder", &first, &server_first).expect("finish");
    let mut a = tern::codec::ReasonPacket::new(ReasonCode::ContinueAuthentication);
    a.properties.push(Property::AuthenticationMethod(SCRAM_SHA_256.into()));
    a.properties.push(Property::AuthenticationData(fin.into_bytes().into()));
    c.send(&Packet::Auth(a));
    match c.recv() {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.reason, ReasonCode::Success);
            assert_eq!(ack.properties.authentication_data().as_deref(), Some(sig.as_bytes()));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn acl_reload_applies_new_rules_and_a_broken_file_keeps_the_old() {
    let acl = temp_file("reload.acl", "topic read before/#\n");
    let b = start_with(2, |c| c.auth.acl_file = Some(acl.clone()));
    let broker = b.broker.as_ref().expect("running");
    let (mut c, _) = login(b.addr, V5, "anon-r", None, None);
    assert_eq!(suback(&mut c, "after/x"), ReasonCode::NotAuthorized);
    std::fs::write(&acl, "topic read after/#\n").expect("rewrite");
    assert!(broker.reload(Duration::from_secs(3)), "every shard reloaded");
    assert_eq!(suback(&mut c, "after/x"), ReasonCode::GrantedQoS1, "new rule applies");
    std::fs::write(&acl, "topic reed after/#\n").expect("break");
    assert!(broker.reload(Duration::from_secs(3)));
    assert_eq!(suback(&mut c, "after/y"), ReasonCode::GrantedQoS1, "old rules kept");
}
