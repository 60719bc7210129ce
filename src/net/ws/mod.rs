//! WebSocket (RFC 6455), server side, without IO. The IO adapter that drives it is
//! [`super::ws_stream`].
//!
//! - [`handshake`]: the HTTP/1.1 upgrade request (parsed by `httparse`) and its responses;
//!   subprotocol `mqtt` (`mqttv3.1` for old clients).
//! - [`frame`]: the frame decoder (hand-written, so that it holds no per-connection buffer) and
//!   the server's frame encoders.

pub mod frame;
pub mod handshake;

pub use frame::{
    close_code, encode_binary, encode_close, encode_header, encode_pong, FrameDecoder, FrameError,
};
pub use handshake::{accept_key, parse_request, HandshakeError, Upgrade, HANDSHAKE_BYTES_MAX};
