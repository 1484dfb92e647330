//! The listeners' connections (gRPC and HTTP alike), bounded: at most
//! `max_connections` open at once per listener (one more is accepted and
//! closed at once, so the client fails fast instead of waiting in the
//! kernel's backlog), and each closed after `idle_timeout` with no byte
//! read or written, so idle clients cannot hold every slot.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
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

/// The connection slots of one listener: at most `max_connections` open,
/// each closed after `idle_timeout` without traffic.
#[derive(Clone)]
pub struct Limiter {
    slots: Arc<Semaphore>,
    max_connections: usize,
    idle_timeout: Duration,
}

impl Limiter {
    pub fn new(max_connections: usize, idle_timeout: Duration) -> Self {
        Limiter {
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            idle_timeout,
        }
    }

    /// The accepted `stream` as a [`Conn`] holding a slot, or `None` (and
    /// the stream closed) when every slot is taken.
    pub fn admit(&self, stream: TcpStream, peer: SocketAddr) -> Option<Conn> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
            tracing::warn!(%peer, max_connections = self.max_connections, "too many connections; closing the new one");
            drop(stream);
            return None;
        };
        // Small replies must not wait for Nagle's algorithm, and keepalive
        // finds peers that vanished without closing.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        Some(Conn {
            stream,
            _permit: permit,
            idle_timeout: self.idle_timeout,
            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
        })
    }
}

/// The next connection `listener` accepts within `limiter`'s slots.
async fn accept_within(listener: &TcpListener, limiter: &Limiter) -> (Conn, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some(conn) = limiter.admit(stream, peer) {
                    return (conn, peer);
                }
            }
            // A failed accept (out of file descriptors, a reset before
            // accept) is about that one connection.
            Err(error) => tracing::warn!(%error, "accept failed"),
        }
    }
}

/// The gRPC listener's accepted connections, within the limits.
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
    idle_timeout: Duration,
) -> impl Stream<Item = io::Result<Conn>> {
    let limiter = Limiter::new(max_connections, idle_timeout);
    futures::stream::unfold(listener, move |listener| {
        let limiter = limiter.clone();
        async move {
            let (conn, _) = accept_within(&listener, &limiter).await;
            Some((Ok(conn), listener))
        }
    })
}

/// The HTTP listener, within the same limits, for `axum::serve`.
pub struct HttpListener {
    pub listener: TcpListener,
    pub limiter: Limiter,
}

impl axum::serve::Listener for HttpListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        accept_within(&self.listener, &self.limiter).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// The same limits in front of HTTPS (`axum_server`'s acceptor chain: this
/// one runs before the TLS handshake).
impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for Limiter {
    type Stream = Conn;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Conn, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        std::future::ready(match self.admit(stream, peer) {
            Some(conn) => Ok((conn, service)),
            None => Err(io::Error::other("too many connections")),
        })
    }
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
