//! The glommio bootstrap: one executor thread per shard, pinned to a core when the host has one
//! for each shard, the cross-shard mesh, and graceful shutdown.
//!
//! io_uring settings are explicit ([`RuntimeOptions`]): glommio's defaults reserve 10 MiB of
//! locked memory per executor for file DMA, which Tern does not use, and would not start under
//! the common 8 MiB `ulimit -l` of a non-root user.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::net::TcpListener;
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ResourceType};

use rustls::ServerConfig;

use crate::metrics::StatsBoard;
use crate::net::{
    accept_loop, parker, tls, ListenerCtx, ListenerSpec, Notify, ShardIo, SCRATCH_BYTES,
};

/// The two mesh lanes between every pair of shards: data (publishes) and control (everything
/// else, flow control included), so control never waits behind data.
#[derive(Clone)]
struct Meshes {
    data: MeshBuilder<Batch, Full>,
    control: MeshBuilder<Batch, Full>,
    /// Emptied data batches on their way back to the shard that sent them.
    spares: Arc<SpareBatches>,
}
use crate::shard::{Shard, ShardConfig, ShardMsg, DEADLINES_PER_TURN};

/// How the executors are built.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// io_uring registered-buffer memory per executor, bytes.
    pub io_memory_bytes: usize,
    /// io_uring ring depth.
    pub ring_depth: usize,
    /// Busy-poll before sleeping; lowers cross-shard latency at the cost of CPU while idle.
    pub spin_before_park: Duration,
    /// Pin each shard to a core when there are enough cores.
    pub pin_cores: bool,
    /// How long a task runs before glommio's `yield_if_needed` yields (fair turns).
    pub preempt_timer: Duration,
    /// Slots in each cross-shard channel (each slot carries a batch).
    pub mesh_channel_capacity: usize,
    /// Messages per batch sent to a peer shard.
    pub mesh_batch_max: usize,
    /// Listeners (address and transport), in listener order.
    pub listeners: Vec<ListenerSpec>,
    /// Time a TLS or WebSocket handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
    /// Also give every shard a listener of its own on an ephemeral port of the first
    /// listener's IP (same policy as listener 0), reported in [`Broker::shard_addrs`]. For tests
    /// that must place a client on a given shard, and for operators who balance by shard.
    pub shard_ports: bool,
    /// Where shards report their counters once a second (read by `$SYS` and `/metrics`).
    pub stats: Arc<StatsBoard>,
    /// Interval of the `$SYS/broker/...` publications (by shard 0).
    pub sys_interval: Duration,
    /// Address of the Prometheus endpoint (`GET /metrics`), if enabled.
    pub metrics_bind: Option<SocketAddr>,
    /// Durable sessions and retained messages (`None`: in memory only).
    pub persistence: Option<crate::persist::durable::PersistOptions>,
    /// The stop flag [`Broker::stop_flag`] returns; shared with the admin HTTP thread.
    pub stop: Arc<AtomicBool>,
    /// Admin API requests, one receiver per shard (indexed by shard id), polled by the shard's
    /// loop every 100 ms. Empty when the admin API is off.
    pub admin_rx: Vec<crossbeam_channel::Receiver<crate::admin::ShardRequest>>,
    /// Where the password file and ACL are read from again on reload (the shards get the
    /// parsed result); also the password workers' settings.
    pub auth_files: crate::config::AuthConfig,
    /// The worker threads that check the passwords the shards queue. `None`:
    /// [`Broker::start`] starts one from `auth_files`.
    pub hash_pool: Option<Arc<crate::auth::HashPool>>,
}

/// A batch of messages from one shard to another.
type Batch = Vec<ShardMsg>;

/// Spare data batches kept per ordered pair of shards.
const SPARE_BATCHES_PER_PAIR: usize = 2;

/// The data lane's vectors, sent back empty by the receiving shard for the sender's next flush
/// instead of one allocated per flush and freed by the other thread (issue 10: at full
/// batches of 64 that saved ~25 ns of the sender's CPU per message in
/// `crates/tern-core/tests/fanout.rs`'s `mesh_batch_vec_fresh_or_reused`). Bounded: at most
/// [`SPARE_BATCHES_PER_PAIR`] per ordered pair, each of at most `mesh_batch_max` messages
/// (`shards^2 x 2 x mesh_batch_max x 184 B` in the worst case, 24 KiB for 2 shards at the
/// default 64); a batch beyond either bound is freed as before.
struct SpareBatches {
    shards: usize,
    batch_max: usize,
    /// By `from * shards + to`.
    pairs: Vec<(crossbeam_channel::Sender<Batch>, crossbeam_channel::Receiver<Batch>)>,
}

impl SpareBatches {
    fn new(shards: usize, batch_max: usize) -> Self {
        let pairs = (0..shards * shards)
            .map(|_| crossbeam_channel::bounded(SPARE_BATCHES_PER_PAIR))
            .collect();
        Self { shards, batch_max, pairs }
    }

    /// An empty batch for `from` to fill for `to`: a spare, or a new one.
    fn take(&self, from: usize, to: usize) -> Batch {
        self.pairs
            .get(from * self.shards + to)
            .and_then(|p| p.1.try_recv().ok())
            .unwrap_or_default()
    }

    /// `batch`, emptied by `to`, goes back to `from` unless the pair has its spares already
    /// or the batch grew past `mesh_batch_max`. Returns `false` when it was freed instead
    /// (`mesh_spare_batches_freed`).
    fn give(&self, from: usize, to: usize, batch: Batch) -> bool {
        debug_assert!(batch.is_empty());
        batch.capacity() <= self.batch_max
            && self.pairs.get(from * self.shards + to).is_some_and(|p| p.0.try_send(batch).is_ok())
    }
}

/// What a shard reports once it serves: its id and its private listener, or why it failed.
type Ready = Result<(u16, Option<SocketAddr>), StartError>;

/// A running broker.
pub struct Broker {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Reload requests: incremented by SIGHUP (see `main.rs`) or [`Broker::reload`]; each
    /// shard polls it with the stop flag and re-reads its listeners' certificate files.
    reload: Arc<AtomicU64>,
    /// The last reload generation each shard has applied, by shard id.
    reloaded: Arc<[AtomicU64]>,
    /// The bound address of each listener (port 0 resolved).
    pub local_addrs: Vec<SocketAddr>,
    /// With [`RuntimeOptions::shard_ports`]: the private listener of each shard, by shard id.
    pub shard_addrs: Vec<SocketAddr>,
    /// The locked data directory, held (and its lock with it) while the broker runs.
    _data_dir: Option<crate::persist::dir::DataDir>,
}

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// Another process already listens on a configured address (found by the probe in
    /// [`crate::broker::start`]). `key` is the configuration key, e.g. `listener[0].bind`.
    #[error("{} = \"{addr}\": address already in use", key_label(key))]
    AddrInUse {
        /// The dotted configuration key of the address.
        key: String,
        /// The address.
        addr: SocketAddr,
    },
    /// An executor could not be created (io_uring setup, locked memory).
    #[error(
        "shard {shard}: cannot create the io_uring executor: {reason}. io_uring needs locked \
         memory (io_memory_bytes plus the rings, about {need_kib} KiB per shard): raise \
         `ulimit -l` (LimitMEMLOCK= in a systemd unit) or lower runtime.io_memory_bytes / \
         runtime.ring_depth; the kernel must be 5.8 or newer"
    )]
    Executor {
        /// Shard index.
        shard: u16,
        /// glommio's error.
        reason: String,
        /// Rough locked-memory need, KiB.
        need_kib: usize,
    },
    /// The data directory cannot be used (locked by another Tern, or unreadable).
    #[error("{0}")]
    DataDir(#[from] crate::persist::dir::DataDirError),
    /// The write-ahead logs cannot be read or repaired.
    #[error("cannot recover the write-ahead log in {dir}: {source}")]
    Recovery {
        /// The data directory.
        dir: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A shard failed during start-up.
    #[error("shard {0} failed to start: {1}")]
    Shard(u16, String),
    /// A TLS listener's certificate, key or CA file is unusable.
    #[error("listener {listener} ({addr}): {source}")]
    Tls {
        /// Listener index.
        listener: usize,
        /// Its address.
        addr: SocketAddr,
        /// What is wrong, naming the file.
        source: tls::TlsError,
    },
}

impl Broker {
    /// Starts `cfg.shards` shards and returns once every listener accepts connections.
    pub fn start(mut opts: RuntimeOptions, mut cfg: ShardConfig) -> Result<Broker, StartError> {
        let n = cfg.shards;
        // The shards queue password checks; the pool runs them off the shard threads.
        cfg.password_checks_inline = false;
        if opts.hash_pool.is_none() {
            // Password checks run here, off the shard threads (see `crate::auth::pool`).
            let a = &opts.auth_files;
            let workers = (a.hash_workers as usize).max(1);
            let pool = crate::auth::HashPool::start(workers, (a.hash_queue_max as usize).max(1), n)
                .map_err(|e| StartError::Shard(0, format!("password check workers: {e}")))?;
            opts.hash_pool = Some(pool);
        }
        assert!(n >= 1, "invariant: config validates shards >= 1");
        assert!(opts.mesh_channel_capacity >= 1 && opts.mesh_batch_max >= 1);
        // Resolve port 0 once, so every shard's SO_REUSEPORT listener shares the same port. The
        // reserving sockets are bound but never listen, so the kernel routes no connection to them.
        // TLS files are read once here so a bad one stops the start with a clear error; the
        // shards share the resulting configurations until a reload.
        let mut tls_configs = Vec::new();
        for (listener, spec) in opts.listeners.iter().enumerate() {
            let config = match spec.transport.tls() {
                None => None,
                Some(t) => Some(tls::server_config(t).map_err(|source| StartError::Tls {
                    listener,
                    addr: spec.addr,
                    source,
                })?),
            };
            tls_configs.push(config);
        }
        let mut reserve = Vec::new();
        let mut addrs = Vec::new();
        for spec in &opts.listeners {
            let addr = spec.addr;
            let sock = reserve_port(addr).map_err(|source| StartError::Bind { addr, source })?;
            let bound = sock.local_addr().ok().and_then(|a| a.as_socket()).ok_or_else(|| {
                StartError::Bind { addr, source: std::io::ErrorKind::Other.into() }
            })?;
            addrs.push(bound);
            reserve.push(sock);
        }
        // Persistence: lock the directory, then recover and replay every shard's log before any
        // shard serves. Each shard takes its part once the mesh has given it its id.
        let (data_dir, restores) = match &opts.persistence {
            None => (None, Vec::new()),
            Some(p) => {
                let dir = crate::persist::dir::DataDir::open(&p.dir)?;
                let restores = crate::persist::durable::recover_all(p, n)
                    .map_err(|source| StartError::Recovery { dir: p.dir.clone(), source })?;
                (Some(dir), restores.into_iter().map(Some).collect())
            }
        };
        let restores = Arc::new(std::sync::Mutex::new(restores));
        let reload = Arc::new(AtomicU64::new(0));
        let reloaded: Arc<[AtomicU64]> = (0..n).map(|_| AtomicU64::new(0)).collect();
        let snapshot = Arc::new(std::sync::Mutex::new(ReloadSnapshot::default()));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let pin = opts.pin_cores && cores.len() >= usize::from(n);
        let stop = Arc::clone(&opts.stop);
        let mesh: Option<Meshes> = (n > 1).then(|| Meshes {
            data: MeshBuilder::full(usize::from(n), opts.mesh_channel_capacity),
            control: MeshBuilder::full(usize::from(n), opts.mesh_channel_capacity),
            spares: Arc::new(SpareBatches::new(usize::from(n), opts.mesh_batch_max)),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
        let mut threads = Vec::new();
        for i in 0..n {
            let core = if pin { Some(cores[usize::from(i)]) } else { None };
            let (opts, cfg, mesh, stop, ready) =
                (opts.clone(), cfg.clone(), mesh.clone(), Arc::clone(&stop), ready_tx.clone());
            let addrs = addrs.clone();
            let tls_configs = tls_configs.clone();
            let restores = Arc::clone(&restores);
            let reload = Reload {
                requested: Arc::clone(&reload),
                applied: Arc::clone(&reloaded),
                snapshot: Arc::clone(&snapshot),
            };
            let handle = std::thread::Builder::new()
                .name(format!("tern-shard-{i}"))
                .spawn(move || {
                    // A pinned shard is bound by glommio itself (`Placement::Fixed`): glommio
                    // honours `spin_before_park` only on an executor it bound to a CPU and
                    // silently drops it otherwise, so pinning with `core_affinity` beside an
                    // `Unbound` executor left `runtime.spin_before_park_us` without effect
                    // (issue 10). Where glommio cannot bind (no CPU topology in /sys), the
                    // thread is pinned the old way and parks without spinning.
                    let builder = |placement| {
                        LocalExecutorBuilder::new(placement)
                            .name(&format!("tern-{i}"))
                            .io_memory(opts.io_memory_bytes)
                            .ring_depth(opts.ring_depth)
                            .spin_before_park(opts.spin_before_park)
                    };
                    let made = match core {
                        Some(core) => builder(Placement::Fixed(core.id)).make().or_else(|e| {
                            tracing::warn!(
                                shard = i,
                                cpu = core.id,
                                error = %e,
                                "glommio cannot bind the shard to its CPU: pinned without \
                                 spinning before park (runtime.spin_before_park_us unused)"
                            );
                            core_affinity::set_for_current(core);
                            builder(Placement::Unbound).make()
                        }),
                        None => builder(Placement::Unbound).make(),
                    };
                    let ex = match made {
                        Ok(ex) => ex,
                        Err(e) => {
                            let need_kib =
                                (opts.io_memory_bytes * 3 + opts.ring_depth * 400) / 1024;
                            let err =
                                StartError::Executor { shard: i, reason: e.to_string(), need_kib };
                            let _ = ready.send(Err(err));
                            return;
                        }
                    };
                    let listeners = Listeners { addrs, tls_configs, restores };
                    ex.run(shard_main(i, opts, cfg, listeners, mesh, stop, reload, ready));
                })
                .map_err(|e| StartError::Shard(i, e.to_string()))?;
            threads.push(handle);
        }
        drop(ready_tx);
        let mut shard_addrs = vec![None; usize::from(n)];
        let mut started = vec![false; usize::from(n)];
        for _ in 0..n {
            match ready_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok((id, addr))) => {
                    shard_addrs[usize::from(id)] = addr;
                    started[usize::from(id)] = true;
                }
                Ok(Err(e)) => {
                    stop.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                Err(_) => {
                    stop.store(true, Ordering::SeqCst);
                    // Names the first shard that has not reported (not always shard 0).
                    let late = started.iter().position(|s| !s).unwrap_or(0) as u16;
                    return Err(StartError::Shard(late, "start-up timed out".into()));
                }
            }
        }
        drop(reserve);
        let shard_addrs = shard_addrs.into_iter().flatten().collect();
        Ok(Broker {
            threads,
            stop,
            reload,
            reloaded,
            local_addrs: addrs,
            shard_addrs,
            _data_dir: data_dir,
        })
    }

    /// The flag that stops the broker when set (signal handlers set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The reload counter: incrementing it makes every shard re-read its TLS certificate files
    /// within about 100 ms (what SIGHUP does; see `main.rs`).
    pub fn reload_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reload)
    }

    /// Asks every shard to re-read its TLS certificate files, password file and ACL, and waits
    /// up to `timeout` until all have done so. Returns whether they all did. New connections
    /// then get the new certificates and every client the new rules; existing connections stay.
    /// A bad file keeps the previous one (the shard logs why).
    pub fn reload(&self, timeout: Duration) -> bool {
        let generation = self.reload.fetch_add(1, Ordering::SeqCst) + 1;
        let deadline = Instant::now() + timeout;
        loop {
            if self.reloaded.iter().all(|g| g.load(Ordering::SeqCst) >= generation) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks every shard to shut down gracefully.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for every shard thread to finish.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// How an address key is named in messages: `listener bind` for any listener (the file line
/// says which one), the dotted key otherwise.
fn key_label(key: &str) -> &str {
    if key.starts_with("listener[") {
        "listener bind"
    } else {
        key
    }
}

/// Binds `addr` once before the shards start, so that a port 0 resolves to one port that every
/// shard's listener then binds with `SO_REUSEPORT`.
fn reserve_port(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As the shards' listeners bind: the port may still hold connections of an earlier run in
    // TIME_WAIT (`broker::probe_bind` has waited out a listener that had not closed yet).
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// The listeners a shard binds: resolved addresses and the TLS configurations built at start,
/// both in listener order.
struct Listeners {
    addrs: Vec<SocketAddr>,
    tls_configs: Vec<Option<Arc<ServerConfig>>>,
    /// What each shard recovered from its log, by shard id (empty without persistence).
    restores: Restores,
}

type Restores = Arc<std::sync::Mutex<Vec<Option<crate::persist::durable::ShardRestore>>>>;

/// Shard `id`'s recovered state, taken once.
fn take_restore(restores: &Restores, id: u16) -> Option<crate::persist::durable::ShardRestore> {
    let mut r = restores.lock().unwrap_or_else(|p| p.into_inner());
    r.get_mut(usize::from(id)).and_then(Option::take)
}

/// The reload counter and where each shard reports the generation it applied.
struct Reload {
    requested: Arc<AtomicU64>,
    applied: Arc<[AtomicU64]>,
    /// The files as the latest reload read them, shared by every shard.
    snapshot: Arc<std::sync::Mutex<ReloadSnapshot>>,
}

/// What one reload read: the password file, the ACL and the TLS files, parsed once for all
/// shards (issue 9: each shard re-read them on its own, so a file caught half-written could
/// apply on some shards only). `None` keeps what is in force: no such files, or they did
/// not parse (logged once).
#[derive(Default)]
struct ReloadSnapshot {
    /// The reload generation this snapshot was read for (0: none yet).
    generation: u64,
    security: Option<Arc<crate::auth::Security>>,
    /// By listener index.
    tls: Vec<Option<Arc<ServerConfig>>>,
}

impl Reload {
    /// The snapshot for `generation`: the first shard to ask reads the files, the others get
    /// the same parsed result.
    fn snapshot(
        &self,
        generation: u64,
        listeners: &[ListenerSpec],
        files: &crate::config::AuthConfig,
    ) -> (Option<Arc<crate::auth::Security>>, Vec<Option<Arc<ServerConfig>>>) {
        // A poisoned lock only means another shard panicked mid-reload; the data is still a
        // whole snapshot (it is replaced in one assignment).
        let mut snap = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if snap.generation < generation {
            *snap = ReloadSnapshot::read(generation, listeners, files);
        }
        (snap.security.clone(), snap.tls.clone())
    }
}

impl ReloadSnapshot {
    fn read(
        generation: u64,
        listeners: &[ListenerSpec],
        files: &crate::config::AuthConfig,
    ) -> Self {
        let security = if files.password_file.is_none() && files.acl_file.is_none() {
            None
        } else {
            match crate::auth::load_security(
                files.password_file.as_deref(),
                files.acl_file.as_deref(),
            ) {
                Ok(s) => {
                    tracing::info!(generation, "password file and ACL reloaded");
                    Some(Arc::new(s))
                }
                Err(e) => {
                    tracing::error!(generation, error = %e, "reload refused; keeping the old files");
                    None
                }
            }
        };
        let tls = listeners
            .iter()
            .enumerate()
            .map(|(listener, spec)| {
                let t = spec.transport.tls()?;
                match tls::server_config(t) {
                    Ok(c) => {
                        tracing::info!(listener, "TLS certificates reloaded");
                        Some(c)
                    }
                    Err(e) => {
                        tracing::error!(listener, error = %e,
                            "TLS reload failed; keeping the previous certificates");
                        None
                    }
                }
            })
            .collect();
        Self { generation, security, tls }
    }
}

/// The life of one shard.
#[allow(clippy::too_many_arguments)] // each is one piece of start-up state, moved in once
async fn shard_main(
    id_hint: u16,
    opts: RuntimeOptions,
    cfg: ShardConfig,
    listeners: Listeners,
    mesh: Option<Meshes>,
    stop: Arc<AtomicBool>,
    reload: Reload,
    ready: mpsc::Sender<Ready>,
) {
    let Listeners { addrs, tls_configs, restores } = listeners;
    let spares = mesh.as_ref().map(|m| Arc::clone(&m.spares));
    let (lanes, control_lanes) = match mesh {
        Some(m) => {
            // glommio numbers the peers of a mesh by executor id, so each shard has the same
            // peer id in both meshes (checked below).
            let joined = awake_while(async {
                match m.data.join().await {
                    Ok(d) => m.control.join().await.map(|c| (d, c)),
                    Err(e) => Err(e),
                }
            })
            .await;
            match joined {
                Ok((d, c)) if d.0.peer_id() == c.0.peer_id() => (Some(d), Some(c)),
                Ok(_) => {
                    let err = StartError::Shard(id_hint, "mesh join: peer ids differ".into());
                    let _ = ready.send(Err(err));
                    return;
                }
                Err(e) => {
                    let _ = ready.send(Err(StartError::Shard(id_hint, format!("mesh join: {e}"))));
                    return;
                }
            }
        }
        None => (None, None),
    };
    // The mesh numbers peers in join order: that number is the shard id everywhere.
    let id = lanes.as_ref().map_or(0, |(s, _)| s.peer_id() as u16);
    let shard = crate::net::ShardCell::new(
        Shard::new(tern_core::ids::ShardId(id), cfg),
        opts.hash_pool.clone(),
    );
    let durable = match (&opts.persistence, take_restore(&restores, id)) {
        (Some(p), Some(r)) => match crate::persist::durable::open_shard(&shard, r, p).await {
            Ok(d) => Some(d),
            Err(e) => {
                let err = StartError::Recovery { dir: p.dir.clone(), source: e };
                let _ = ready.send(Err(err));
                return;
            }
        },
        _ => None,
    };
    // Connection tasks (accept loops and the connections they spawn) run in a task queue whose
    // latency requirement sets glommio's preemption timer while it has work: `yield_if_needed`
    // after each read then yields every `preempt_timer`, so one flooding connection cannot
    // hold the shard. (Set on the executor itself, a sub-millisecond timer stalled the mesh
    // join at start-up under load; a queue's requirement only applies once it runs.)
    let conns = glommio::executor().create_task_queue(
        glommio::Shares::default(),
        glommio::Latency::Matters(opts.preempt_timer),
        "connections",
    );
    // TLS and WebSocket handshakes run in a queue of their own with a tenth of the
    // connections' shares: in a reconnect storm the handshakes' CPU (key exchange, signature)
    // goes to the clients already connected first, and to the storm whenever they have nothing
    // to do (issue 11). An established connection's task is spawned into `conns`.
    let handshakes = glommio::executor().create_task_queue(
        glommio::Shares::Static(crate::net::HANDSHAKE_SHARES),
        glommio::Latency::NotImportant,
        "handshakes",
    );
    let io = Rc::new(ShardIo {
        durable,
        shard,
        scratch: std::cell::RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
        outbox_ready: Default::default(),
        stopping: std::cell::Cell::new(false),
        stop_waiters: Default::default(),
        admission: Default::default(),
        queues: crate::net::Queues { connections: conns, handshakes },
    });
    let mut listeners = Vec::new();
    for addr in &addrs {
        match TcpListener::bind(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                let err =
                    StartError::Bind { addr: *addr, source: std::io::Error::other(e.to_string()) };
                let _ = ready.send(Err(err));
                return;
            }
        }
    }
    let ctxs: Vec<Rc<ListenerCtx>> = opts
        .listeners
        .iter()
        .zip(tls_configs)
        .enumerate()
        .map(|(index, (spec, tls))| {
            let ctx = ListenerCtx::new(index, spec.transport.clone(), tls, opts.handshake_timeout);
            Rc::new(ctx)
        })
        .collect();
    let spawn_conns = |fut| glommio::spawn_local_into(fut, conns);
    let mut private = None;
    if opts.shard_ports {
        let ip = addrs.first().map_or([127, 0, 0, 1].into(), |a| a.ip());
        match TcpListener::bind(SocketAddr::new(ip, 0)) {
            Ok(l) => {
                private = l.local_addr().ok();
                // Same transport and policy as listener 0.
                match spawn_conns(accept_loop(Rc::clone(&io), l, Rc::clone(&ctxs[0]))) {
                    Ok(t) => t.detach(),
                    Err(e) => {
                        let err = StartError::Shard(id, format!("task queue: {e}"));
                        let _ = ready.send(Err(err));
                        return;
                    }
                };
            }
            Err(e) => {
                let err = StartError::Shard(id, format!("private listener: {e}"));
                let _ = ready.send(Err(err));
                return;
            }
        }
    }
    // Resumes parked idle connections; in the connections' queue, as their tasks are.
    match glommio::spawn_local_into(parker(Rc::clone(&io)), conns) {
        Ok(t) => {
            t.detach();
        }
        Err(e) => {
            let _ = ready.send(Err(StartError::Shard(id, format!("task queue: {e}"))));
            return;
        }
    }
    let mut tasks = Vec::new();
    for (l, ctx) in listeners.into_iter().zip(&ctxs) {
        match spawn_conns(accept_loop(Rc::clone(&io), l, Rc::clone(ctx))) {
            Ok(t) => tasks.push(t),
            Err(e) => {
                let _ = ready.send(Err(StartError::Shard(id, format!("task queue: {e}"))));
                return;
            }
        }
    }
    if io.durable.is_some() {
        let io = Rc::clone(&io);
        glommio::spawn_local(async move {
            if let Some(d) = &io.durable {
                d.run(&io.shard).await;
            }
        })
        .detach();
    }
    if let Some(pool) = opts.hash_pool.clone() {
        tasks.push(glommio::spawn_local(password_verdicts(Rc::clone(&io), pool)));
    }
    if let (Some((data_tx, data_rx)), Some((ctl_tx, ctl_rx))) = (lanes, control_lanes) {
        let (data_tx, ctl_tx) = (Rc::new(data_tx), Rc::new(ctl_tx));
        let me = data_tx.peer_id();
        for peer in (0..data_tx.nr_consumers()).filter(|p| *p != me) {
            for lane in [Lane::Control, Lane::Data] {
                let senders = Rc::clone(if lane == Lane::Data { &data_tx } else { &ctl_tx });
                let ready = io.outbox_ready.subscribe(peer, lane == Lane::Control);
                let spares = spares.clone().filter(|_| lane == Lane::Data);
                let flusher = flush_lane(
                    Rc::clone(&io),
                    senders,
                    peer,
                    lane,
                    ready,
                    opts.mesh_batch_max,
                    spares,
                );
                tasks.push(glommio::spawn_local(flusher));
            }
        }
        spawn_receivers(&io, ctl_rx, Lane::Control, None);
        spawn_receivers(&io, data_rx, Lane::Data, spares);
    }
    let _ = ready.send(Ok((id, private)));
    drop(ready);
    tracing::info!(shard = id, "shard started");
    // Tick: timeouts and expiry every second; the stop flag and reload requests every 100 ms.
    let mut last_tick = Instant::now();
    let mut last_sys = Instant::now();
    let mut reload_seen = 0;
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(100)).await;
        {
            // Publishers paused by this shard's bytes crossing the mesh: those bytes drain on
            // the receiving shards, which do not signal back.
            let mut shard = io.shard.borrow_mut();
            shard.flow_retry_outboxes();
        }
        let requested = reload.requested.load(Ordering::SeqCst);
        if requested != reload_seen {
            reload_seen = requested;
            let (security, tls) = reload.snapshot(requested, &opts.listeners, &opts.auth_files);
            for (ctx, config) in ctxs.iter().zip(tls) {
                if let Some(config) = config {
                    ctx.set_tls(config);
                }
            }
            if let Some(security) = security {
                io.shard.borrow_mut().set_security(security);
            }
            reload.applied[usize::from(id)].store(requested, Ordering::SeqCst);
        }
        if let Some(rx) = opts.admin_rx.get(usize::from(id)) {
            serve_admin(&io, id, rx);
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= Duration::from_secs(1) {
            last_tick = now;
            // Deadline work in bounded turns with the connections' tasks between them: a
            // million keep-alives falling due in one second cannot stall the shard (issue 11).
            let mut more = io.shard.borrow_mut().tick_bounded(now, DEADLINES_PER_TURN);
            // Bounded: every turn handles DEADLINES_PER_TURN due entries, each of which is
            // acted on or re-armed after `now`.
            while more {
                io.outbox_ready.notify();
                glommio::executor().yield_task_queue_now().await;
                more = io.shard.borrow_mut().run_due(now, DEADLINES_PER_TURN);
            }
            let mut shard = io.shard.borrow_mut();
            // Counted by the TLS record layer on this (the shard's) thread.
            shard.metrics.tls_empty_record_runs_refused =
                crate::net::tls::records::empty_runs_refused();
            opts.stats.update(usize::from(id), &shard.metrics, &shard.latency);
            if id == 0 && now.duration_since(last_sys) >= opts.sys_interval {
                last_sys = now;
                shard.publish_sys(opts.stats.sys_topics(), now);
            }
            drop(shard);
            io.outbox_ready.notify();
            io.durable_wake();
        }
    }
    shutdown_shard(&io).await;
}

/// How often an executor in [`awake_while`] wakes up.
const JOIN_RECHECK: Duration = Duration::from_millis(1);

/// Runs `f` (the mesh join at start-up) with a timer that wakes the executor every
/// [`JOIN_RECHECK`] until it completes. The join waits for the other shards through glommio's
/// shared channels, whose cross-thread wake-up (an eventfd write when the peer sleeps) was
/// seen lost under load: both shard threads asleep in `io_uring_enter` with the join
/// unfinished, the start timing out after 30 s ("start-up timed out", ~1 run in 10 of the
/// flow and hostile tests at load 13-20; a debugger's attach woke them and the start went on).
/// Nothing else wakes an executor then: no timer and no socket is armed yet. After start-up
/// the shard's 100 ms tick plays this part (glommio looks at every channel each time its
/// reactor runs).
async fn awake_while<F: std::future::Future>(f: F) -> F::Output {
    let recheck = async {
        loop {
            glommio::timer::sleep(JOIN_RECHECK).await;
        }
    };
    futures_lite::future::or(f, recheck).await
}

/// Answers the admin API requests waiting for this shard: at most 64 per turn, so a burst
/// cannot stall the shard (the channel itself is bounded; the HTTP thread waits a bounded time).
fn serve_admin(
    io: &Rc<ShardIo>,
    id: u16,
    rx: &crossbeam_channel::Receiver<crate::admin::ShardRequest>,
) {
    let mut any = false;
    for req in rx.try_iter().take(64) {
        let reply = io.shard.borrow_mut().admin(&req.request, Instant::now());
        // The asker may have given up (timeout): a full or closed reply channel is fine.
        let _ = req.reply.try_send((id, reply));
        any = true;
    }
    if any {
        io.outbox_ready.notify();
    }
}

/// Graceful shutdown: stop accepting, tell clients, give writes a bounded time to drain.
async fn shutdown_shard(io: &Rc<ShardIo>) {
    io.stop();
    io.shard.borrow_mut().shutdown(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(2);
    while io.shard.borrow().connection_count() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    let shard = io.shard.borrow();
    let undelivered = shard.undelivered_messages();
    if undelivered > 0 {
        // Accepted (acknowledged) messages held in sessions: they are not silently dropped.
        tracing::warn!(
            shard = shard.id().0,
            undelivered,
            "shutting down with undelivered messages"
        );
    }
    tracing::info!(shard = shard.id().0, "shard stopped");
}

/// Which outbox a flusher drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Data,
    Control,
}

/// Drains one outbox lane for one peer into the mesh, a batch per turn. A full channel makes
/// `send_to` wait for this peer and lane only: the other peers and the control lane keep
/// flowing. Meanwhile the data outbox grows, and past its bound the publishers that add to it
/// are paused (`Shard::take_batch` resumes them).
/// The data lane fills the vectors `spares` holds for it.
async fn flush_lane(
    io: Rc<ShardIo>,
    senders: Rc<Senders<Batch>>,
    peer: usize,
    lane: Lane,
    ready: Rc<Notify>,
    batch_max: usize,
    spares: Option<Arc<SpareBatches>>,
) {
    let me = senders.peer_id();
    loop {
        ready.wait().await;
        // Bounded: every pass moves one batch or finds the outbox empty.
        loop {
            let batch = {
                let mut shard = io.shard.borrow_mut();
                match (lane, &spares) {
                    (Lane::Data, Some(spares)) => {
                        let mut batch = spares.take(me, peer);
                        shard.take_batch_into(peer, batch_max, &mut batch);
                        if batch.is_empty() {
                            spares.give(me, peer, batch);
                            break;
                        }
                        batch
                    }
                    (Lane::Data, None) => shard.take_batch(peer, batch_max),
                    (Lane::Control, _) => shard.take_control(peer, batch_max),
                }
            };
            if batch.is_empty() {
                break;
            }
            if let Some(d) = &io.durable {
                d.note_sent(peer, lane == Lane::Control, batch.len());
            }
            match senders.try_send_to(peer, batch) {
                Ok(()) => {}
                Err(GlommioError::WouldBlock(ResourceType::Channel(b))) => {
                    io.shard.borrow_mut().metrics.mesh_backpressure += 1;
                    if senders.send_to(peer, b).await.is_err() {
                        return; // peer gone: shutting down
                    }
                }
                Err(_) => return, // closed: shutting down
            }
            glommio::yield_if_needed().await;
        }
    }
}

/// Feeds the password workers' verdicts for this shard back into it. The waker is registered
/// before the queue is drained, so a verdict sent in between wakes the task again.
async fn password_verdicts(io: Rc<ShardIo>, pool: Arc<crate::auth::HashPool>) {
    let id = io.shard.borrow().id();
    let Some(replies) = pool.replies(id) else { return };
    loop {
        let verdict = std::future::poll_fn(|cx| {
            replies.register(cx.waker());
            match replies.try_recv() {
                Some(v) => std::task::Poll::Ready(v),
                None => std::task::Poll::Pending,
            }
        })
        .await;
        io.shard.borrow_mut().handle_password_verdict(verdict, Instant::now());
        io.outbox_ready.notify();
        glommio::yield_if_needed().await;
    }
}

/// A data batch, once handled, goes back empty to its sender through `spares`.
fn spawn_receivers(
    io: &Rc<ShardIo>,
    mut receivers: Receivers<Batch>,
    lane: Lane,
    spares: Option<Arc<SpareBatches>>,
) {
    let me = receivers.peer_id();
    for (from, rx) in receivers.streams() {
        let io = Rc::clone(io);
        let spares = spares.clone();
        glommio::spawn_local(async move {
            while let Some(mut batch) = rx.recv().await {
                let now = Instant::now();
                {
                    let mut shard = io.shard.borrow_mut();
                    let n = batch.len();
                    for msg in batch.drain(..) {
                        shard.handle_peer(tern_core::ids::ShardId(from as u16), msg, now);
                    }
                    if let Some(spares) = &spares {
                        if !spares.give(from, me, batch) {
                            shard.metrics.mesh_spare_batches_freed += 1;
                        }
                    }
                    if let Some(d) = &io.durable {
                        d.note_handled(from, lane == Lane::Control, n);
                    }
                    io.outbox_ready.notify_pending(&shard);
                }
                io.durable_wake();
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: the data lane's emptied batches go back to their sender, at most
    /// `SPARE_BATCHES_PER_PAIR` per pair and of at most `mesh_batch_max` messages.
    #[test]
    fn spare_batches_are_reused_within_their_bounds() {
        let spares = SpareBatches::new(2, 4);
        let mut b = spares.take(0, 1);
        assert_eq!(b.capacity(), 0, "none spare yet: a new vector");
        b.reserve_exact(4);
        let ptr = b.as_ptr();
        assert!(spares.give(0, 1, b), "kept");
        assert_eq!(spares.take(1, 0).capacity(), 0, "the other direction has its own");
        let again = spares.take(0, 1);
        assert_eq!(again.as_ptr(), ptr, "the same allocation comes back");
        // The bound: two per pair; a third is freed (and reported, for the metric).
        let kept: Vec<bool> = (0..SPARE_BATCHES_PER_PAIR + 1)
            .map(|_| spares.give(0, 1, Vec::with_capacity(2)))
            .collect();
        assert_eq!(kept, [true, true, false]);
        assert_eq!(spares.pairs[1].1.len(), SPARE_BATCHES_PER_PAIR);
        // Larger than a batch: freed, not kept.
        let spares = SpareBatches::new(2, 4);
        assert!(!spares.give(1, 0, Vec::with_capacity(64)));
        assert_eq!(spares.take(1, 0).capacity(), 0);
    }

    /// Issue 9: a reload is read once and every shard gets that same snapshot, so a file
    /// rewritten between two shards' turns cannot apply on some shards only.
    #[test]
    fn one_reload_is_parsed_once_for_every_shard() {
        let dir = std::env::temp_dir().join(format!("tern-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let acl = dir.join("acl");
        std::fs::write(&acl, "topic readwrite a/#\n").expect("write acl");
        let files = crate::config::AuthConfig {
            password_file: None,
            acl_file: Some(acl.clone()),
            ..Default::default()
        };
        let reload = Reload {
            requested: Arc::new(AtomicU64::new(1)),
            applied: (0..2).map(|_| AtomicU64::new(0)).collect(),
            snapshot: Arc::default(),
        };
        let (first, _) = reload.snapshot(1, &[], &files);
        // Rewritten (here: made invalid) before the second shard's turn.
        std::fs::write(&acl, "this is not an acl line\n").expect("write acl");
        let (second, _) = reload.snapshot(1, &[], &files);
        let (first, second) = (first.expect("parsed"), second.expect("shared"));
        assert!(Arc::ptr_eq(&first, &second), "both shards hold one parsed snapshot");
        // The next reload reads the files again: the invalid file keeps what is in force.
        let (third, _) = reload.snapshot(2, &[], &files);
        assert!(third.is_none(), "an unparsable file changes nothing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
