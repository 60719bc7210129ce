//! MQTT 5 enhanced authentication (§4.12) end to end: SCRAM-SHA-256 at CONNECT and
//! re-authentication, and the refusals, on a two-shard broker.

mod common;

use std::sync::Arc;

use common::{start_custom, RawClient};
use tern::codec::{
    Connect, Packet, Properties, Property, ProtocolVersion, ReasonCode, ReasonPacket,
};
use tern::enhanced_auth::{client, ScramCredential, ScramSha256, SCRAM_SHA_256};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn broker() -> common::TestBroker {
    let cred = ScramCredential::derive(b"hunter2", b"fixed-test-salt!", 4096);
    start_custom(
        2,
        |c| c.listeners[0].allow_anonymous = false,
        move |s| {
            let lookup = Arc::new(move |u: &str| (u == "meter").then(|| cred.clone()));
            s.mechanisms.push(Arc::new(ScramSha256::new(lookup)));
        },
    )
}

fn auth_connect(method: &str, data: &str) -> Packet {
    let props: Properties = vec![
        Property::AuthenticationMethod(method.into()),
        Property::AuthenticationData(data.as_bytes().to_vec().into()),
    ]
    .into();
    Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive_secs: 30,
        client_id: "scram-client".into(),
        will: None,
        username: None,
        password: None,
        properties: props,
    }))
}

fn auth(reason: ReasonCode, data: &str) -> Packet {
    let mut a = ReasonPacket::new(reason);
    a.properties.push(Property::AuthenticationMethod(SCRAM_SHA_256.into()));
    a.properties.push(Property::AuthenticationData(data.as_bytes().to_vec().into()));
    Packet::Auth(a)
}

fn data_of(p: &Properties) -> String {
    String::from_utf8(p.authentication_data().expect("Authentication Data").to_vec()).expect("utf8")
}

/// Runs the exchange from `first` and returns the client-final and the expected signature.
fn answer(c: &mut RawClient, first: &str, password: &[u8]) -> (String, String) {
    match c.recv() {
        Packet::Auth(a) => {
            assert_eq!(a.reason, ReasonCode::ContinueAuthentication);
            client::finish(password, first, &data_of(&a.properties)).expect("server-first parses")
        }
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
}

#[test]
fn scram_sha_256_at_connect_and_reauthentication() {
    let b = broker();
    let mut c = RawClient::connect_tcp(b.shard_addrs[0], V5);
    let first = client::first("meter", "cnonce-1");
    c.send(&auth_connect(SCRAM_SHA_256, &first));
    let (fin, signature) = answer(&mut c, &first, b"hunter2");
    c.send(&auth(ReasonCode::ContinueAuthentication, &fin));
    match c.recv() {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert_eq!(a.properties.authentication_method().as_deref(), Some(SCRAM_SHA_256));
            assert_eq!(data_of(&a.properties), signature, "server proves it knows the key");
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // Re-authentication (§4.12.1): AUTH 0x19 … AUTH 0x00.
    let first = client::first("meter", "cnonce-2");
    c.send(&auth(ReasonCode::ReAuthenticate, &first));
    let (fin, signature) = answer(&mut c, &first, b"hunter2");
    c.send(&auth(ReasonCode::ContinueAuthentication, &fin));
    match c.recv() {
        Packet::Auth(a) => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert_eq!(data_of(&a.properties), signature);
        }
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
    c.send(&Packet::PingReq);
    assert!(matches!(c.recv(), Packet::PingResp), "still connected");
}

#[test]
fn wrong_password_is_refused_with_0x87() {
    let b = broker();
    let mut c = RawClient::connect_tcp(b.addr, V5);
    let first = client::first("meter", "n");
    c.send(&auth_connect(SCRAM_SHA_256, &first));
    let (fin, _) = answer(&mut c, &first, b"wrong");
    c.send(&auth(ReasonCode::ContinueAuthentication, &fin));
    match c.recv() {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn unknown_method_is_refused_with_0x8c() {
    // §3.2.2.2: Bad authentication method.
    let b = broker();
    let mut c = RawClient::connect_tcp(b.addr, V5);
    c.send(&auth_connect("KERBEROS", "x"));
    match c.recv() {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::BadAuthenticationMethod),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn anonymous_refused_when_disabled_and_reauth_without_method_is_a_protocol_error() {
    let b = broker();
    let mut c = RawClient::connect_tcp(b.addr, V5);
    c.send(&common::connect(V5, "anon", true, 30));
    match c.recv() {
        Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
