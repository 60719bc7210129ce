//! IO only: accept loops and the connection driver. Moves bytes between sockets and the shard;
//! all protocol decisions are the shard's (`crate::shard`).
//!
//! Memory per idle connection: the driver reads into one scratch buffer per shard and hands the
//! bytes to the shard at once, so a connection waiting for data holds no read buffer of its own
//! (glommio's `poll_read` arms a readiness poll that holds only a waker). A partial packet is
//! kept in the connection's `rx` until it completes.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::shard::{ConnId, Shard};

/// Size of the per-shard scratch read buffer.
pub const SCRATCH_BYTES: usize = 64 * 1024;

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

/// Per-shard resources shared by the IO tasks of that shard.
pub struct ShardIo {
    /// The shard state.
    pub shard: RefCell<Shard>,
    /// Scratch read buffer, borrowed only inside one `poll`.
    pub scratch: RefCell<Box<[u8]>>,
    /// Wakes the mesh flusher when an outbox may have grown.
    pub outbox_ready: Notify,
    /// Set when the shard is shutting down: accept loops stop.
    pub stopping: Cell<bool>,
}

/// Accepts connections on `listener` until the shard stops.
pub async fn accept_loop(io: Rc<ShardIo>, listener: TcpListener, index: usize) {
    let mut backoff = Duration::from_millis(5);
    while !io.stopping.get() {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            None
        })
        .await;
        let stream = match accepted {
            None => continue, // periodic check of `stopping`
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
        let id = io.shard.borrow_mut().accept(index, peer, Instant::now());
        let Some(id) = id else { continue }; // over the limit: dropping closes it
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(serve(Rc::clone(&io), stream, id)).detach();
    }
}

/// What woke the connection task.
enum Event {
    /// Output to write or a close to carry out.
    Work,
    /// Data was read and handed to the shard.
    Read,
    /// End of stream or socket error.
    Closed,
}

/// Drives one connection until it closes.
async fn serve(io: Rc<ShardIo>, mut stream: TcpStream, id: ConnId) {
    loop {
        let tx = io.shard.borrow_mut().take_tx(id);
        if !tx.is_empty() && stream.write_all(&tx).await.is_err() {
            io.shard.borrow_mut().handle_closed(id, Instant::now());
            io.outbox_ready.notify();
            break;
        }
        let status = io.shard.borrow().status(id);
        if status.closing && !status.has_tx {
            break;
        }
        if status.has_tx {
            continue;
        }
        if status.read_paused {
            // Backpressure: our output or a peer shard's channel is full. Poll again shortly
            // rather than reading more; this path only runs under overload.
            glommio::timer::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let event = poll_fn(|cx| {
            {
                let mut shard = io.shard.borrow_mut();
                shard.register_waker(id, cx.waker());
                let st = shard.status(id);
                if st.has_tx || st.closing {
                    return Poll::Ready(Event::Work);
                }
            }
            let mut scratch = io.scratch.borrow_mut();
            match Pin::new(&mut stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Event::Closed),
                Poll::Ready(Ok(n)) => {
                    io.shard.borrow_mut().handle_read(id, &scratch[..n], Instant::now());
                    Poll::Ready(Event::Read)
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match event {
            Event::Work => {}
            Event::Read => {
                io.outbox_ready.notify();
                glommio::yield_if_needed().await;
            }
            Event::Closed => {
                io.shard.borrow_mut().handle_closed(id, Instant::now());
                io.outbox_ready.notify();
            }
        }
    }
    let _ = stream.close().await;
    io.shard.borrow_mut().release(id, Instant::now());
    io.outbox_ready.notify();
}
