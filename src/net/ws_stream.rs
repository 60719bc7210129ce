//! The WebSocket IO adapter: the upgrade handshake over any byte stream, then [`WsStream`], an
//! `AsyncRead + AsyncWrite` that carries the MQTT byte stream in binary frames, so the
//! connection driver serves WebSocket connections exactly like TCP ones.
//!
//! Reading decodes in the caller's buffer (the shard's scratch buffer): a WebSocket connection
//! waiting for data holds no read buffer, as a TCP one. Writing frames each chunk of MQTT bytes
//! into `out`, which is freed once written. Pings are answered and a close frame is answered and
//! ends the stream; a protocol error sends a close frame with its code and ends the stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ws::{self, close_code, FrameDecoder, HandshakeError};

/// Largest binary frame written: each write of MQTT bytes becomes frames of at most this size.
const FRAME_OUT_BYTES_MAX: usize = 64 * 1024;

/// Decode passes one `poll_read` makes (each reads once from the socket) before yielding, when
/// what arrives is only frame headers and control frames.
const READ_PASSES_MAX: usize = 16;

/// Bytes of a refused upgrade request's connection read and discarded after the HTTP error, so
/// the close does not reset the connection under the response (a few times the largest request).
const REFUSED_DRAIN_BYTES_MAX: usize = 4 * ws::HANDSHAKE_BYTES_MAX;

/// Performs the server side of the upgrade on `stream`: reads the request (at most
/// [`ws::HANDSHAKE_BYTES_MAX`] bytes), answers 101 or an HTTP error. On success returns the bytes
/// that followed the request (the first frames, if the client did not wait). The caller bounds
/// the time.
pub async fn handshake<S>(stream: &mut S, path: &str) -> Result<Vec<u8>, HandshakeFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        // Bounded: `parse_request` refuses a request once it reaches HANDSHAKE_BYTES_MAX.
        let n = stream.read(&mut chunk).await.map_err(HandshakeFailure::Io)?;
        if n == 0 {
            return Err(HandshakeFailure::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        match ws::parse_request(&buf, path) {
            Ok(None) => continue,
            Ok(Some((upgrade, used))) => {
                stream.write_all(&upgrade.response()).await.map_err(HandshakeFailure::Io)?;
                stream.flush().await.map_err(HandshakeFailure::Io)?;
                buf.drain(..used);
                buf.shrink_to_fit();
                return Ok(buf);
            }
            Err(e) => {
                // Best effort: the client learns why; the connection closes either way.
                let _ = stream.write_all(&e.response()).await;
                let _ = stream.flush().await;
                let _ = stream.close().await;
                // Closing a socket with unread input (the rest of an oversized request) makes
                // the kernel send a TCP reset, which can destroy the response before the client
                // reads it: read and discard until the client closes. Bounded here in bytes and
                // by the caller's handshake timeout.
                let mut discarded = 0;
                while discarded < REFUSED_DRAIN_BYTES_MAX {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => discarded += n,
                    }
                }
                return Err(HandshakeFailure::Refused(e));
            }
        }
    }
}

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    /// The request was refused with an HTTP error.
    #[error("{0}")]
    Refused(HandshakeError),
    /// The socket failed or closed.
    #[error("{0}")]
    Io(io::Error),
}

/// Where the WebSocket is in its closing handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// We sent (or queued) a close frame: no more data is written or read.
    Closing,
}

/// MQTT bytes over WebSocket frames on `S` (TCP or TLS).
pub struct WsStream<S> {
    inner: S,
    dec: FrameDecoder,
    /// Bytes that arrived with the upgrade request; decoded before reading the socket.
    early: Vec<u8>,
    /// Encoded frames not yet written, from `out_pos`. Freed when empty.
    out: Vec<u8>,
    out_pos: usize,
    state: State,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Wraps an upgraded stream. `early` are the bytes that followed the upgrade request;
    /// frames with more than `frame_bytes_max` payload bytes are refused (close 1009).
    pub fn new(inner: S, early: Vec<u8>, frame_bytes_max: usize) -> Self {
        Self {
            inner,
            dec: FrameDecoder::new(frame_bytes_max),
            early,
            out: Vec::new(),
            out_pos: 0,
            state: State::Open,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the connection can park as far as WebSocket goes: open, between frames, nothing
    /// held to read or write (issue 11). The wrapped stream has its own condition.
    pub fn parkable(&self) -> bool {
        self.state == State::Open
            && self.dec.is_idle()
            && self.early.is_empty()
            && self.out.is_empty()
    }

    /// The wrapped stream and the frame bound, all a parked connection keeps of this layer; a
    /// stream rebuilt with [`Self::new`] from them (no early bytes) carries on. Call only when
    /// [`Self::parkable`].
    pub fn into_parked(self) -> (S, usize) {
        debug_assert!(self.parkable(), "invariant: only an idle WebSocket stream parks");
        let frame_bytes_max = self.dec.frame_bytes_max();
        (self.inner, frame_bytes_max)
    }

    /// Writes `out` to the socket. `Ready(Ok)` once it is all written.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        // An idle connection keeps no write buffer.
        self.out = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Queues a close frame and stops reading and writing data.
    fn start_close(&mut self, code: u16, reason: &str) {
        if self.state == State::Open {
            ws::encode_close(code, reason, &mut self.out);
            self.state = State::Closing;
        }
    }

    /// One read from the socket (or the early bytes) into `buf`, decoded in place. `Ok(Some(n))`
    /// with n > 0: MQTT bytes; `Ok(Some(0))`: only frame overhead, read again; `Ok(None)`: the
    /// stream ended (EOF, close frame, or protocol error).
    fn poll_read_once(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<Option<usize>>> {
        let n = if self.early.is_empty() {
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?
        } else {
            let n = self.early.len().min(buf.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            if self.early.is_empty() {
                self.early = Vec::new();
            }
            n
        };
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        let data = match self.dec.decode_in_place(&mut buf[..n]) {
            Ok(data) => data,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket protocol error");
                self.start_close(e.code, e.reason);
                return Poll::Ready(Ok(None));
            }
        };
        if let Some(payload) = self.dec.take_pong() {
            if self.state == State::Open {
                ws::encode_pong(&payload, &mut self.out);
            }
        }
        if let Some(code) = self.dec.close_received() {
            // Echo the code (RFC 6455 §5.5.1); 1005 means none was given and is never sent.
            let code = if code == 1005 { close_code::NORMAL } else { code };
            self.start_close(code, "");
            // Data before the close frame is still delivered; the next read reports the end.
            return Poll::Ready(Ok(if data > 0 { Some(data) } else { None }));
        }
        Poll::Ready(Ok(Some(data)))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        for _ in 0..READ_PASSES_MAX {
            // Pongs and close replies go out as soon as the socket takes them. A blocked write
            // does not stop reading: its waker is the same task's.
            if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
                return Poll::Ready(Err(e));
            }
            if this.state == State::Closing {
                return Poll::Ready(Ok(0));
            }
            match std::task::ready!(this.poll_read_once(cx, buf))? {
                None => {
                    // Best effort to send the close frame now; `poll_close` finishes it.
                    let _ = this.poll_flush_out(cx);
                    return Poll::Ready(Ok(0));
                }
                Some(0) => continue,
                Some(n) => {
                    let _ = this.poll_flush_out(cx);
                    return Poll::Ready(Ok(n));
                }
            }
        }
        // Only overhead so far (e.g. a run of pings): let other connections run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_flush_out(cx))?;
        if this.state != State::Open {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = data.len().min(FRAME_OUT_BYTES_MAX);
        this.out.reserve_exact(n + 10);
        ws::encode_binary(&data[..n], &mut this.out);
        // The bytes are accepted; a write that would block finishes in the next call or flush.
        if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.start_close(close_code::NORMAL, "");
        std::task::ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client in memory: what it sent, read from `input`; what the server wrote, in `output`.
    struct Peer {
        input: futures_lite::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl AsyncRead for Peer {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Peer {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.output.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// An oversized upgrade request is refused with 431 and the rest of it is read before the
    /// socket is closed: closing with unread input would make the kernel reset the connection,
    /// which can destroy the 431 before the client reads it.
    #[test]
    fn a_refused_upgrade_reads_the_rest_of_the_request() {
        let request = format!("GET /mqtt HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(12_000));
        let mut peer = Peer {
            input: futures_lite::io::Cursor::new(request.clone().into_bytes()),
            output: Vec::new(),
        };
        let result = futures_lite::future::block_on(handshake(&mut peer, "/mqtt"));
        assert!(matches!(result, Err(HandshakeFailure::Refused(HandshakeError::TooLarge))));
        assert!(peer.output.starts_with(b"HTTP/1.1 431 "), "{:?}", peer.output);
        assert_eq!(peer.input.position(), request.len() as u64, "the whole request was read");
    }
}
