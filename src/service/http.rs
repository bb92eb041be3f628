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
        let Some(client) = clients.enter(peer.ip(), share) else {
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
                .serve_connection(TokioIo::new(stream), service);
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
