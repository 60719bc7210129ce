//! An in-memory byte pipe for the TLS stream tests (`tests/tls_records.rs`,
//! `tests/tls_footprint.rs`, included with `#[path]` so a test needs no broker): one end reads
//! `rx` and writes `tx`; reads are `Pending` while `rx` is empty and writes while `blocked`
//! (a peer that reads nothing). The tests poll by hand: nothing waits for a wake.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};

/// Bytes in flight in one direction.
pub type Bytes = Rc<RefCell<VecDeque<u8>>>;

/// One end of the pipe.
pub struct Pipe {
    pub rx: Bytes,
    pub tx: Bytes,
    pub blocked: Rc<Cell<bool>>,
}

impl Pipe {
    /// The end that reads `rx` and writes `tx`, never blocked.
    pub fn new(rx: &Bytes, tx: &Bytes) -> Pipe {
        Pipe { rx: Rc::clone(rx), tx: Rc::clone(tx), blocked: Rc::default() }
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut rx = self.rx.borrow_mut();
        if rx.is_empty() {
            return Poll::Pending;
        }
        let n = rx.len().min(buf.len());
        for (b, x) in buf.iter_mut().zip(rx.drain(..n)) {
            *b = x;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.blocked.get() {
            return Poll::Pending;
        }
        self.tx.borrow_mut().extend(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
