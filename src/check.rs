//! `tern check-config FILE`: everything the broker checks at start, without starting it, so a
//! configuration can be tested before a restart or a reload (issue 14).
//!
//! Parses and validates the file (every bound and cross-field rule, listener addresses), reads
//! and parses the password file, the ACL file and the admin token file, loads every TLS
//! listener's certificate chain, private key and CA file into a TLS configuration (so a key that
//! does not match its certificate is caught too), and each TLS bridge's CA and client files. It does not bind the listeners: the broker it
//! is meant to check is usually running on them.

use std::path::Path;

use crate::config::{Config, ConfigError};

/// What a good file configures, for the one-line summary.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// Listeners.
    pub listeners: usize,
    /// Of which TLS (tls or wss).
    pub tls_listeners: usize,
}

/// Checks the configuration file at `path`. The error is `FILE:LINE:COL: key: reason`.
pub fn check_config(path: &Path) -> Result<Summary, ConfigError> {
    let (config, positions) = Config::load_located(path)?;
    let mut tls_listeners = 0;
    for (i, l) in config.listeners.iter().enumerate() {
        let spec = crate::broker::listener_spec(l, config.limits.packet_size_bytes_max as usize);
        let Some(tls) = spec.transport.tls() else { continue };
        tls_listeners += 1;
        if let Err(e) = crate::net::tls::server_config(tls) {
            // Name the key of the file at fault; a mismatch of certificate and key is the
            // certificate's line.
            let field = match &e {
                crate::net::tls::TlsError::Read { path, .. }
                | crate::net::tls::TlsError::Content { path, .. } => {
                    if Some(path) == l.cafile.as_ref() {
                        "cafile"
                    } else if Some(path) == l.keyfile.as_ref() {
                        "keyfile"
                    } else {
                        "certfile"
                    }
                }
                _ => "certfile",
            };
            return Err(positions.error(&format!("listener[{i}].{field}"), e.to_string()));
        }
    }
    for (i, b) in config.bridges.iter().enumerate() {
        if b.cafile.is_some() {
            crate::bridge::client_tls(b)
                .map_err(|e| positions.error(&format!("bridge[{i}].cafile"), e))?;
        }
    }
    Ok(Summary { listeners: config.listeners.len(), tls_listeners })
}
