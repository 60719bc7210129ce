//! TLS listeners: builds the rustls `ServerConfig` from PEM files (certificate chain, key, and
//! the CA for client certificates), and reads the client certificate's subject CN for
//! `use_identity_as_username`.
//!
//! The stream itself is futures-rustls over glommio's `TcpStream`. Reloading (SIGHUP) is
//! building a new config with [`server_config`] and swapping the `Arc` each shard hands to new
//! connections; connections already up keep the config they started with.
//!
//! Memory: rustls keeps a 4 KiB receive buffer per connection even while idle, on top of its
//! connection state; see the README's memory table. (Driving rustls' unbuffered API from the
//! shard's scratch buffer would remove that; not done yet.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Largest PEM file read, so a wrong path (a log, a device) cannot eat memory.
const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// What a TLS listener is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSpec {
    /// PEM certificate chain, leaf first.
    pub certfile: PathBuf,
    /// PEM private key of the leaf.
    pub keyfile: PathBuf,
    /// PEM CA certificates client certificates must chain to; `None`: none are requested.
    pub cafile: Option<PathBuf>,
    /// Refuse clients without a valid certificate.
    pub require_certificate: bool,
    /// The certificate's subject CN replaces the CONNECT user name.
    pub use_identity_as_username: bool,
}

/// Why a TLS configuration could not be built. Names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not what it should be (no certificate, bad PEM, larger than 1 MiB, ...).
    #[error("{}: {reason}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("{certfile} with {keyfile}: {reason}")]
    Config {
        /// The certificate file, for the message.
        certfile: String,
        /// The key file, for the message.
        keyfile: String,
        /// rustls' reason.
        reason: String,
    },
}

/// Builds the server configuration for `spec`: TLS 1.3 and 1.2 with the ring provider, the
/// certificate chain and key, and client certificate verification when `cafile` is set.
pub fn server_config(spec: &TlsSpec) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(&spec.certfile)?;
    let key_pem = read_pem_file(&spec.keyfile)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Content {
        path: spec.keyfile.clone(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |reason: String| TlsError::Config {
        certfile: spec.certfile.display().to_string(),
        keyfile: spec.keyfile.display().to_string(),
        reason,
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config_error(e.to_string()))?;
    let builder = match &spec.cafile {
        None => builder.with_no_client_auth(),
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(cafile)? {
                roots.add(cert).map_err(|e| TlsError::Content {
                    path: cafile.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if spec.require_certificate { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(|e| TlsError::Content {
                path: cafile.clone(),
                reason: format!("cannot verify client certificates with it: {e}"),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| config_error(e.to_string()))?;
    Ok(Arc::new(config))
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_error = |source| TlsError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        let reason = format!("larger than {PEM_FILE_BYTES_MAX} bytes");
        return Err(TlsError::Content { path: path.to_owned(), reason });
    }
    Ok(bytes)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem_file(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| TlsError::Content {
        path: path.to_owned(),
        reason: format!("bad PEM: {e}"),
    })?;
    if certs.is_empty() {
        let reason = "no CERTIFICATE block".to_owned();
        return Err(TlsError::Content { path: path.to_owned(), reason });
    }
    Ok(certs)
}

/// The subject common name (OID 2.5.4.3) of a DER certificate: the first one, as Mosquitto
/// takes it. `None` when the DER is not a certificate, or it has no CN, or the CN is not a
/// UTF8String, PrintableString, IA5String or (ASCII-only) TeletexString, or is empty or holds
/// U+0000.
///
/// rustls has already verified the certificate; the DER is still parsed by `x509-cert`, which
/// checks every length, rather than trusted.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    use x509_cert::der::{Decode, Tag, Tagged};
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    let atv = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == CN)?;
    let text = match atv.value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => atv.value.value(),
        Tag::TeletexString if atv.value.value().is_ascii() => atv.value.value(),
        _ => return None,
    };
    let s = std::str::from_utf8(text).ok()?;
    (!s.is_empty() && !s.contains('\0')).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_generated_certificates() {
        let key = rcgen::KeyPair::generate().expect("key");
        for (cn, want) in [("device-42", Some("device-42")), ("", None)] {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            // rcgen starts with a default CN; start from an empty subject.
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(rcgen::DnType::OrganizationName, "Org first");
            if !cn.is_empty() {
                params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            }
            params.distinguished_name.push(rcgen::DnType::CountryName, "NZ");
            let cert = params.self_signed(&key).expect("cert");
            assert_eq!(subject_common_name(cert.der()).as_deref(), want, "cn {cn:?}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x00]), None);
        assert_eq!(subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_common_name(&[0x30, 0x80]), None); // indefinite length is not DER
    }
}
