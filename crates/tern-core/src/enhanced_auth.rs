//! MQTT 5 enhanced authentication (§4.12): a pluggable mechanism interface and SCRAM-SHA-256
//! (RFC 5802, RFC 7677) over the password store. No IO: the shard feeds the client's
//! Authentication Data in and sends what comes out in AUTH or CONNACK.
//!
//! Flow for SCRAM-SHA-256 (method name `SCRAM-SHA-256`):
//! CONNECT(data = client-first) → AUTH 0x18(server-first) → AUTH 0x18(client-final) →
//! CONNACK 0x00(server-final). Re-authentication runs the same exchange starting with
//! AUTH 0x19 and ending with AUTH 0x00.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The SCRAM-SHA-256 method name on the wire.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Iterations used for new SCRAM credentials (RFC 7677 asks for at least 4096).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// Largest SCRAM-SHA-256 iteration count accepted in a file: 600 000, OWASP's recommendation for
/// PBKDF2-HMAC-SHA256 (2023). A SCRAM exchange never derives a key on the broker; this bounds
/// the check of a plain CONNECT password against a `$scram-sha-256$` entry.
pub const SCRAM_ITERATIONS_MAX: u32 = 600_000;

/// Why an exchange failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The client's message is not what the mechanism expects.
    #[error("malformed authentication data: {0}")]
    Malformed(&'static str),
    /// Unknown user or wrong proof; deliberately the same error for both.
    #[error("authentication failed")]
    Failed,
}

/// What a step of an exchange produced.
pub enum Step {
    /// Send this data to the client (AUTH 0x18) and wait for its answer.
    Continue(Vec<u8>, Box<dyn Exchange>),
    /// Authenticated as `username`; send `data` with the success (CONNACK or AUTH 0x00).
    Success {
        /// The authenticated user name.
        username: String,
        /// Final data for the client.
        data: Vec<u8>,
    },
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Continue(d, _) => write!(f, "Continue({} bytes)", d.len()),
            Step::Success { username, .. } => write!(f, "Success({username})"),
        }
    }
}

/// An exchange in progress, owned by one connection.
pub trait Exchange {
    /// The client's next Authentication Data.
    fn step(self: Box<Self>, data: &[u8]) -> Result<Step, AuthError>;
}

/// An authentication method the broker offers.
pub trait Mechanism: Send + Sync {
    /// The Authentication Method name.
    fn name(&self) -> &str;
    /// Starts an exchange with the client's first Authentication Data.
    fn start(&self, data: &[u8]) -> Result<Step, AuthError>;
}

/// The mechanisms a listener offers, by name.
#[derive(Clone, Default)]
pub struct Mechanisms(Vec<Arc<dyn Mechanism>>);

impl fmt::Debug for Mechanisms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|m| m.name())).finish()
    }
}

impl Mechanisms {
    /// Adds a mechanism.
    pub fn push(&mut self, m: Arc<dyn Mechanism>) {
        self.0.push(m);
    }

    /// The mechanism called `name`.
    pub fn find(&self, name: &str) -> Option<&Arc<dyn Mechanism>> {
        self.0.iter().find(|m| m.name() == name)
    }
}

/// What the server keeps for one SCRAM-SHA-256 user (RFC 5802 §3): never the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredential {
    /// Salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("invariant: HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

impl ScramCredential {
    /// Derives the credential for `password` (RFC 5802 §3).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// The password-file form: `$scram-sha-256$<iterations>$<salt>$<stored key>$<server key>`
    /// (standard base64).
    pub fn to_hash_string(&self) -> String {
        format!(
            "$scram-sha-256${}${}${}${}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Parses [`to_hash_string`](Self::to_hash_string)'s form.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("$scram-sha-256$")?;
        let mut parts = rest.split('$');
        let iterations: u32 = parts.next()?.parse().ok().filter(|i| *i >= 1)?;
        let salt = B64.decode(parts.next()?).ok().filter(|s| !s.is_empty())?;
        let stored_key = B64.decode(parts.next()?).ok()?.try_into().ok()?;
        let server_key = B64.decode(parts.next()?).ok()?.try_into().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self { salt, iterations, stored_key, server_key })
    }

    /// Checks a plain password against the credential (for CONNECT user name/password).
    pub fn verify_password(&self, password: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let other = Self::derive(password, &self.salt, self.iterations);
        other.stored_key.ct_eq(&self.stored_key).into()
    }
}

/// Looks up a user's SCRAM credential.
pub type CredentialLookup = Arc<dyn Fn(&str) -> Option<ScramCredential> + Send + Sync>;

/// SCRAM-SHA-256 over a credential store.
pub struct ScramSha256 {
    lookup: CredentialLookup,
    /// Server nonce source; fixed only in tests.
    nonce: Arc<dyn Fn() -> String + Send + Sync>,
}

impl ScramSha256 {
    /// The mechanism over `lookup`, with random server nonces.
    pub fn new(lookup: CredentialLookup) -> Self {
        Self { lookup, nonce: Arc::new(random_nonce) }
    }
}

impl ScramSha256 {
    /// The mechanism over `lookup` with a fixed server nonce, for the fuzz body
    /// (`tern::fuzzing::scram`): deterministic runs, no OS randomness per input.
    #[doc(hidden)]
    pub fn for_fuzzing(lookup: CredentialLookup) -> Self {
        Self { lookup, nonce: Arc::new(|| "fuzz-server-nonce".into()) }
    }
}

fn random_nonce() -> String {
    let mut raw = [0u8; 18];
    // A failing OS RNG leaves zeros: the exchange still fails safe only if the proof does not
    // match, so refuse rather than run with a predictable nonce.
    if getrandom::getrandom(&mut raw).is_err() {
        return String::new();
    }
    B64.encode(raw)
}

/// The credential shown for a user name that does not exist. Its salt is an HMAC of the name
/// under a random key drawn once per process ([`server_secret`]), so it is stable for a name
/// (asking twice gives the same salt, as for a real user) but tells nothing: a salt derived
/// from the name alone (as before issue 9) let anyone compute it and so tell unknown users
/// from real ones. The keys are HMACs too: no key derivation runs for an unknown user, and
/// none runs for a known one either (the stored credential is used), so timing does not differ.
fn decoy_credential(user: &str) -> ScramCredential {
    let key = server_secret();
    let tagged = |tag: &[u8]| {
        let mut m = HmacSha256::new_from_slice(key).expect("invariant: HMAC takes any key length");
        m.update(tag);
        m.update(user.as_bytes());
        <[u8; 32]>::from(m.finalize().into_bytes())
    };
    ScramCredential {
        // 16 bytes, the length `tern passwd` writes for real SCRAM credentials.
        salt: tagged(b"tern scram decoy salt\0")[..16].to_vec(),
        iterations: SCRAM_ITERATIONS,
        stored_key: tagged(b"tern scram decoy stored key\0"),
        server_key: tagged(b"tern scram decoy server key\0"),
    }
}

/// A random 32-byte key drawn once per process, for [`decoy_credential`]. If the OS RNG fails,
/// the key falls back to the std hasher's random keys (seeded from the OS once per process and
/// varied per instance): weaker, but still unknown to a client, and no panic. No clock: the
/// core reads none.
fn server_secret() -> &'static [u8; 32] {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        let mut key = [0u8; 32];
        if getrandom::getrandom(&mut key).is_err() {
            use std::hash::{BuildHasher, Hasher};
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(i);
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        key
    })
}

/// Splits `a=..,b=..` into attribute values, in order. An attribute name is one ASCII letter
/// (RFC 5802 §5.1); a part with any other name is skipped. The split is by `str` methods only,
/// never by byte offset, so no input can cut a multi-byte character.
fn attrs(msg: &str) -> Vec<(char, &str)> {
    msg.split(',')
        .filter_map(|p| {
            let (name, value) = p.split_once('=')?;
            let mut c = name.chars();
            let k = c.next().filter(char::is_ascii_alphabetic)?;
            c.next().is_none().then_some((k, value))
        })
        .collect()
}

/// SASLprep is not applied: user names are compared as sent (`=2C` and `=3D` decoded).
fn decode_saslname(s: &str) -> Result<String, AuthError> {
    let out = s.replace("=2C", ",").replace("=3D", "=");
    if out.contains('=') {
        return Err(AuthError::Malformed("bad escape in user name"));
    }
    Ok(out)
}

impl Mechanism for ScramSha256 {
    fn name(&self) -> &str {
        SCRAM_SHA_256
    }

    fn start(&self, data: &[u8]) -> Result<Step, AuthError> {
        let msg = std::str::from_utf8(data).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        // gs2-header: no channel binding ("n,,"); "y" or "p" are refused.
        let bare = msg.strip_prefix("n,,").ok_or(AuthError::Malformed("gs2 header must be n,,"))?;
        let a = attrs(bare);
        let user = match a.first() {
            Some(('n', u)) => decode_saslname(u)?,
            _ => return Err(AuthError::Malformed("missing user name")),
        };
        let client_nonce = match a.get(1) {
            Some(('r', r)) if !r.is_empty() => *r,
            _ => return Err(AuthError::Malformed("missing client nonce")),
        };
        let server_part = (self.nonce)();
        if server_part.is_empty() {
            return Err(AuthError::Failed);
        }
        // Unknown users get a made-up credential and fail at the proof, like known ones with
        // a wrong password: the exchange does not reveal which user names exist.
        let (cred, known) = match (self.lookup)(&user) {
            Some(c) => (c, true),
            None => (decoy_credential(&user), false),
        };
        let nonce = format!("{client_nonce}{server_part}");
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&cred.salt), cred.iterations);
        let ex = ScramExchange {
            user,
            known,
            cred,
            nonce,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
        };
        Ok(Step::Continue(server_first.into_bytes(), Box::new(ex)))
    }
}

struct ScramExchange {
    user: String,
    known: bool,
    cred: ScramCredential,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl Exchange for ScramExchange {
    fn step(self: Box<Self>, data: &[u8]) -> Result<Step, AuthError> {
        use subtle::ConstantTimeEq;
        let msg = std::str::from_utf8(data).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (without_proof, proof_b64) =
            msg.rsplit_once(",p=").ok_or(AuthError::Malformed("missing proof"))?;
        let a = attrs(without_proof);
        if a.first() != Some(&('c', "biws")) {
            return Err(AuthError::Malformed("channel binding must be biws"));
        }
        if a.get(1) != Some(&('r', self.nonce.as_str())) {
            return Err(AuthError::Failed);
        }
        let proof = B64.decode(proof_b64).map_err(|_| AuthError::Malformed("proof not base64"))?;
        if proof.len() != 32 {
            return Err(AuthError::Malformed("proof length"));
        }
        let auth_message =
            format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac(&self.cred.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let ok: bool = stored.ct_eq(&self.cred.stored_key).into();
        if !ok || !self.known {
            return Err(AuthError::Failed);
        }
        let server_signature = hmac(&self.cred.server_key, auth_message.as_bytes());
        let data = format!("v={}", B64.encode(server_signature)).into_bytes();
        Ok(Step::Success { username: self.user, data })
    }
}

/// Client side of SCRAM-SHA-256, for tests and the load harness: builds the client messages.
pub mod client {
    use super::*;

    /// The client-first message for `user` with nonce `cnonce`.
    pub fn first(user: &str, cnonce: &str) -> String {
        format!("n,,n={},r={cnonce}", user.replace('=', "=3D").replace(',', "=2C"))
    }

    /// The client-final message, and the server signature the client expects back. The
    /// server's iteration count is refused above
    /// [`SCRAM_ITERATIONS_MAX`]: a server must not
    /// make its client spin (the `scram` fuzz target found `i=40955095` taking minutes).
    pub fn finish(
        password: &[u8],
        client_first: &str,
        server_first: &str,
    ) -> Result<(String, String), AuthError> {
        let max = SCRAM_ITERATIONS_MAX;
        finish_bounded(password, client_first, server_first, max)
    }

    /// [`finish`] refusing more than `iterations_max` iterations.
    pub fn finish_bounded(
        password: &[u8],
        client_first: &str,
        server_first: &str,
        iterations_max: u32,
    ) -> Result<(String, String), AuthError> {
        let a = attrs(server_first);
        let nonce = match a.first() {
            Some(('r', r)) => *r,
            _ => return Err(AuthError::Malformed("server nonce")),
        };
        let salt = match a.get(1) {
            Some(('s', s)) => B64.decode(s).map_err(|_| AuthError::Malformed("salt"))?,
            _ => return Err(AuthError::Malformed("salt")),
        };
        let iterations: u32 = match a.get(2) {
            Some(('i', i)) => i.parse().map_err(|_| AuthError::Malformed("iterations"))?,
            _ => return Err(AuthError::Malformed("iterations")),
        };
        if !(1..=iterations_max).contains(&iterations) {
            return Err(AuthError::Malformed("iterations out of range"));
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let bare = client_first.strip_prefix("n,,").unwrap_or(client_first);
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        let server_key = hmac(&salted, b"Server Key");
        let server_signature = hmac(&server_key, auth_message.as_bytes());
        Ok((
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(server_signature)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3 test vector: user "user", password "pencil".
    fn rfc_mechanism() -> ScramSha256 {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("vector");
        let cred = ScramCredential::derive(b"pencil", &salt, 4096);
        ScramSha256 {
            lookup: Arc::new(move |u| (u == "user").then(|| cred.clone())),
            nonce: Arc::new(|| "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into()),
        }
    }

    #[test]
    fn rfc_7677_exchange() {
        let m = rfc_mechanism();
        let Ok(Step::Continue(server_first, ex)) = m.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        else {
            panic!("continue expected")
        };
        assert_eq!(
            String::from_utf8(server_first).expect("utf8"),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        match ex.step(client_final) {
            Ok(Step::Success { username, data }) => {
                assert_eq!(username, "user");
                assert_eq!(data, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
            }
            other => panic!("success expected, got {other:?}"),
        }
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_alike() {
        let m = rfc_mechanism();
        for (user, password) in [("user", b"wrong".as_slice()), ("nobody", b"pencil".as_slice())] {
            let first = client::first(user, "abc");
            let Ok(Step::Continue(sf, ex)) = m.start(first.as_bytes()) else { panic!("continue") };
            let sf = String::from_utf8(sf).expect("utf8");
            let (fin, _) = client::finish(password, &first, &sf).expect("client final");
            assert_eq!(ex.step(fin.as_bytes()).err(), Some(AuthError::Failed), "{user}");
        }
    }

    #[test]
    fn client_helper_round_trips_and_credential_string_parses() {
        let cred = ScramCredential::derive(b"s3cret", b"0123456789abcdef", 4096);
        assert_eq!(ScramCredential::parse(&cred.to_hash_string()), Some(cred.clone()));
        assert!(cred.verify_password(b"s3cret"));
        assert!(!cred.verify_password(b"s3cre"));
        let m = ScramSha256::new(Arc::new(move |u| (u == "dev,1").then(|| cred.clone())));
        let first = client::first("dev,1", "nonce123");
        let Ok(Step::Continue(sf, ex)) = m.start(first.as_bytes()) else { panic!("continue") };
        let sf = String::from_utf8(sf).expect("utf8");
        let (fin, expected) = client::finish(b"s3cret", &first, &sf).expect("client final");
        match ex.step(fin.as_bytes()) {
            Ok(Step::Success { username, data }) => {
                assert_eq!(username, "dev,1");
                assert_eq!(data, expected.into_bytes());
            }
            other => panic!("success expected, got {other:?}"),
        }
    }

    /// Found by the `scram` fuzz target: a server-first message with a huge iteration count
    /// made the client helper run PBKDF2 for minutes.
    #[test]
    fn client_refuses_a_huge_iteration_count() {
        let sf = "r=acdAA,s=caaaaaaa,i=40955095";
        let e = client::finish(b"pw", "n,,n=u,r=acd", sf).expect_err("refused");
        assert_eq!(e, AuthError::Malformed("iterations out of range"));
        assert!(client::finish(b"pw", "n,,n=u,r=acd", "r=acdAA,s=caaaaaaa,i=0").is_err());
    }

    #[test]
    fn malformed_messages_are_refused() {
        let m = rfc_mechanism();
        assert!(matches!(m.start(b"y,,n=user,r=x"), Err(AuthError::Malformed(_))));
        assert!(matches!(m.start(b"n,,r=x"), Err(AuthError::Malformed(_))));
        assert!(matches!(m.start(&[0xff]), Err(AuthError::Malformed(_))));
        assert_eq!(ScramCredential::parse("$scram-sha-256$0$AA==$AA==$AA=="), None);
    }

    /// Issue 9: an unknown user's salt is not derivable from the name (it was the name itself),
    /// is stable across attempts (as a real user's is), and differs between names.
    #[test]
    fn unknown_user_salt_does_not_reveal_that_the_user_is_unknown() {
        let m = ScramSha256::new(Arc::new(|_| None));
        let salt_of = |user: &str| -> String {
            let first = client::first(user, "n0nce");
            let Ok(Step::Continue(sf, _)) = m.start(first.as_bytes()) else { panic!("continue") };
            let sf = String::from_utf8(sf).expect("utf8");
            let salt = attrs(&sf).iter().find(|(k, _)| *k == 's').map(|(_, v)| v.to_string());
            salt.expect("server-first has a salt")
        };
        let a = salt_of("mallory");
        assert_eq!(a, salt_of("mallory"), "stable for one name");
        assert_ne!(a, salt_of("mallory2"), "differs between names");
        assert_ne!(a, B64.encode("mallory"), "not the name itself (the old salt)");
        let decoded = B64.decode(&a).expect("base64");
        assert_eq!(decoded.len(), 16, "looks like a real salt");
        assert!(!decoded.windows(7).any(|w| w == b"mallory"), "the name does not show through");
    }

    /// Issue 9 regression: `n,,€=x` once sliced the string inside the three-byte '€' and
    /// panicked, which `panic = "abort"` turned into an outage of the whole broker.
    #[test]
    fn multibyte_attribute_names_are_refused_without_panic() {
        let m = rfc_mechanism();
        for data in ["n,,€=x", "n,,n=u,€=x", "n,,é", "n,,=x,r=y", "n,,nn=x,r=y", "n,,€"] {
            assert!(matches!(m.start(data.as_bytes()), Err(AuthError::Malformed(_))), "{data}");
        }
        // Multi-byte characters inside values are fine.
        assert!(matches!(m.start("n,,n=ü,r=ñ€".as_bytes()), Ok(Step::Continue(..))));
        assert_eq!(attrs("n=ü,r=ñ€,€=x,ab=c"), vec![('n', "ü"), ('r', "ñ€")]);
        let ex = match m.start(b"n,,n=user,r=abc") {
            Ok(Step::Continue(_, ex)) => ex,
            other => panic!("continue expected, got {other:?}"),
        };
        assert!(ex.step("€=x,p=AA==".as_bytes()).is_err());
    }
}
