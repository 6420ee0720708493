//! [`QuickAckRead`]: the read half of a client connection that acknowledges every TCP segment at
//! once (Linux `TCP_QUICKACK`, re-armed after each read because the kernel drops back to delayed
//! acknowledgements on its own).
//!
//! Why: a client that leaves Nagle's algorithm on (the Rust `pulsar` crate does; the official
//! Java, C++ and Go clients set `TCP_NODELAY`) holds each small frame — an ACK, a FLOW — until
//! its previous segment is acknowledged. While the broker has nothing to send back (a consumer
//! out of permits), that acknowledgement waits for the broker's delayed-ACK timer (up to 40 ms),
//! so the FLOW that would refill the consumer sits in the client's socket: catch-up consumption
//! ran at ~44k msg/s with idle CPUs, ~97k with the client's Nagle off. Acknowledging at once
//! costs one `setsockopt` per read (reads are large under load) and an occasional bare ACK.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

/// A read half that re-arms `TCP_QUICKACK` after every read that returned data.
#[derive(Debug)]
pub struct QuickAckRead {
    inner: OwnedReadHalf,
    /// Cleared after the first failure (e.g. a platform without the option): no retries.
    enabled: bool,
}

impl QuickAckRead {
    pub fn new(inner: OwnedReadHalf) -> Self {
        let mut this = QuickAckRead {
            inner,
            enabled: cfg!(target_os = "linux"),
        };
        this.rearm();
        this
    }

    fn rearm(&mut self) {
        if !self.enabled {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            let socket = socket2::SockRef::from(self.inner.as_ref());
            if let Err(e) = socket.set_tcp_quickack(true) {
                tracing::debug!(error = %e, "TCP_QUICKACK unavailable; delayed ACKs stay on");
                self.enabled = false;
            }
        }
    }
}

impl AsyncRead for QuickAckRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.rearm();
        }
        polled
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Request/response rounds: answering right after a read puts the socket in the kernel's
    /// interactive ("pingpong") mode, which delays ACKs and reads back as quickack off.
    /// Returns whether quickack was on after each server-side read.
    async fn rounds<R: AsyncRead + Unpin>(
        wrap: impl FnOnce(OwnedReadHalf) -> R,
        quickack: impl Fn(&R) -> bool,
    ) -> Vec<bool> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, mut write) = server.into_split();
        let mut read = wrap(read);
        let mut armed = Vec::new();
        for round in 0..8u8 {
            client.write_all(&[round; 10]).await.unwrap();
            let mut got = [0u8; 10];
            read.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round; 10], "bytes pass through unchanged");
            armed.push(quickack(&read));
            write.write_all(&[round]).await.unwrap();
            let mut answer = [0u8; 1];
            client.read_exact(&mut answer).await.unwrap();
        }
        armed
    }

    fn quickack_of(half: &OwnedReadHalf) -> bool {
        socket2::SockRef::from(half.as_ref())
            .tcp_quickack()
            .unwrap()
    }

    #[tokio::test]
    async fn quickack_is_rearmed_after_every_read() {
        // Control: a plain socket drops to delayed ACKs once the exchange is interactive.
        let plain = rounds(|r| r, quickack_of).await;
        assert!(
            plain.iter().any(|on| !on),
            "the kernel never left quickack mode, so this test could not fail: {plain:?}"
        );
        let wrapped = rounds(QuickAckRead::new, |r| quickack_of(&r.inner)).await;
        assert!(
            wrapped.iter().all(|on| *on),
            "quickack after each read: {wrapped:?}"
        );
    }
}
