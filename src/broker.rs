//! Turns a validated [`Config`] into the settings each layer takes, and starts the broker.
//! The only place that knows both the configuration file's shape and the layers' inputs.

use std::time::Duration;

use crate::auth::Security;
use crate::config::{Config, ListenerConfig, QueueOverflow, SlowConsumer, Transport};
use crate::net::{ListenerSpec, TlsSpec, TransportSpec, WsSpec};
use crate::runtime::{Broker, RuntimeOptions, StartError};
use crate::session::{OverflowPolicy, SessionLimits};
use crate::shard::{FlowLimits, ListenerPolicy, ShardConfig, SlowConsumerPolicy};

/// Deliveries buffered for one connection's next write; beyond, they wait in its session queue
/// (where flow control counts them) and reading from the connection pauses at twice this (its
/// own responses). The check is made before a packet is appended, so one packet of any allowed
/// size always fits.
pub const TX_BYTES_MAX: usize = 256 << 10;

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
        park_idle: Duration::from_millis(u64::from(l.park_idle_ms)),
        connecting_max: l.connecting_max as usize,
        memory: std::sync::Arc::new(crate::shard::budget::MemoryBudget::new(
            l.memory_budget_bytes as usize,
        )),
        keepalive_secs_max: l.keepalive_secs_max,
        sessions_max: (l.sessions_max as usize).div_ceil(usize::from(shards)),
        session_expiry_secs_max: l.session_expiry_secs_max,
        topic_alias_max: l.topic_alias_max,
        tx_bytes_max: TX_BYTES_MAX,
        outbox_messages_max: (l.mesh_channel_capacity as usize) * (l.mesh_batch_max as usize),
        flow: FlowLimits {
            high_water_messages: l.flow_high_water_messages as usize,
            low_water_messages: l.flow_low_water_messages as usize,
            hard_cap_messages: l.flow_hard_cap_messages as usize,
            hard_cap_bytes: l.flow_hard_cap_bytes as usize,
            high_water_bytes: l.flow_high_water_bytes as usize,
            qos0_queue_bytes_max: l.flow_qos0_queue_bytes_max as usize,
            slow_consumer_timeout: Duration::from_millis(u64::from(l.slow_consumer_timeout_ms)),
            slow_consumer_policy: match l.slow_consumer_policy {
                SlowConsumer::Disconnect => SlowConsumerPolicy::Disconnect,
                SlowConsumer::Drop => SlowConsumerPolicy::Drop,
            },
        },
        mesh_bytes_max: l.mesh_bytes_max as usize,
        mesh_bytes: std::sync::Arc::new(crate::shard::budget::MeshBytes::new(shards)),
        response_information_prefix: Some(config.broker.response_information_prefix.clone())
            .filter(|p| !p.is_empty()),
        check_payload_format: config.broker.check_payload_format,
        mechanisms: Default::default(),
        security: std::sync::Arc::new(load_security(config)),
        shared: config.shared_subscriptions.clone(),
        password_checks_inline: false,
        failed_logins_per_minute_max: config.auth.failed_logins_per_minute_max,
    }
}

/// The password file and ACL of `config`. They were parsed when the configuration was
/// validated; if they cannot be read now, Tern fails closed: no user name is accepted and the
/// ACL denies everything, and the error is logged.
fn load_security(config: &Config) -> Security {
    crate::auth::load_security(
        config.auth.password_file.as_deref(),
        config.auth.acl_file.as_deref(),
    )
    .unwrap_or_else(|e| {
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
        preempt_timer: Duration::from_micros(u64::from(config.runtime.preempt_timer_us)),
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
        persistence: config.persistence.dir.as_ref().map(|dir| {
            crate::persist::durable::PersistOptions {
                dir: dir.clone(),
                mode: config.persistence.fsync,
                interval: Duration::from_millis(u64::from(config.persistence.fsync_interval_ms)),
                segment_bytes_max: config.persistence.segment_bytes_max,
                pending_records_max: u64::from(config.persistence.pending_records_max),
                progress: crate::persist::durable::new_progress(config.shard_count()),
                clock: crate::persist::durable::clock_now(),
            }
        }),
        metrics_bind: config.admin_bind(),
        stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        admin_rx: Vec::new(),
        auth_files: config.auth.clone(),
        hash_pool: None,
    }
}

/// The runtime's view of one validated listener.
pub fn listener_spec(l: &ListenerConfig, packet_size_bytes_max: usize) -> ListenerSpec {
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

/// A broker started by [`start`], with its admin listener.
pub struct Running {
    /// The broker.
    pub broker: Broker,
    /// The bound address of the admin/metrics HTTP listener, if configured.
    pub admin_addr: Option<std::net::SocketAddr>,
}

/// Starts a broker for `config`, and its admin HTTP listener if configured.
///
/// Before any shard binds, each listener address with a fixed port is probed by binding a
/// socket *without* `SO_REUSEPORT`: the kernel refuses it while any process listens there, so a
/// second broker on the same address stops with [`StartError::AddrInUse`] instead of silently
/// sharing the port (issue 16). The probe is released before the shards bind their
/// `SO_REUSEPORT` sockets. The admin listener is bound (without `SO_REUSEPORT`) before the
/// shards start, so `/readyz` answers 503 until every listener accepts.
pub fn start(config: &Config) -> Result<Running, StartError> {
    for (i, l) in config.listeners.iter().enumerate() {
        probe_bind(l.bind)
            .map_err(|source| in_use(format!("listener[{i}].bind"), l.bind, source))?;
    }
    let mut opts = runtime_options(config);
    let plan = crate::memory_plan::MemoryPlan::for_this_host(config);
    plan.log();
    opts.stats.set_memory_plan(plan.values());
    let stats = std::sync::Arc::clone(&opts.stats);
    let stats_for_bridges = std::sync::Arc::clone(&opts.stats);
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut admin_addr = None;
    if let Some(addr) = config.admin_bind() {
        let key = if config.admin.bind.is_some() { "admin.bind" } else { "broker.metrics_bind" };
        let listener =
            std::net::TcpListener::bind(addr).map_err(|e| in_use(key.to_owned(), addr, e))?;
        admin_addr = listener.local_addr().ok();
        let (senders, receivers) = crate::admin::channels(config.shard_count());
        opts.admin_rx = receivers;
        let token = config.admin.load_token().map_err(|e| StartError::Shard(0, e))?;
        let state = crate::admin::AdminState {
            stats,
            shards: senders,
            token,
            ready: std::sync::Arc::clone(&ready),
            stop: std::sync::Arc::clone(&opts.stop),
            limits: crate::admin::AdminLimits::from_config(&config.admin),
            counters: Default::default(),
        };
        crate::admin::serve(listener, std::sync::Arc::new(state))
            .map_err(|source| StartError::Bind { addr, source })?;
    }
    let stop = std::sync::Arc::clone(&opts.stop);
    let shard_cfg = shard_config(config);
    // What the shards hold (charged), beside what the process holds (resident), in /metrics.
    opts.stats.set_memory_budget(std::sync::Arc::clone(&shard_cfg.memory));
    let broker = Broker::start(opts, shard_cfg).inspect_err(|_| {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    })?;
    start_bridges(config, &broker, &stats_for_bridges)?;
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(Running { broker, admin_addr })
}

/// Starts a thread per `[[bridge]]`, attached to the first TCP listener (its unspecified
/// address replaced by loopback), and registers their counters on the stats board.
fn start_bridges(
    config: &Config,
    broker: &Broker,
    stats: &crate::metrics::StatsBoard,
) -> Result<(), StartError> {
    if config.bridges.is_empty() {
        return Ok(());
    }
    let Some(i) = config.listeners.iter().position(|l| l.transport == Transport::Tcp) else {
        return Err(StartError::Shard(0, "a bridge needs a tcp listener".into()));
    };
    let mut local = broker.local_addrs[i];
    if local.ip().is_unspecified() {
        local.set_ip(match local {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut all = Vec::new();
    for b in &config.bridges {
        let s = std::sync::Arc::new(crate::bridge::BridgeStats {
            name: b.name.clone(),
            ..Default::default()
        });
        crate::bridge::start(b.clone(), local, broker.stop_flag(), std::sync::Arc::clone(&s))
            .map_err(|e| StartError::Shard(0, format!("bridge {}: {e}", b.name)))?;
        all.push(s);
    }
    stats.set_bridges(all);
    Ok(())
}

/// Binds and releases a probe socket on `addr` without `SO_REUSEPORT` (port 0 is not probed:
/// it picks a fresh port). `SO_REUSEADDR` is set, as every server does. Two leftovers of a
/// previous run on the port are not a listener and must not stop a restart:
/// - the connections it closed first wait in TIME_WAIT for a minute, and they were accepted
///   from glommio's listener, which sets no `SO_REUSEADDR`, so the kernel refuses the probe for
///   them too (a restart after a connection storm could not start): when the probe is refused,
///   the port counts as in use only if a socket listens on it (`/proc/net/tcp*`);
/// - the previous process's listener outlives it for a moment (io_uring tears its ring down
///   in the background): the probe is tried again for up to [`PROBE_PATIENCE`] before a
///   listener counts.
pub fn probe_bind(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + PROBE_PATIENCE;
    // Bounded by the deadline.
    loop {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        match sock.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if !listening_on(addr.port()) {
                    tracing::info!(%addr, "the port holds only closed connections: binding");
                    return Ok(());
                }
                if std::time::Instant::now() >= deadline {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// How long [`probe_bind`] waits for a listener on its port to go away (the previous run's,
/// closing) before it reports the port in use.
pub const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a TCP socket of this network namespace listens on `port` (any address): the
/// `LISTEN` rows (state 0A) of `/proc/net/tcp` and `/proc/net/tcp6`. True when neither can be
/// read, so that the refusal stands.
fn listening_on(port: u16) -> bool {
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        read_any = true;
        if listening_in(&text, port) {
            return true;
        }
    }
    !read_any
}

/// [`listening_on`] over the text of one table: each row is `sl local rem st ...`, the local
/// address `HEXADDR:HEXPORT`.
fn listening_in(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|row| {
        let mut cols = row.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) = (cols.nth(1), cols.next(), cols.next())
        else {
            return false;
        };
        let local_port = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        state == "0A" && local_port == Some(port)
    })
}

fn in_use(key: String, addr: std::net::SocketAddr, source: std::io::Error) -> StartError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        StartError::AddrInUse { key, addr }
    } else {
        StartError::Bind { addr, source }
    }
}

#[cfg(test)]
mod tests {
    use super::listening_in;

    /// Rows as the kernel prints them: a listener on 127.0.0.1:27850 (0x6CCA), a connection in
    /// TIME_WAIT (06) from that port, an established one (01) on port 1883 (0x075B).
    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:6CCA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:6CCA 0200007F:9C40 06 00000000:00000000 03:00000C5A 00000000     0        0 0 3 0
   2: 0100007F:075B 0200007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";

    #[test]
    fn a_listener_counts_and_time_wait_does_not() {
        assert!(listening_in(TABLE, 27850), "the LISTEN row");
        assert!(!listening_in(TABLE, 1883), "an established connection is not a listener");
        let only_time_wait: String = TABLE
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        assert!(!listening_in(&only_time_wait, 27850), "TIME_WAIT only");
        assert!(!listening_in("garbage\nnot a table row\n", 27850));
    }
}
