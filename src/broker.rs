//! Turns a validated [`Config`] into the settings each layer takes, and starts the broker.
//! The only place that knows both the configuration file's shape and the layers' inputs.

use std::time::Duration;

use crate::auth::Security;
use crate::config::{Config, ListenerConfig, QueueOverflow, Transport};
use crate::net::{ListenerSpec, TlsSpec, TransportSpec, WsSpec};
use crate::runtime::{Broker, RuntimeOptions, StartError};
use crate::session::{OverflowPolicy, SessionLimits};
use crate::shard::{ListenerPolicy, ShardConfig};

/// Output buffered for one connection before QoS 0 deliveries to it are dropped and reading
/// from it pauses. The check is made before a packet is appended, so one packet of any allowed
/// size always fits. Measured on this machine (loadtest/README.md): 64 KiB made a 1→8 QoS 0
/// fan-out drop 99 % of deliveries whenever a subscriber lagged for a moment (63 k msg/s out),
/// 2 MiB let a 100-subscriber flood queue seconds of messages (p50 9 s); 1 MiB keeps bursts
/// and bounds a slow subscriber's backlog to about a second of its traffic.
const TX_BYTES_MAX: usize = 1 << 20;

/// The shard settings for `config`.
pub fn shard_config(config: &Config) -> ShardConfig {
    let l = &config.limits;
    let shards = config.shard_count() as u16;
    ShardConfig {
        shards,
        listeners: config
            .listeners
            .iter()
            .map(|x| ListenerPolicy {
                allow_anonymous: x.allow_anonymous,
                // The listener bound is per process; each shard takes its share (rounded up).
                connections_max: (x.connections_max as usize).div_ceil(usize::from(shards)),
                redirect: x.redirect.as_ref().map(|r| crate::shard::Redirect {
                    reference: r.reference.clone(),
                    permanent: r.permanent,
                }),
            })
            .collect(),
        packet_size_bytes_max: l.packet_size_bytes_max as usize,
        preauth_packet_bytes_max: l.preauth_packet_bytes_max.min(l.packet_size_bytes_max) as usize,
        user_properties_max: l.user_properties_max as usize,
        user_property_bytes_max: l.user_property_bytes_max as usize,
        session: SessionLimits {
            inflight_max: l.inflight_max,
            queue_messages_max: l.session_queue_messages_max as usize,
            queue_bytes_max: l.session_queue_bytes_max as usize,
            overflow: match l.queue_overflow {
                QueueOverflow::DropOldest => OverflowPolicy::DropOldest,
                QueueOverflow::DropNewest => OverflowPolicy::DropNewest,
            },
        },
        retained_messages_max: l.retained_messages_max as usize,
        retained_bytes_max: l.retained_bytes_max as usize,
        topic_levels_max: usize::from(l.topic_levels_max),
        topic_bytes_max: usize::from(l.topic_bytes_max),
        client_id_bytes_max: usize::from(l.client_id_bytes_max),
        subscriptions_per_client_max: l.subscriptions_per_client_max as usize,
        connect_timeout: Duration::from_secs(u64::from(l.connect_timeout_secs)),
        write_timeout: Duration::from_secs(u64::from(l.write_timeout_secs)),
        memory: std::sync::Arc::new(crate::shard::budget::MemoryBudget::new(
            l.memory_budget_bytes as usize,
        )),
        keepalive_secs_max: l.keepalive_secs_max,
        sessions_max: (l.sessions_max as usize).div_ceil(usize::from(shards)),
        session_expiry_secs_max: l.session_expiry_secs_max,
        topic_alias_max: l.topic_alias_max,
        tx_bytes_max: TX_BYTES_MAX,
        outbox_messages_max: (l.mesh_channel_capacity as usize) * (l.mesh_batch_max as usize),
        mesh_bytes_max: l.mesh_bytes_max as usize,
        mesh_bytes: std::sync::Arc::new(crate::shard::budget::MeshBytes::new(shards)),
        response_information_prefix: Some(config.broker.response_information_prefix.clone())
            .filter(|p| !p.is_empty()),
        check_payload_format: config.broker.check_payload_format,
        mechanisms: Default::default(),
        security: std::sync::Arc::new(load_security(config)),
        auth_files: config.auth.clone(),
        hash_pool: None,
        failed_logins_per_minute_max: config.auth.failed_logins_per_minute_max,
    }
}

/// The password file and ACL of `config`. They were parsed when the configuration was
/// validated; if they cannot be read now, Tern fails closed: no user name is accepted and the
/// ACL denies everything, and the error is logged.
fn load_security(config: &Config) -> Security {
    Security::load(&config.auth).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot load auth files: denying every client until reload");
        Security {
            passwords: Some(std::sync::Arc::new(crate::auth::PasswordDb::new())),
            acl: Some(crate::auth::Acl::deny_all()),
        }
    })
}

/// The runtime settings for `config`.
pub fn runtime_options(config: &Config) -> RuntimeOptions {
    RuntimeOptions {
        io_memory_bytes: config.runtime.io_memory_bytes,
        ring_depth: config.runtime.ring_depth,
        spin_before_park: config.runtime.spin_before_park().unwrap_or(Duration::ZERO),
        pin_cores: config.runtime.pin_cores,
        mesh_channel_capacity: config.limits.mesh_channel_capacity as usize,
        mesh_batch_max: config.limits.mesh_batch_max as usize,
        listeners: config
            .listeners
            .iter()
            .map(|l| listener_spec(l, config.limits.packet_size_bytes_max as usize))
            .collect(),
        handshake_timeout: Duration::from_secs(u64::from(config.limits.connect_timeout_secs)),
        shard_ports: false,
        stats: std::sync::Arc::new(crate::metrics::StatsBoard::new(config.shard_count())),
        sys_interval: Duration::from_secs(u64::from(config.broker.sys_interval_secs)),
        metrics_bind: config.broker.metrics_bind,
    }
}

/// The runtime's view of one validated listener.
fn listener_spec(l: &ListenerConfig, packet_size_bytes_max: usize) -> ListenerSpec {
    let tls = || TlsSpec {
        // Validation guarantees both files for TLS transports; an empty path would fail to
        // open at start with the file named, never be silently accepted.
        certfile: l.certfile.clone().unwrap_or_default(),
        keyfile: l.keyfile.clone().unwrap_or_default(),
        cafile: l.cafile.clone(),
        require_certificate: l.require_certificate,
        use_identity_as_username: l.use_identity_as_username,
    };
    // A maximum-size packet fits in one frame: packet bytes plus the 14-byte frame header.
    let ws = || WsSpec { path: l.ws_path.clone(), frame_bytes_max: packet_size_bytes_max + 14 };
    let transport = match l.transport {
        Transport::Tls => TransportSpec::Tls(tls()),
        Transport::Ws => TransportSpec::Ws(ws()),
        Transport::Wss => TransportSpec::Wss(tls(), ws()),
        Transport::Tcp => TransportSpec::Tcp,
    };
    ListenerSpec { addr: l.bind, transport }
}

/// Starts a broker for `config`, and its metrics endpoint if configured.
pub fn start(config: &Config) -> Result<Broker, StartError> {
    let opts = runtime_options(config);
    let stats = std::sync::Arc::clone(&opts.stats);
    let broker = Broker::start(opts, shard_config(config))?;
    if let Some(addr) = config.broker.metrics_bind {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| StartError::Bind { addr, source })?;
        crate::metrics::serve_http(listener, stats, broker.stop_flag())
            .map_err(|source| StartError::Bind { addr, source })?;
    }
    Ok(broker)
}
