//! The gRPC listener's connections, bounded: at most `max_connections`
//! open at once (one more is accepted and closed at once, so the client
//! fails fast instead of waiting in the kernel's backlog), and each closed
//! after `idle_timeout` with no byte read or written, so idle clients
//! cannot hold every slot.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics as m;

/// Idle time before TCP keepalive probes start.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The accepted connections of `listener`, within the limits.
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
    idle_timeout: Duration,
) -> impl Stream<Item = io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(max_connections));
    futures::stream::unfold(listener, move |listener| {
        let slots = slots.clone();
        async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // A failed accept (out of file descriptors, a reset
                    // before accept) is about that one connection.
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
                    tracing::warn!(%peer, max_connections, "too many connections; closing the new one");
                    drop(stream);
                    continue;
                };
                // Small replies must not wait for Nagle's algorithm, and
                // keepalive finds peers that vanished without closing.
                let _ = stream.set_nodelay(true);
                let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                metrics::gauge!(m::CONNECTIONS).increment(1.0);
                let conn = Conn {
                    stream,
                    _permit: permit,
                    idle_timeout,
                    idle: Box::pin(tokio::time::sleep(idle_timeout)),
                };
                return Some((Ok(conn), listener));
            }
        }
    })
}

/// One accepted connection; gives its slot back when dropped.
pub struct Conn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl Conn {
    fn active(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
    }

    /// Called when the socket itself is pending: an error once idle too
    /// long, which makes the server drop the connection.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.idle.as_mut().poll(cx).map(|()| {
            metrics::counter!(m::CONNECTIONS_IDLE_CLOSED).increment(1);
            io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.active();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.active();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.active();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}
