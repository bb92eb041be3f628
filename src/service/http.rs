//! The one small HTTP server every listener of the service uses (webhooks, metrics, and the web catalog to
//! come): bind, accept with a bound on open connections, serve HTTP/1.1 with a header-read timeout, stop when
//! told, and give the connections in flight a moment to finish.
//!
//! Why not axum: each listener has a handful of routes that a `match` on the path says plainly, and what the
//! listeners need from a server (connection bounds, timeouts, a clean stop) sits here, below any router; axum
//! would add a router, tower layers and about ten crates to the build for none of it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::ServiceError;

/// An answer with its whole body.
pub(super) type Answer = Response<Full<Bytes>>;

/// How much of the server one listener may use.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    /// Connections served at once; more are closed as they arrive.
    pub(super) max_connections: usize,
    /// Connections one client address may hold at once, so that no client takes every slot and starves the
    /// others; more from that address are closed as they arrive.
    pub(super) max_per_client: usize,
    /// Addresses `max_per_client` does not apply to: reverse proxies, which carry many clients.
    pub(super) proxies: Vec<IpAddr>,
    /// How long a client may take to send a request's headers.
    pub(super) header_timeout: Duration,
}

/// How long connections in flight may finish after the listener is told to stop.
const DRAIN: Duration = Duration::from_secs(2);
/// How long a client may leave an answer unread before its connection is closed: one that stops reading
/// would otherwise hold its slot and the answer's memory for as long as it likes.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Bind the listener `what` (named in the error with its configuration `key`) now, so a bad address stops the
/// start instead of failing later.
pub(super) async fn bind(
    addr: SocketAddr,
    what: &'static str,
    key: &'static str,
) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServiceError::Bind {
            what,
            key,
            addr,
            error,
        })
}

/// Serve `handler` (given each request and the client's address) on `listener` until `stop` turns true, then let the connections in flight finish (for
/// `DRAIN` at most).
pub(super) async fn serve<H, F>(
    listener: TcpListener,
    what: &'static str,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    match listener.local_addr() {
        Ok(addr) => tracing::info!("{what} listener on {addr}"),
        Err(_) => tracing::info!("{what} listener started"),
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let clients = Clients::default();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let share = if limits.proxies.contains(&peer.ip()) {
            limits.max_connections
        } else {
            limits.max_per_client
        };
        let Some(client) = clients.enter(client_key(peer.ip()), share) else {
            // This client holds its share of connections: close this one at once.
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Too many open connections: close this one at once.
            continue;
        };
        let handler = handler.clone();
        let header_timeout = limits.header_timeout;
        let mut stopping = stop.clone();
        conns.spawn(async move {
            let _slot = (slot, client);
            let service = hyper::service::service_fn(move |req| {
                let answer = handler(req, peer);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(Stalls::new(stream, WRITE_STALL)), service);
            let mut conn = std::pin::pin!(conn);
            let served = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopping.changed() => {
                    // An idle keep-alive connection closes at once; a request in flight is answered first.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!("{what} connection: {e}");
            }
        });
        // Forget the connections that ended.
        while conns.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// The address a client is counted as: itself for IPv4; its /64 network for IPv6, where one host easily
/// has many addresses (an IPv4 address mapped into IPv6 counts as that IPv4 address).
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A connection whose writes fail once they have made no progress for `limit`.
struct Stalls<T> {
    io: T,
    limit: Duration,
    /// Since when a write has been waiting.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Stalls<T> {
    fn new(io: T, limit: Duration) -> Self {
        Stalls {
            io,
            limit,
            stalled: None,
        }
    }

    /// After a write that could not proceed: `Err` once it has waited `limit`.
    fn waited(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stalls<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stalls<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.io).poll_write(cx, buf) {
            std::task::Poll::Pending => this.waited(cx),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            std::task::Poll::Pending => this.waited(cx),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Open connections per client address.
#[derive(Default, Clone)]
struct Clients(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open connection of a client; counted until dropped.
struct ClientSlot {
    clients: Clients,
    ip: IpAddr,
}

impl Clients {
    /// Count a new connection from `ip`, unless it already holds `max` of them.
    fn enter(&self, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A plain answer of `content_type`.
pub(super) fn answer(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_network() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client_key(v4), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_key(mapped), v4);
        let clients = Clients::default();
        let first = clients.enter(v4, 2).unwrap();
        let _second = clients.enter(v4, 2).unwrap();
        assert!(clients.enter(v4, 2).is_none(), "a third connection");
        assert!(clients.enter(client_key(a), 2).is_some(), "another client");
        drop(first);
        assert!(clients.enter(v4, 2).is_some(), "a slot came free");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off() {
        // The other end never reads: the pipe's buffer fills, then writes wait, then fail.
        let (io, _unread) = tokio::io::duplex(64);
        let mut stalls = Stalls::new(io, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = stalls.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // A reader that keeps up is never cut off.
        let (io, mut reader) = tokio::io::duplex(64);
        let mut stalls = Stalls::new(io, Duration::from_millis(200));
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut sink)
                .await
                .map(|_| sink.len())
        });
        stalls.write_all(&[1u8; 4096]).await.unwrap();
        stalls.shutdown().await.unwrap();
        drop(stalls);
        assert_eq!(drain.await.unwrap().unwrap(), 4096);
    }
}
