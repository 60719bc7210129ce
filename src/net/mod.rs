//! IO only: accept loops, the transports (TCP, TLS, WebSocket, WebSocket over TLS) and the
//! connection driver. Moves bytes between sockets and the shard; all protocol decisions are the
//! shard's (`crate::shard`), which does not know which transport a connection uses.
//!
//! Memory per idle connection: the driver reads into one scratch buffer per shard and hands the
//! bytes to the shard at once, so a connection waiting for data holds no read buffer of its own
//! (glommio's `poll_read` arms a readiness poll that holds only a waker). A partial packet is
//! kept in the connection's `rx` until it completes. WebSocket frames are decoded in that same
//! scratch buffer ([`ws_stream`]); TLS ciphertext goes through a per-thread buffer and the
//! stream keeps only a partial record ([`tls`]).
//!
//! - [`ws`]: the WebSocket handshake parser and frame codec, no IO.
//! - [`ws_stream`]: the WebSocket stream adapter over TCP or TLS.
//! - [`tls`]: rustls configuration from PEM files, client certificate identity, and the TLS
//!   stream over rustls' unbuffered API (parks with rustls' state alone).

pub mod tls;
pub mod ws;
pub mod ws_stream;

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use std::net::SocketAddr;
use std::sync::Arc;

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use rustls::ServerConfig;

use crate::shard::{ConnId, Shard};
pub use tls::TlsSpec;
use ws_stream::WsStream;

/// Size of the per-shard scratch read buffer.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// How often a connection held by an exhausted memory budget looks again (the only timed wait
/// of a connection that is not writing: flow-control pauses are woken by the drain).
const MEMORY_RECHECK: Duration = Duration::from_millis(10);

/// Time a connection's orderly close (TLS close_notify, WebSocket close frame) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// After the broker closes a connection (DISCONNECT, refusing CONNACK, protocol error) it shuts
/// down its write side and reads and discards what the client still sends, until the client
/// closes or this time passes. Closing a socket with unread input makes the kernel send a TCP
/// reset, and a reset can destroy the DISCONNECT or CONNACK before the client reads it.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes read and discarded during [`CLOSE_DRAIN_TIMEOUT`] at most (the read lands in the shard's
/// scratch buffer, so the drain holds no memory of its own).
const CLOSE_DRAIN_BYTES_MAX: usize = 1 << 20;

/// Connections the parker resumes per turn at most (epoll events and shard wake-ups each), so a
/// shutdown or a broadcast to a million parked connections is spread over turns.
const UNPARK_PER_TURN: usize = 256;

/// A one-waiter wake-up flag, local to a shard.
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Sets the flag and wakes the waiter.
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until the flag is set, then clears it.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Wakes the mesh flushers of a shard (one per peer and lane) when their outbox may have grown.
#[derive(Default)]
pub struct Signal {
    /// (peer, control lane, flag) of each flusher.
    waiters: RefCell<Vec<(usize, bool, Rc<Notify>)>>,
}

impl Signal {
    /// Wakes every flusher.
    pub fn notify(&self) {
        for (_, _, n) in self.waiters.borrow().iter() {
            n.notify();
        }
    }

    /// Wakes the flushers whose outbox holds something (the hot paths: no wake-up, and no
    /// empty pass, for a lane with nothing to send).
    pub fn notify_pending(&self, shard: &Shard) {
        for (peer, control, n) in self.waiters.borrow().iter() {
            if shard.has_outgoing_on(*peer, *control) {
                n.notify();
            }
        }
    }

    /// The flag of the flusher for `peer` on the control or the data lane.
    pub fn subscribe(&self, peer: usize, control: bool) -> Rc<Notify> {
        let n = Rc::new(Notify::default());
        self.waiters.borrow_mut().push((peer, control, Rc::clone(&n)));
        n
    }
}

/// The shard and the wakers of the tasks driving its connections. The shard holds no wakers:
/// it lists the connections that became ready ([`Shard::take_ready`]), and every mutable
/// borrow taken through [`ShardCell::borrow_mut`] drains that list when it ends and wakes
/// their tasks. The same drain hands the password checks the shard queued
/// ([`Shard::take_password_checks`]) to the worker pool.
pub struct ShardCell {
    shard: RefCell<Shard>,
    /// The waker of each connection's task, indexed by connection id.
    wakers: RefCell<Vec<Option<Waker>>>,
    /// Reused by every drain.
    ready: RefCell<Vec<ConnId>>,
    /// Runs the password checks the shard queues (`None`: the shard checks inline).
    pool: Option<Arc<crate::auth::HashPool>>,
    /// Reused by every drain.
    checks: RefCell<Vec<crate::auth::HashJob>>,
    /// Idle connections without a task (`None`: epoll unavailable, nothing parks).
    parking: Option<Parking>,
}

/// Idle connections (TCP, TLS, WebSocket) parked without a task of their own (issue 11). glommio waits
/// for a socket's readiness only through a per-socket `Source` (~0.5 KB, allocated per armed
/// poll) held by the task that reads it (~0.7 KB of future and header): most of an idle
/// connection's memory. A parked connection is a bare socket in one epoll set per shard
/// instead; the epoll descriptor itself is the single thing glommio watches ([`parker`]).
/// A parked connection resumes (a new task on the same socket) when the socket becomes
/// readable or closes, or when the shard has something for it ([`ShardMut`]'s drop).
struct Parking {
    epoll: nix::sys::epoll::Epoll,
    /// The parked sockets, indexed by connection id (a duplicate of the descriptor the task
    /// had; registered in `epoll` under the connection id).
    sockets: RefCell<Vec<Option<std::net::TcpStream>>>,
    /// What the parked TLS and WebSocket connections keep besides their socket, indexed like
    /// `sockets` (grown only when such a connection parks).
    layers: RefCell<Vec<Option<Parked>>>,
    /// Parked connections the shard made ready: the parker resumes them.
    wake: RefCell<Vec<ConnId>>,
    /// Wakes the parker when `wake` grows.
    notify: Notify,
}

impl Parking {
    fn new() -> Option<Self> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags};
        match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(epoll) => Some(Self {
                epoll,
                sockets: RefCell::default(),
                layers: RefCell::default(),
                wake: RefCell::default(),
                notify: Notify::default(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "epoll unavailable: idle connections keep their tasks");
                None
            }
        }
    }

    fn is_parked(&self, id: ConnId) -> bool {
        matches!(self.sockets.borrow().get(id.0 as usize), Some(Some(_)))
    }
}

impl ShardCell {
    /// Wraps `shard`; its password checks go to `pool`.
    pub fn new(shard: Shard, pool: Option<Arc<crate::auth::HashPool>>) -> Self {
        Self {
            shard: RefCell::new(shard),
            wakers: RefCell::default(),
            ready: RefCell::default(),
            pool,
            checks: RefCell::default(),
            parking: Parking::new(),
        }
    }

    /// Parks connection `id`: `socket` (a duplicate of the task's descriptor) goes into the
    /// epoll set and the task's waker is dropped. `false` when it could not be registered
    /// (the task keeps serving the connection).
    fn park(&self, id: ConnId, socket: std::net::TcpStream) -> bool {
        use nix::sys::epoll::{EpollEvent, EpollFlags};
        let Some(p) = &self.parking else { return false };
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if let Err(e) = p.epoll.add(&socket, EpollEvent::new(interest, u64::from(id.0))) {
            tracing::debug!(error = %e, "could not park a connection");
            return false;
        }
        let i = id.0 as usize;
        let mut sockets = p.sockets.borrow_mut();
        if sockets.len() <= i {
            sockets.resize_with(i + 1, || None);
        }
        sockets[i] = Some(socket);
        // The waker holds the ended task's allocation; a parked connection has none.
        if let Some(w) = self.wakers.borrow_mut().get_mut(i) {
            *w = None;
        }
        self.shard.borrow_mut().metrics.connections_parked += 1;
        true
    }

    /// Keeps what TLS or WebSocket connection `id`, parked just now by [`Self::park`], needs
    /// besides its socket.
    fn park_layers(&self, id: ConnId, state: Parked) {
        let Some(p) = &self.parking else { return };
        let i = id.0 as usize;
        let mut states = p.layers.borrow_mut();
        if states.len() <= i {
            states.resize_with(i + 1, || None);
        }
        states[i] = Some(state);
    }

    /// Takes parked connection `id`'s socket out of the epoll set, with what its TLS or
    /// WebSocket layer kept (`None`: not parked).
    fn unpark(&self, id: ConnId) -> Option<(std::net::TcpStream, Option<Parked>)> {
        let p = self.parking.as_ref()?;
        let socket = p.sockets.borrow_mut().get_mut(id.0 as usize)?.take()?;
        let state = p.layers.borrow_mut().get_mut(id.0 as usize).and_then(Option::take);
        // Before the descriptor can close: a registration outlives a closed descriptor while
        // a duplicate of it is open.
        if let Err(e) = p.epoll.delete(&socket) {
            tracing::debug!(error = %e, "epoll delete of a parked connection");
        }
        let mut shard = self.shard.borrow_mut();
        shard.metrics.connections_parked = shard.metrics.connections_parked.saturating_sub(1);
        Some((socket, state))
    }

    /// Shared access (no call that changes the shard).
    pub fn borrow(&self) -> std::cell::Ref<'_, Shard> {
        self.shard.borrow()
    }

    /// Mutable access; the connections the calls made ready are woken when the guard drops.
    pub fn borrow_mut(&self) -> ShardMut<'_> {
        ShardMut { shard: self.shard.borrow_mut(), cell: self }
    }

    /// Stores the waker of the task that drives connection `id`.
    pub fn register_waker(&self, id: ConnId, waker: &Waker) {
        let mut wakers = self.wakers.borrow_mut();
        let i = id.0 as usize;
        if wakers.len() <= i {
            wakers.resize(i + 1, None);
        }
        match &wakers[i] {
            Some(w) if w.will_wake(waker) => {}
            _ => wakers[i] = Some(waker.clone()),
        }
    }
}

/// A mutable borrow of the shard (see [`ShardCell::borrow_mut`]).
pub struct ShardMut<'a> {
    shard: std::cell::RefMut<'a, Shard>,
    cell: &'a ShardCell,
}

impl ShardMut<'_> {
    /// Stores the waker of the task that drives connection `id`.
    pub fn register_waker(&self, id: ConnId, waker: &Waker) {
        self.cell.register_waker(id, waker);
    }
}

impl std::ops::Deref for ShardMut<'_> {
    type Target = Shard;
    fn deref(&self) -> &Shard {
        &self.shard
    }
}

impl std::ops::DerefMut for ShardMut<'_> {
    fn deref_mut(&mut self) -> &mut Shard {
        &mut self.shard
    }
}

impl Drop for ShardMut<'_> {
    fn drop(&mut self) {
        if let Some(pool) = &self.cell.pool {
            let mut checks = self.cell.checks.borrow_mut();
            self.shard.take_password_checks(&mut checks);
            for job in checks.drain(..) {
                let ticket = job.ticket;
                if let Err(e) = pool.try_submit(job) {
                    tracing::debug!(?e, "password check not queued");
                    self.shard.password_check_refused(ticket, Instant::now());
                }
            }
        }
        let mut ready = self.cell.ready.borrow_mut();
        self.shard.take_ready(&mut ready);
        if ready.is_empty() {
            return;
        }
        let wakers = self.cell.wakers.borrow();
        for id in ready.drain(..) {
            // Waking only schedules the task; none runs inside this call.
            if let Some(Some(w)) = wakers.get(id.0 as usize) {
                w.wake_by_ref();
            } else if let Some(p) = self.cell.parking.as_ref().filter(|p| p.is_parked(id)) {
                // No task: the parker starts one.
                p.wake.borrow_mut().push(id);
                p.notify.notify();
            }
        }
    }
}

/// Per-shard resources shared by the IO tasks of that shard.
pub struct ShardIo {
    /// The shard state and its connections' wakers.
    pub shard: ShardCell,
    /// The shard's write-ahead log (`None`: persistence off).
    pub durable: Option<crate::persist::durable::Durability>,
    /// Scratch read buffer, borrowed only inside one `poll`.
    pub scratch: RefCell<Box<[u8]>>,
    /// Wakes the mesh flushers when an outbox may have grown.
    pub outbox_ready: Signal,
    /// Set when the shard is shutting down: accept loops stop.
    pub stopping: Cell<bool>,
    /// Tasks waiting for `stopping` (the accept loops).
    pub stop_waiters: RefCell<Vec<Waker>>,
    /// Connections accepted and not yet past CONNACK (`limits.connecting_max`).
    pub admission: Admission,
    /// The shard's task queues for connections.
    pub queues: Queues,
}

/// The task queues a shard runs its connections in.
#[derive(Clone, Copy, Debug)]
pub struct Queues {
    /// Established connections, the accept loops and the parker.
    pub connections: glommio::TaskQueueHandle,
    /// TLS and WebSocket handshakes, until the connection is established
    /// ([`HANDSHAKE_SHARES`]).
    pub handshakes: glommio::TaskQueueHandle,
}

/// The handshake queue's shares against the connections' 1 000 (glommio's default): while
/// connected clients have work, handshakes get about a tenth of the shard's CPU; when they do
/// not, all of it. A storm of TLS reconnects then delays the connected clients by about one
/// handshake step at a time instead of a whole round of handshakes (issue 11).
pub const HANDSHAKE_SHARES: usize = 100;

/// Connections accepted this many at most in a row; then the accept loop yields, so a
/// connection storm's accepts are spread over turns and the shard's other tasks (keep alive,
/// deliveries) run between batches (issue 11).
const ACCEPTS_PER_TURN: usize = 64;

/// The shard's connections between accept and CONNACK: TLS or WebSocket handshake, waiting
/// for CONNECT, for the registry or for a takeover. At most `limits.connecting_max` per shard;
/// at the bound the accept loops wait (the next clients wait in the kernel's listen backlog)
/// until one settles, so a storm of reconnecting devices holds a bounded number of handshake
/// and CONNECT states and cannot starve the connected ones (issue 11).
#[derive(Default)]
pub struct Admission {
    connecting: Cell<usize>,
    /// Accept loops waiting for room.
    waiters: RefCell<Vec<Waker>>,
}

impl Admission {
    /// Connections between accept and CONNACK now.
    pub fn connecting(&self) -> usize {
        self.connecting.get()
    }

    fn enter(&self) {
        self.connecting.set(self.connecting.get() + 1);
    }

    fn leave(&self) {
        self.connecting.set(self.connecting.get().saturating_sub(1));
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits until fewer than `max` connections are connecting.
    async fn room(&self, max: usize) {
        poll_fn(|cx| {
            if self.connecting.get() < max {
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// One connection's place in [`Admission`], from accept until its CONNACK or its end.
struct Connecting<'a>(&'a Admission);

impl Connecting<'_> {
    /// The place passes to the connection's serving task (which takes its own guard).
    fn hand_on(self) {
        std::mem::forget(self);
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl ShardIo {
    /// Records may have been produced outside a connection task: wake the log's sync task.
    pub fn durable_wake(&self) {
        if let Some(d) = &self.durable {
            d.wake.notify();
        }
    }

    /// Marks the shard as stopping and wakes every task waiting for it.
    pub fn stop(&self) {
        self.stopping.set(true);
        for w in self.stop_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Completes once [`ShardIo::stop`] has been called.
    pub async fn stopped(&self) {
        poll_fn(|cx| {
            if self.stopping.get() {
                Poll::Ready(())
            } else {
                let mut waiters = self.stop_waiters.borrow_mut();
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

/// What a listener speaks, as the runtime needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportSpec {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls(TlsSpec),
    /// MQTT over WebSocket.
    Ws(WsSpec),
    /// MQTT over WebSocket over TLS.
    Wss(TlsSpec, WsSpec),
}

impl TransportSpec {
    /// The TLS settings, for `Tls` and `Wss`.
    pub fn tls(&self) -> Option<&TlsSpec> {
        match self {
            TransportSpec::Tls(t) | TransportSpec::Wss(t, _) => Some(t),
            TransportSpec::Tcp | TransportSpec::Ws(_) => None,
        }
    }
}

/// WebSocket settings of a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsSpec {
    /// The upgrade path, e.g. `/mqtt`.
    pub path: String,
    /// Largest frame payload accepted: the packet size limit plus the largest fixed header,
    /// so a maximum-size packet fits in one frame.
    pub frame_bytes_max: usize,
}

/// One listener: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Address to bind (port 0: an ephemeral port, resolved once for all shards).
    pub addr: SocketAddr,
    /// Transport.
    pub transport: TransportSpec,
}

/// A listener as one shard runs it.
pub struct ListenerCtx {
    /// Listener index, as the shard's policies are indexed.
    pub index: usize,
    /// Transport.
    pub transport: TransportSpec,
    /// TLS configuration handed to new connections; replaced by [`ListenerCtx::set_tls`].
    /// Connections already up keep the `Arc` they started with.
    pub tls: RefCell<Option<Arc<ServerConfig>>>,
    /// Time a TLS or WebSocket handshake may take.
    pub handshake_timeout: Duration,
    /// Handshakes in progress on this shard; bounded by the listener's per-shard connection
    /// limit, so slow handshakes cannot pile up before the shard counts them.
    handshakes: Cell<usize>,
}

impl ListenerCtx {
    /// A listener context; `tls` is the configuration built at start for TLS transports.
    pub fn new(
        index: usize,
        transport: TransportSpec,
        tls: Option<Arc<ServerConfig>>,
        handshake_timeout: Duration,
    ) -> Self {
        assert_eq!(tls.is_some(), transport.tls().is_some(), "invariant: TLS config iff TLS");
        Self {
            index,
            transport,
            tls: RefCell::new(tls),
            handshake_timeout,
            handshakes: Cell::new(0),
        }
    }

    /// Uses `config` for new connections (a reload's snapshot, read once for every shard).
    pub fn set_tls(&self, config: Arc<ServerConfig>) {
        *self.tls.borrow_mut() = Some(config);
    }
}

/// Accepts connections on `listener` until the shard stops.
pub async fn accept_loop(io: Rc<ShardIo>, listener: TcpListener, ctx: Rc<ListenerCtx>) {
    let mut backoff = Duration::from_millis(5);
    let mut batch = 0;
    while !io.stopping.get() {
        batch += 1;
        if batch > ACCEPTS_PER_TURN {
            batch = 1;
            futures_lite::future::yield_now().await;
        }
        let connecting_max = io.shard.borrow().config().connecting_max;
        if io.admission.connecting() >= connecting_max {
            io.shard.borrow_mut().metrics.accepts_deferred += 1;
            let room = futures_lite::future::or(
                async {
                    io.admission.room(connecting_max).await;
                    true
                },
                async {
                    io.stopped().await;
                    false
                },
            );
            if !room.await {
                break;
            }
            continue;
        }
        // The accept is raced only against shutdown, never against a timer: dropping an
        // io_uring accept that has already completed would lose that connection (its client
        // would wait for a CONNACK that never comes).
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            io.stopped().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break, // shutting down
            Some(Ok(s)) => {
                backoff = Duration::from_millis(5);
                s
            }
            Some(Err(e)) => {
                // EMFILE/ENFILE and friends: back off (bounded) instead of spinning.
                tracing::warn!(error = %e, "accept failed; backing off {backoff:?}");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else { continue };
        let _ = stream.set_nodelay(true);
        let write_timeout = io.shard.borrow().config().write_timeout;
        tune_socket(&stream, write_timeout);
        if ctx.transport == TransportSpec::Tcp {
            // No handshake: the shard takes the connection now (and refuses it over the limit).
            let id = io.shard.borrow_mut().accept(ctx.index, peer, Instant::now());
            let Some(id) = id else { continue }; // over the limit: dropping closes it
            io.admission.enter(); // left by `serve` at CONNACK
            glommio::spawn_local(serve(Rc::clone(&io), stream, id, false)).detach();
            continue;
        }
        let limit = io.shard.borrow().config().listeners[ctx.index].connections_max;
        if ctx.handshakes.get() >= limit {
            io.shard.borrow_mut().metrics.connections_refused_limit += 1;
            continue;
        }
        ctx.handshakes.set(ctx.handshakes.get() + 1);
        io.admission.enter(); // left by the handshake task or, once established, by `serve`
        let handshake = handshake_and_serve(Rc::clone(&io), Rc::clone(&ctx), stream, peer);
        match glommio::spawn_local_into(handshake, io.queues.handshakes) {
            Ok(t) => {
                t.detach();
            }
            // Only if the queue were gone, which the shard never does while it accepts: the
            // future never ran, so its counts are undone here.
            Err(e) => {
                tracing::error!(error = %e, "handshake queue unavailable; connection dropped");
                ctx.handshakes.set(ctx.handshakes.get() - 1);
                io.admission.leave();
            }
        }
    }
}

/// A transport established and ready for MQTT bytes.
enum Established {
    Tls(tls::TlsStream<TcpStream>),
    Ws(WsStream<TcpStream>),
    Wss(WsStream<tls::TlsStream<TcpStream>>),
}

/// Runs the TLS and/or WebSocket handshake within the listener's time bound, then registers
/// the connection with the shard and serves it.
async fn handshake_and_serve(
    io: Rc<ShardIo>,
    ctx: Rc<ListenerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let connecting = Connecting(&io.admission);
    let timeout = ctx.handshake_timeout;
    let result = futures_lite::future::or(async { Some(establish(&ctx, stream).await) }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await;
    ctx.handshakes.set(ctx.handshakes.get() - 1);
    let (established, identity) = match result {
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            tracing::debug!(%peer, listener = ctx.index, error = %e, "handshake failed");
            io.shard.borrow_mut().metrics.protocol_errors += 1;
            return;
        }
        None => {
            tracing::debug!(%peer, listener = ctx.index, "handshake timed out");
            return;
        }
    };
    if io.stopping.get() {
        return;
    }
    let id = io.shard.borrow_mut().accept_with_identity(ctx.index, peer, Instant::now(), identity);
    let Some(id) = id else { return }; // over the limit: dropping closes it
    connecting.hand_on();
    // A task of its own, so the memory of this handshake future is freed now rather than held
    // for the life of the connection (it is laid out to hold the streams of every transport).
    // In the connections' queue: the handshake queue's low shares are for handshakes only.
    let queue = io.queues.connections;
    let io_for_cleanup = Rc::clone(&io);
    let spawned = match established {
        Established::Tls(s) => glommio::spawn_local_into(serve(io, s, id, false), queue),
        Established::Ws(s) => glommio::spawn_local_into(serve(io, s, id, false), queue),
        Established::Wss(s) => glommio::spawn_local_into(serve(io, s, id, false), queue),
    };
    match spawned {
        Ok(t) => {
            t.detach();
        }
        Err(e) => {
            // As above, never while the shard runs: `serve` never ran, so the connection and
            // its admission place are released here.
            tracing::error!(error = %e, "connection queue unavailable; connection dropped");
            io_for_cleanup.shard.borrow_mut().release(id, Instant::now());
            io_for_cleanup.admission.leave();
        }
    }
}

/// The handshakes of a listener's transport; returns the stream and, with
/// `use_identity_as_username`, the client certificate's CN.
async fn establish(
    ctx: &ListenerCtx,
    mut stream: TcpStream,
) -> Result<(Established, Option<String>), std::io::Error> {
    let ws = match &ctx.transport {
        TransportSpec::Tcp => unreachable!("invariant: TCP has no handshake"),
        TransportSpec::Ws(ws) => {
            let early =
                ws_stream::handshake(&mut stream, &ws.path).await.map_err(std::io::Error::other)?;
            return Ok((Established::Ws(WsStream::new(stream, early, ws.frame_bytes_max)), None));
        }
        TransportSpec::Tls(_) => None,
        TransportSpec::Wss(_, ws) => Some(ws),
    };
    let spec = ctx.transport.tls().expect("invariant: Tls and Wss carry TLS settings");
    // The configuration current at accept; a reload later does not affect this connection.
    let config = ctx.tls.borrow().clone().expect("invariant: TLS listeners have a config");
    let mut tls = tls::TlsStream::accept(config, stream).await?;
    let identity = if spec.use_identity_as_username {
        let cert = tls.peer_certificates().and_then(|c| c.first());
        // require_certificate is validated to be on, so rustls refused a client without one.
        let cn = cert.and_then(|c| tls::subject_common_name(c.as_ref()));
        match cn {
            Some(cn) => Some(cn),
            None => {
                let _ = tls.close().await;
                return Err(std::io::Error::other("client certificate has no subject CN"));
            }
        }
    } else {
        None
    };
    match ws {
        None => Ok((Established::Tls(tls), identity)),
        Some(ws) => {
            let early =
                ws_stream::handshake(&mut tls, &ws.path).await.map_err(std::io::Error::other)?;
            Ok((Established::Wss(WsStream::new(tls, early, ws.frame_bytes_max)), identity))
        }
    }
}

/// What one turn of a connection task did.
enum Event {
    /// Data was read and handed to the shard: yield if others wait (one read per turn).
    Read,
    /// End of stream or socket error: the shard is told; pending output still goes out.
    Closed,
    /// The output failed: nothing more can be written.
    WriteFailed,
    /// The peer accepted no byte of pending output for `write_timeout`.
    WriteTimedOut,
    /// Reading waits for the memory budget to recover (`ConnStatus::memory_paused`).
    MemoryPaused,
    /// The shard closed the connection and every byte is written.
    Done,
    /// The CONNECT was accepted: the client id is known (recorded in the span outside the
    /// poll, where the span is entered).
    Identified,
    /// Idle for `limits.park_idle_ms` with nothing to write: park the connection ([`Parking`]).
    Park,
}

/// What a parked connection keeps besides its socket, by transport (plain TCP: nothing).
enum Parked {
    /// rustls' connection state.
    Tls(tls::ParkedTls),
    /// The WebSocket frame bound.
    Ws(usize),
    /// Both.
    Wss(tls::ParkedTls, usize),
}

/// A connection's byte stream as the driver needs it; `park` hands an idle connection's socket
/// to the shard's epoll set. Every transport parks when it holds no byte: a TLS stream with
/// no partial record, unread plaintext or unsent ciphertext keeps rustls' state
/// ([`tls::ParkedTls`]); a WebSocket stream between frames with nothing pending keeps its
/// frame bound.
trait Transport: AsyncRead + AsyncWrite + Unpin + Sized {
    /// Whether `park` can succeed.
    const PARKS: bool = false;

    /// A duplicate of the socket's descriptor, when the transport can park now.
    fn park(&self) -> Option<std::net::TcpStream> {
        None
    }

    /// What the parked connection keeps besides its socket, once [`Self::park`]'s socket is
    /// in the epoll set.
    fn into_parked(self) -> Option<Parked> {
        None
    }
}

impl Transport for TcpStream {
    const PARKS: bool = true;

    fn park(&self) -> Option<std::net::TcpStream> {
        socket2::SockRef::from(self).try_clone().ok().map(std::net::TcpStream::from)
    }
}

impl Transport for tls::TlsStream<TcpStream> {
    const PARKS: bool = true;

    fn park(&self) -> Option<std::net::TcpStream> {
        if !self.parkable() {
            return None; // a partial record or bytes in flight: it stays with its task
        }
        self.get_ref().park()
    }

    fn into_parked(self) -> Option<Parked> {
        Some(Parked::Tls(tls::TlsStream::into_parked(self).1))
    }
}

impl Transport for WsStream<TcpStream> {
    const PARKS: bool = true;

    fn park(&self) -> Option<std::net::TcpStream> {
        if !self.parkable() {
            return None; // a partial frame or bytes in flight: it stays with its task
        }
        self.get_ref().park()
    }

    fn into_parked(self) -> Option<Parked> {
        Some(Parked::Ws(WsStream::into_parked(self).1))
    }
}

impl Transport for WsStream<tls::TlsStream<TcpStream>> {
    const PARKS: bool = true;

    fn park(&self) -> Option<std::net::TcpStream> {
        if !self.parkable() {
            return None;
        }
        self.get_ref().park()
    }

    fn into_parked(self) -> Option<Parked> {
        let (tls, frame_bytes_max) = WsStream::into_parked(self);
        Some(Parked::Wss(tls::TlsStream::into_parked(tls).1, frame_bytes_max))
    }
}

/// The write half of a connection's state: the bytes of the current write (taken from the
/// shard with [`Shard::swap_tx`], so the buffer's allocation is reused) and how far it got.
#[derive(Default)]
struct Output {
    buf: bytes::BytesMut,
    written: usize,
    /// The bytes are written and the transport's flush is pending (TLS, WebSocket).
    flushing: bool,
    /// The last `poll_write` moved bytes (or finished a flush): the write deadline restarts.
    progressed: bool,
    /// With persistence and `fsync = "always"`: output held until the log records it depends
    /// on are durable (on this shard and on the shards it sent messages to), oldest first.
    /// Only acknowledgements and what must stay behind them are held
    /// ([`crate::persist::hold`]); deliveries in the same buffer go out at once. Bounded:
    /// no new output is taken from the shard while `bytes` is at `tx_bytes_max` (the shard's
    /// own bound then pauses the reads). Boxed and present only while something is held: every
    /// connection's task carries this field (issue 11).
    held: Option<Box<HeldQueue>>,
    /// The last `poll_write` returned `Pending` waiting for the log, not for the socket (no
    /// write deadline: not the peer's doing).
    gated: bool,
}

/// Output held for the log, oldest first.
#[derive(Default)]
struct HeldQueue {
    parts: std::collections::VecDeque<Held>,
    /// Bytes in `parts`.
    bytes: usize,
    /// Parts that contain a barrier: while any is unwritten, all new output is held.
    barriers: usize,
}

/// Output held for the log: its bytes and what they wait for.
struct Held {
    bytes: bytes::BytesMut,
    gate: crate::persist::durable::Gate,
    barrier: bool,
}

impl Output {
    fn idle(&self) -> bool {
        self.buf.is_empty() && !self.flushing && self.held.is_none()
    }

    /// Writes as much as the socket takes, refilling from the shard; `Ready(Err)` when the
    /// socket failed (or the log cannot be written: held acknowledgements must never go out),
    /// `Ready(Ok)` when the shard has nothing more to write, `Pending` when the socket is full
    /// (its readiness wakes the task) or held output waits for the log (`gated`; the sync
    /// wakes the task).
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        stream: &mut S,
        shard: &mut Shard,
        id: ConnId,
        durable: Option<&crate::persist::durable::Durability>,
    ) -> Poll<std::io::Result<()>> {
        // Bounded: each pass writes bytes, flushes, releases a held part, or takes a new buffer
        // (which is bounded by `tx_bytes_max` plus one packet, and only while fewer than
        // `tx_bytes_max` bytes are held); it returns when the shard has nothing more.
        self.progressed = false;
        self.gated = false;
        loop {
            if self.written < self.buf.len() {
                match Pin::new(&mut *stream).poll_write(cx, &self.buf[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.progressed = true;
                        // What this buffer still holds counts against the connection's output
                        // bound; the room freed refills the shard's buffer (issue 9).
                        let left = self.buf.len().saturating_sub(self.written);
                        shard.output_unwritten(id, left, Instant::now());
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if self.flushing {
                // `flush` is a no-op on TCP; TLS and WebSocket may hold the tail of a record.
                std::task::ready!(Pin::new(&mut *stream).poll_flush(cx))?;
                self.flushing = false;
                self.progressed = true;
                continue;
            }
            self.buf.clear();
            self.written = 0;
            // The oldest held part goes first once the log has caught up with it.
            if let (Some(q), Some(d)) = (self.held.as_deref_mut(), durable) {
                let Some(front) = q.parts.front_mut() else {
                    // Never left empty (removed with its last part); harmless if it were.
                    self.held = None;
                    continue;
                };
                match d.poll_gate(cx, &mut front.gate) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        if let Some(h) = q.parts.pop_front() {
                            q.bytes -= h.bytes.len();
                            q.barriers -= usize::from(h.barrier);
                            self.buf = h.bytes;
                            self.flushing = true;
                        }
                        if q.parts.is_empty() {
                            self.held = None;
                        }
                        continue;
                    }
                    // Registered for the next sync; meanwhile newer deliveries may go out.
                    Poll::Pending if q.bytes >= shard.config().tx_bytes_max => {
                        self.gated = true;
                        return Poll::Pending;
                    }
                    Poll::Pending => {}
                }
            }
            // Durability first: the records behind this output are appended, then the output
            // is taken with no await in between (see `Durability::gate`). Group commit makes
            // the wait cheap. Without a data directory this is one branch.
            let gate = match durable {
                Some(d) if shard.status(id).has_tx => d.gate(shard),
                _ => None,
            };
            shard.swap_tx(id, &mut self.buf, Instant::now());
            if self.buf.is_empty() {
                if self.buf.capacity() > crate::shard::IDLE_TX_CAPACITY_MAX {
                    self.buf = bytes::BytesMut::new();
                }
                if self.held.is_none() {
                    return Poll::Ready(Ok(()));
                }
                // The front's gate registered this task above.
                self.gated = true;
                return Poll::Pending;
            }
            if gate.is_some() || self.held.is_some() {
                // Only what promises durability waits (see `persist::hold`); with older output
                // still held, this output keeps its place behind it where it must (a gate
                // that is open already: the log had nothing pending for it).
                let split = crate::persist::hold::split_output(
                    std::mem::take(&mut self.buf),
                    self.held.as_ref().is_some_and(|q| q.barriers > 0),
                );
                self.buf = split.free;
                // Held output has its own bound (above); what goes out now is this part.
                shard.output_unwritten(id, self.buf.len(), Instant::now());
                if !split.held.is_empty() {
                    let mut gate = gate.unwrap_or_else(crate::persist::durable::Gate::open);
                    if let (true, Some(d)) = (split.barrier, durable) {
                        // A QoS 2 PUBLISH routed from another shard: its publisher's QoS 2
                        // id is in that shard's log.
                        d.hold_for_origins(&mut gate);
                    }
                    let q = self.held.get_or_insert_with(Box::default);
                    q.bytes += split.held.len();
                    q.barriers += usize::from(split.barrier);
                    q.parts.push_back(Held { bytes: split.held, gate, barrier: split.barrier });
                }
                if self.buf.is_empty() {
                    continue;
                }
            }
            self.flushing = true;
        }
    }
}

/// Drives one connection until it closes or parks. Generic over the transport: plain TCP, TLS
/// and WebSocket streams all read into the shard's scratch buffer and write what the shard
/// returns. `resumed`: a parked connection's new task (it does not log "connected" again).
async fn serve<S: Transport>(io: Rc<ShardIo>, stream: S, id: ConnId, resumed: bool) {
    use tracing::Instrument;
    // One span per connection at debug level: shard, peer address, and the client id once
    // CONNECT names it; everything the shard logs for this connection's packets is inside it.
    // Not at info (the default): an enabled span is held by the subscriber for the
    // connection's life, ~0.7 KB per idle connection (issue 11). The info events "connected"
    // and "disconnected" carry the peer and client id themselves.
    let (shard, peer) = {
        let s = io.shard.borrow();
        (s.id(), s.peer(id))
    };
    let span = tracing::debug_span!(
        "conn",
        shard = shard.0,
        peer = %peer.map(|p| p.to_string()).unwrap_or_default(),
        client_id = tracing::field::Empty
    );
    serve_in_span(io, stream, id, resumed).instrument(span).await
}

/// The connection loop, full duplex: one task polls the write and the read side together, so
/// a subscriber's PUBACKs and PINGREQs are read while its output is still being written. A
/// connection that flow control pauses (`ConnStatus::read_paused`) arms no read and no timer:
/// the shard wakes it when it may read again.
async fn serve_in_span<S: Transport>(io: Rc<ShardIo>, mut stream: S, id: ConnId, resumed: bool) {
    let mut client_id_known = false;
    // A new connection holds its place among the connecting ones until its CONNACK.
    let mut connecting = (!resumed).then(|| Connecting(&io.admission));
    // The park timer (`limits.park_idle_ms`: a resumed plain-TCP connection with nothing to
    // write and nothing read for this long parks, its task ends and its socket waits in the
    // shard's epoll set, see `Parking`) and the last time bytes moved. The timer is not reset
    // by traffic (a timer insert and removal per read cost a busy connection ~15 % of its
    // throughput): when it fires, the connection parks if it has been quiet since, and
    // otherwise re-arms for the rest; at most one timer per `park_idle` per connection.
    let mut idle: Option<glommio::timer::Timer> = None;
    let mut last_io = Instant::now();
    let parks = S::PARKS && io.shard.parking.is_some();
    // A new connection parks as soon as it is first idle after its CONNACK, without waiting
    // `park_idle`: in a connection storm the tasks and read polls of the connections just
    // accepted would otherwise pile up for a second, and the allocator keeps the pages they
    // took (issue 11). One park and resume more for a client that goes on talking.
    let mut park_at_once = !resumed;
    let mut out = Output::default();
    let mut eof = false;
    let mut stall: Option<glommio::timer::Timer> = None;
    // The client closed or the socket failed: nothing to drain at the end.
    let mut peer_gone = false;
    let write_timeout = io.shard.borrow().config().write_timeout;
    let park_idle = io.shard.borrow().config().park_idle;
    let mut timed_out = false;
    loop {
        if !client_id_known {
            let shard = io.shard.borrow();
            if let Some(cid) = shard.client_id(id) {
                tracing::Span::current().record("client_id", cid);
                if !resumed {
                    let peer = shard.peer(id).map(|p| p.to_string()).unwrap_or_default();
                    tracing::info!(shard = shard.id().0, %peer, client_id = cid, "connected");
                }
                client_id_known = true;
                connecting = None;
            }
        }
        let event = poll_fn(|cx| {
            let mut shard = io.shard.borrow_mut();
            shard.register_waker(id, cx.waker());
            match out.poll_write(cx, &mut stream, &mut shard, id, io.durable.as_ref()) {
                Poll::Ready(Err(_)) => return Poll::Ready(Event::WriteFailed),
                Poll::Ready(Ok(())) => stall = None,
                // Held until the log is durable: not the peer's doing, no write deadline.
                Poll::Pending if out.gated => stall = None,
                Poll::Pending => {
                    // A write the peer does not take: the deadline restarts with every byte it
                    // accepts (issue 9: such a peer held its task forever). Armed only while a
                    // write is blocked.
                    if out.progressed || stall.is_none() {
                        stall = Some(glommio::timer::Timer::new(write_timeout));
                    }
                    if let Some(t) = stall.as_mut() {
                        if Pin::new(t).poll(cx).is_ready() {
                            return Poll::Ready(Event::WriteTimedOut);
                        }
                    }
                }
            }
            if out.progressed {
                last_io = Instant::now();
            }
            // Writing may have pumped queued messages and resumed publishers (local wakes,
            // Resume messages for other shards).
            io.outbox_ready.notify_pending(&shard);
            if !client_id_known && shard.client_id(id).is_some() {
                return Poll::Ready(Event::Identified);
            }
            let status = shard.status(id);
            if status.closing || eof {
                return if out.idle() { Poll::Ready(Event::Done) } else { Poll::Pending };
            }
            if status.memory_paused {
                // The broker-wide budget recovers through other connections' progress, which
                // does not know this one: look again shortly (only while memory is exhausted).
                return Poll::Ready(Event::MemoryPaused);
            }
            if status.read_paused {
                return Poll::Pending; // woken by the shard (resume, drain) or the write side
            }
            // Resumed with packets it sent before the pause still buffered: those first.
            if status.input_waiting && shard.decode_waiting_input(id, Instant::now()) {
                return Poll::Ready(Event::Read);
            }
            if let Some(d) = &io.durable {
                // The log is `pending_records_max` behind: read again after its next sync.
                std::task::ready!(d.poll_backlog(cx, &mut shard));
            }
            let mut scratch = io.scratch.borrow_mut();
            match Pin::new(&mut stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Event::Closed),
                Poll::Ready(Ok(n)) => {
                    last_io = Instant::now();
                    shard.handle_read(id, &scratch[..n], last_io);
                    Poll::Ready(Event::Read)
                }
                Poll::Pending if parks && client_id_known && out.idle() => {
                    if park_at_once {
                        return Poll::Ready(Event::Park);
                    }
                    // Nothing to read or write: park once this has lasted `park_idle`.
                    let timer = idle.get_or_insert_with(|| glommio::timer::Timer::new(park_idle));
                    if Pin::new(timer).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let quiet = last_io.elapsed();
                    if quiet >= park_idle {
                        return Poll::Ready(Event::Park);
                    }
                    let mut rest = glommio::timer::Timer::new(park_idle - quiet);
                    if Pin::new(&mut rest).poll(cx).is_ready() {
                        return Poll::Ready(Event::Park); // quiet for all but a moment
                    }
                    idle = Some(rest);
                    Poll::Pending
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match event {
            Event::Read => {
                io.outbox_ready.notify_pending(&io.shard.borrow());
                // Bounded work per turn: one read and its packets, then the others' turn.
                glommio::yield_if_needed().await;
            }
            Event::Closed => {
                eof = true;
                peer_gone = true;
                io.shard.borrow_mut().handle_closed(id, Instant::now());
                io.outbox_ready.notify();
                // The close's records (a delayed will pending, the session's offline time)
                // have no output to carry them to the log: wake its sync task.
                io.durable_wake();
            }
            Event::WriteFailed => {
                peer_gone = true;
                io.shard.borrow_mut().handle_closed(id, Instant::now());
                io.outbox_ready.notify();
                io.durable_wake();
                break;
            }
            Event::WriteTimedOut => {
                io.shard.borrow_mut().handle_write_timeout(id, Instant::now());
                io.outbox_ready.notify();
                io.durable_wake();
                timed_out = true;
                break;
            }
            Event::Done => break,
            Event::MemoryPaused => glommio::timer::sleep(MEMORY_RECHECK).await,
            Event::Identified => {}
            Event::Park => {
                idle = None;
                park_at_once = false;
                // The task ends here and drops `stream` (its descriptor and armed poll); the
                // duplicate in the epoll set keeps the socket open. No await between the
                // checks in the poll above and this: nothing arrived for it in between.
                if let Some(socket) = stream.park() {
                    if io.shard.park(id, socket) {
                        if let Some(state) = stream.into_parked() {
                            io.shard.park_layers(id, state);
                        }
                        return;
                    }
                }
            }
        }
    }
    // Boxed: the close and drain futures (their timers, the transport's close) are live only
    // at the end, but an async fn is as large as its largest state, so inline they would
    // enlarge every idle connection's task (issue 11).
    drop(connecting); // closed before its CONNACK: its place goes to the next client
    Box::pin(finish(io, stream, id, timed_out, peer_gone)).await;
}

/// The end of a connection: the transport's orderly close, the input drain, the release.
async fn finish<S>(io: Rc<ShardIo>, mut stream: S, id: ConnId, timed_out: bool, peer_gone: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Bounded: a peer that stops reading cannot hold the slot through a TLS close_notify or a
    // WebSocket close frame that never drains. After a write timeout there is no point trying,
    // nor in draining input for a client that cannot read what we wrote.
    if !timed_out {
        let closed = futures_lite::future::or(async { stream.close().await.is_ok() }, async {
            glommio::timer::sleep(CLOSE_TIMEOUT).await;
            false
        })
        .await;
        if closed && !peer_gone && !drain_input(&io, &mut stream).await {
            io.shard.borrow_mut().metrics.close_drains_cut += 1;
        }
    }
    io.shard.borrow_mut().release(id, Instant::now());
    io.outbox_ready.notify();
    io.durable_wake();
}

/// Reads and discards input after our side has shut down writing, until end of stream, an
/// error, [`CLOSE_DRAIN_BYTES_MAX`] bytes or [`CLOSE_DRAIN_TIMEOUT`], so the close that follows
/// does not turn into a TCP reset that hides our last packet from the client. Returns whether
/// the client closed (or the socket failed) within the bounds.
async fn drain_input<S: AsyncRead + Unpin>(io: &ShardIo, stream: &mut S) -> bool {
    let drain = async {
        let mut discarded = 0usize;
        // Bounded by the byte budget (every read consumes at least one byte) and the timer.
        while discarded < CLOSE_DRAIN_BYTES_MAX {
            let n = poll_fn(|cx| {
                let mut scratch = io.scratch.borrow_mut();
                match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                    Poll::Ready(Ok(n)) => Poll::Ready(n),
                    Poll::Ready(Err(_)) => Poll::Ready(0),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            if n == 0 {
                return true;
            }
            discarded += n;
        }
        false
    };
    let timer = async {
        glommio::timer::sleep(CLOSE_DRAIN_TIMEOUT).await;
        false
    };
    futures_lite::future::or(drain, timer).await
}

/// Resumes parked connections (`Parking`) for the life of the shard: those whose socket became
/// readable or closed (the epoll set), and those the shard made ready. Each gets a new task on
/// its socket. Runs in the connections' task queue (spawn it there).
pub async fn parker(io: Rc<ShardIo>) {
    use nix::sys::epoll::EpollEvent;
    let Some(p) = io.shard.parking.as_ref() else { return };
    let mut ready = EpollReady::default();
    let mut events = vec![EpollEvent::empty(); UNPARK_PER_TURN];
    let mut ids = Vec::with_capacity(UNPARK_PER_TURN);
    loop {
        let from_epoll = futures_lite::future::or(
            async {
                p.notify.wait().await;
                false
            },
            async {
                if let Err(e) = ready.wait(&p.epoll).await {
                    // Out of descriptors for the duplicate: look again shortly.
                    tracing::debug!(error = %e, "cannot watch the epoll set");
                    glommio::timer::sleep(MEMORY_RECHECK).await;
                }
                true
            },
        )
        .await;
        let n = p.epoll.wait(&mut events, 0).unwrap_or(0);
        for e in &events[..n] {
            // Connection ids are u32 (the event data is the id it was registered under).
            if let Ok(raw) = u32::try_from(e.data()) {
                resume(&io, ConnId(raw));
            }
        }
        {
            let mut wake = p.wake.borrow_mut();
            let take = wake.len().min(UNPARK_PER_TURN);
            ids.extend(wake.drain(..take));
            if !wake.is_empty() {
                p.notify.notify(); // the rest next turn
            }
        }
        for id in ids.drain(..) {
            resume(&io, id);
        }
        if from_epoll && n == 0 {
            // A readiness with no event (taken meanwhile): do not spin on it.
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        glommio::yield_if_needed().await;
    }
}

/// A new task for parked connection `id` (nothing when it is no longer parked).
fn resume(io: &Rc<ShardIo>, id: ConnId) {
    if let Some((socket, state)) = io.shard.unpark(id) {
        let stream = TcpStream::from(socket2::Socket::from(socket));
        let io = Rc::clone(io);
        let task = match state {
            None => glommio::spawn_local(serve(io, stream, id, true)),
            Some(Parked::Tls(state)) => {
                let stream = tls::TlsStream::resume(stream, state);
                glommio::spawn_local(serve(io, stream, id, true))
            }
            Some(Parked::Ws(frame_bytes_max)) => {
                let stream = WsStream::new(stream, Vec::new(), frame_bytes_max);
                glommio::spawn_local(serve(io, stream, id, true))
            }
            Some(Parked::Wss(state, frame_bytes_max)) => {
                let stream = tls::TlsStream::resume(stream, state);
                let stream = WsStream::new(stream, Vec::new(), frame_bytes_max);
                glommio::spawn_local(serve(io, stream, id, true))
            }
        };
        task.detach();
    }
}

/// Waits, through glommio's reactor, until the shard's epoll set has events. glommio exposes
/// readiness only through its streams, and a stream built from a descriptor arms a read poll
/// on it at once; built on a duplicate of the epoll descriptor, that poll completes when the
/// set has events, and the read that follows fails (`ENOTSOCK`), which is the signal. The
/// test `epoll_readiness_wakes_the_parker` holds glommio to this.
#[derive(Default)]
struct EpollReady {
    armed: Option<TcpStream>,
}

impl EpollReady {
    async fn wait(&mut self, epoll: &nix::sys::epoll::Epoll) -> std::io::Result<()> {
        use futures_lite::io::AsyncReadExt;
        let armed = match &mut self.armed {
            Some(armed) => armed,
            None => {
                let dup = std::net::TcpStream::from(epoll.0.try_clone()?);
                self.armed.insert(TcpStream::from(socket2::Socket::from(dup)))
            }
        };
        let mut byte = [0u8; 1];
        let _ = armed.read(&mut byte).await;
        self.armed = None;
        Ok(())
    }
}

/// TCP keepalive probes start after this much silence on an accepted socket.
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Interval between TCP keepalive probes.
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel drops the connection (a dead peer is found about
/// 60 + 6 x 10 = 120 s after it went silent, even when MQTT keep alive is long).
const TCP_KEEPALIVE_RETRIES: u32 = 6;

/// Kernel-level liveness on an accepted socket: TCP keepalive finds peers that vanished without
/// a FIN, and `TCP_USER_TIMEOUT` (the write deadline) makes the kernel give up on data the peer
/// never acknowledges. Failures are logged and ignored: the write deadline and MQTT keep alive
/// still apply.
fn tune_socket(stream: &impl std::os::fd::AsRawFd, write_timeout: Duration) {
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
    if let Err(e) = sock.set_tcp_user_timeout(Some(write_timeout)) {
        tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    /// Bytes the future of a connection's task may take (issue 11). A parked plain-TCP
    /// connection holds none (nor glommio's task header and armed read `Source`), but every
    /// active connection, and every TLS and WebSocket connection, holds one. Measured in this
    /// (debug) build: 680 (600 before the park timer and flags).
    const CONNECTION_FUTURE_BUDGET: usize = 704;

    #[test]
    fn connection_task_future_is_small() {
        let size = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 << 10)
            .ring_depth(64)
            .spawn(|| async {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let addr = listener.local_addr().expect("addr");
                // The kernel completes the handshake into the backlog: no accept needed first.
                let _client = std::net::TcpStream::connect(addr).expect("connect");
                let stream = listener.accept().await.expect("accept");
                let shard =
                    Shard::new(tern_core::ids::ShardId(0), crate::shard::ShardConfig::for_tests(1));
                let io = Rc::new(ShardIo {
                    shard: ShardCell::new(shard, None),
                    durable: None,
                    scratch: RefCell::new(vec![0; 64].into_boxed_slice()),
                    outbox_ready: Signal::default(),
                    stopping: Cell::new(false),
                    stop_waiters: RefCell::new(Vec::new()),
                    admission: Admission::default(),
                    queues: Queues {
                        connections: glommio::executor().current_task_queue(),
                        handshakes: glommio::executor().current_task_queue(),
                    },
                });
                let id = io.shard.borrow_mut().accept(0, addr, Instant::now()).expect("accepted");
                let task = serve(io, stream, id, false);
                std::mem::size_of_val(&task)
            })
            .expect("executor")
            .join()
            .expect("executor ran");
        eprintln!("connection task future: {size} bytes");
        assert!(size <= CONNECTION_FUTURE_BUDGET, "{size} > {CONNECTION_FUTURE_BUDGET}");
    }

    /// [`EpollReady`] relies on glommio arming a read poll on a stream built from a descriptor
    /// and surfacing its completion as a failed read: it stays pending while the epoll set is
    /// empty of events and completes once a registered socket becomes readable.
    #[test]
    fn epoll_readiness_wakes_the_parker() {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
        use std::io::Write;
        LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 << 10)
            .ring_depth(64)
            .spawn(|| async {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                let mut client = std::net::TcpStream::connect(listener.local_addr().expect("addr"))
                    .expect("connect");
                let (server, _) = listener.accept().expect("accept");
                let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
                epoll.add(&server, EpollEvent::new(EpollFlags::EPOLLIN, 7)).expect("add");
                let mut ready = EpollReady::default();
                let timed_out = futures_lite::future::or(
                    async { ready.wait(&epoll).await.map(|()| false) },
                    async {
                        glommio::timer::sleep(Duration::from_millis(200)).await;
                        Ok(true)
                    },
                )
                .await;
                assert!(timed_out.expect("waits"), "ready with no event");
                client.write_all(b"x").expect("write");
                let woke = futures_lite::future::or(
                    async { ready.wait(&epoll).await.map(|()| true) },
                    async {
                        glommio::timer::sleep(Duration::from_secs(5)).await;
                        Ok(false)
                    },
                )
                .await;
                assert!(woke.expect("waits"), "not woken by a readable socket");
                let mut events = [EpollEvent::empty(); 4];
                assert_eq!(epoll.wait(&mut events, 0).expect("epoll_wait"), 1);
                assert_eq!(events[0].data(), 7);
            })
            .expect("executor")
            .join()
            .expect("executor ran");
    }

    /// The password queue bound, end to end on the runtime side: a check the shard queues is
    /// handed to the pool when the borrow ends; when the pool's queue (`hash_queue_max`) is full
    /// the CONNECT is refused at once with 0x89 Server busy. A pool whose queue nobody drains
    /// makes it exact.
    #[test]
    fn a_full_password_queue_refuses_with_server_busy() {
        use crate::codec::{Connect, Packet, Properties, ProtocolVersion, ReasonCode};
        let pool = crate::auth::HashPool::without_workers(1, 1);
        let filler = crate::auth::HashJob {
            shard: tern_core::ids::ShardId(0),
            ticket: u64::MAX,
            db: Arc::new(crate::auth::PasswordDb::new()),
            username: "nobody".into(),
            password: None,
        };
        pool.try_submit(filler).expect("one job fits");
        let mut cfg = crate::shard::ShardConfig::for_tests(1);
        let mut db = crate::auth::PasswordDb::new();
        let hash = crate::auth::PasswordHash::new_pbkdf2_sha512(b"pw", 10).expect("hash");
        db.upsert("alice", hash).expect("user");
        cfg.security = Arc::new(crate::auth::Security { passwords: Some(Arc::new(db)), acl: None });
        cfg.password_checks_inline = false;
        let cell = ShardCell::new(Shard::new(tern_core::ids::ShardId(0), cfg), Some(pool));
        let now = Instant::now();
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let id = cell.borrow_mut().accept(0, peer, now).expect("accepted");
        let connect = Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive_secs: 60,
            client_id: "busy".into(),
            will: None,
            username: Some("alice".into()),
            password: Some(bytes::Bytes::from_static(b"pw")),
            properties: Properties::new(),
        }));
        let mut buf = bytes::BytesMut::new();
        crate::codec::encode(&connect, ProtocolVersion::V5, &mut buf).expect("encodes");
        cell.borrow_mut().handle_read(id, &buf, now);
        let mut tx = cell.borrow_mut().take_tx(id, now);
        let got = crate::codec::decode(&mut tx, ProtocolVersion::V5, usize::MAX).expect("decodes");
        assert!(
            matches!(&got, Some(Packet::ConnAck(a)) if a.reason == ReasonCode::ServerBusy),
            "{got:?}"
        );
    }

    /// Accepted sockets get TCP keepalive and `TCP_USER_TIMEOUT` (issue 9: a peer that vanished
    /// without a FIN, or stopped acknowledging, held its connection forever).
    #[test]
    fn accepted_sockets_get_keepalive_and_user_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        tune_socket(&server, Duration::from_secs(7));
        let sock = socket2::SockRef::from(&server);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(sock.keepalive_time().expect("TCP_KEEPIDLE"), TCP_KEEPALIVE_IDLE);
        assert_eq!(sock.keepalive_interval().expect("TCP_KEEPINTVL"), TCP_KEEPALIVE_INTERVAL);
        assert_eq!(sock.keepalive_retries().expect("TCP_KEEPCNT"), TCP_KEEPALIVE_RETRIES);
        assert_eq!(
            sock.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(Duration::from_secs(7))
        );
    }
}
