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

/// While the listener is busy (fewer than half its slots free), a connection that has moved no bytes for this
/// long with no request in progress is closed: idle and slow clients give way to the ones with something to
/// say.
const PRESSED_IDLE: Duration = Duration::from_secs(1);
/// The header timeout of a connection accepted while the listener is busy.
const PRESSED_HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an idle connection checks whether the listener has become busy.
const RECHECK: Duration = Duration::from_secs(1);
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
        let share = if limits.proxies.contains(&unmapped(peer.ip())) {
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
        let busy_below = limits.max_connections / 2;
        let header_timeout = if slots.available_permits() < busy_below {
            limits.header_timeout.min(PRESSED_HEADER_TIMEOUT)
        } else {
            limits.header_timeout
        };
        let idle = Idle::new(slots.clone(), busy_below);
        let in_flight = idle.in_flight.clone();
        let mut stopping = stop.clone();
        conns.spawn(async move {
            let _slot = (slot, client);
            let service = hyper::service::service_fn(move |req| {
                let answering = InFlight::enter(&in_flight);
                let answer = handler(req, peer);
                async move {
                    let answer = answer.await;
                    drop(answering);
                    Ok::<_, std::convert::Infallible>(answer)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(
                    TokioIo::new(Stalls::new(stream, WRITE_STALL, idle)),
                    service,
                );
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

/// An IPv4 address mapped into IPv6 (a dual-stack listener's view of an IPv4 client) as that IPv4 address.
pub(super) fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client behind `peer`: when `peer` is one of the trusted `proxies`, the address it forwarded for (the
/// last one in `X-Forwarded-For` that is not itself a trusted proxy), else `peer`.
pub(super) fn forwarded_client(
    proxies: &[IpAddr],
    peer: IpAddr,
    headers: &hyper::HeaderMap,
) -> IpAddr {
    let peer = unmapped(peer);
    if !proxies.contains(&peer) {
        return peer;
    }
    // From the right, the entries the trusted proxies added; the first that is no trusted proxy is the client.
    // An entry that cannot be read there (`ip:port`, `unknown`) ends the walk: what comes before it was
    // written by the client and may be anything.
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    for entry in values.iter().flat_map(|v| v.split(',')).rev() {
        match entry.trim().parse::<IpAddr>().map(unmapped) {
            Ok(a) if proxies.contains(&a) => continue,
            Ok(a) => return a,
            Err(_) => return peer,
        }
    }
    peer
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

/// What a connection's requests being answered tell its [`Idle`]: how many are in progress, and when the
/// last one was answered (milliseconds since [`epoch`]), so time spent answering never counts as idle.
#[derive(Default)]
struct Answering {
    count: std::sync::atomic::AtomicUsize,
    done_ms: std::sync::atomic::AtomicU64,
}

/// The moment the process's connection clocks count from.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// One request of a connection being answered.
struct InFlight(Arc<Answering>);

impl InFlight {
    fn enter(answering: &Arc<Answering>) -> InFlight {
        answering
            .count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(answering.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0
            .done_ms
            .store(now, std::sync::atomic::Ordering::SeqCst);
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// When a connection is idle while its listener is busy (see [`PRESSED_IDLE`]).
struct Idle {
    /// The listener's free slots; fewer than `busy_below` free is busy.
    slots: Arc<tokio::sync::Semaphore>,
    busy_below: usize,
    /// Requests of this connection being answered (a connection answering one is not idle).
    in_flight: Arc<Answering>,
    /// When bytes last moved either way.
    last: std::time::Instant,
    /// The next look at whether to cut the connection.
    check: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Idle {
    fn new(slots: Arc<tokio::sync::Semaphore>, busy_below: usize) -> Idle {
        Idle {
            slots,
            busy_below,
            in_flight: Arc::default(),
            last: std::time::Instant::now(),
            check: None,
        }
    }

    fn moved(&mut self) {
        self.last = std::time::Instant::now();
        self.check = None;
    }

    /// After a read that could not proceed: `Err` when the listener is busy and this connection has been
    /// idle for [`PRESSED_IDLE`]; otherwise wait, looking again now and then.
    fn poll_cut(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            let busy = self.slots.available_permits() < self.busy_below;
            let idle = self
                .in_flight
                .count
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0;
            let answered = Duration::from_millis(
                self.in_flight
                    .done_ms
                    .load(std::sync::atomic::Ordering::SeqCst),
            );
            let since_answer = epoch().elapsed().saturating_sub(answered);
            let idle_for = self.last.elapsed().min(since_answer);
            let wait = if busy && idle {
                if idle_for >= PRESSED_IDLE {
                    return std::task::Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle while the listener is busy",
                    )));
                }
                PRESSED_IDLE - idle_for
            } else {
                RECHECK
            };
            let check = self
                .check
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            match check.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => self.check = None,
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }
}

/// A connection whose writes fail once they have made no progress for `limit`, and whose reads fail once
/// it is idle while the listener is busy ([`Idle`]).
struct Stalls<T> {
    io: T,
    limit: Duration,
    /// Since when a write has been waiting.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    idle: Idle,
}

impl<T> Stalls<T> {
    fn new(io: T, limit: Duration, idle: Idle) -> Self {
        Stalls {
            io,
            limit,
            stalled: None,
            idle,
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
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            std::task::Poll::Pending => this.idle.poll_cut(cx),
            done => {
                this.idle.moved();
                done
            }
        }
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
                this.idle.moved();
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
                this.idle.moved();
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
    fn a_trusted_proxy_names_its_client_and_others_cannot() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 127.0.0.1".parse().unwrap());
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            forwarded_client(&[proxy], mapped, &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "a dual-stack listener sees the proxy as a mapped address"
        );
        let mut spoofed = hyper::HeaderMap::new();
        spoofed.insert("x-forwarded-for", "10.9.9.9, unknown".parse().unwrap());
        assert_eq!(
            forwarded_client(&[proxy], proxy, &spoofed),
            proxy,
            "an entry the proxy wrote that cannot be read ends the walk"
        );
        let other: IpAddr = "198.51.100.4".parse().unwrap();
        assert_eq!(
            forwarded_client(&[proxy], other, &headers),
            other,
            "only proxies may say"
        );
        assert_eq!(forwarded_client(&[], proxy, &headers), proxy);
    }

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

    /// An idle tracker over a listener of 8 slots with `free` of them free (busy below 4).
    fn idle(free: usize) -> Idle {
        let slots = Arc::new(tokio::sync::Semaphore::new(8));
        slots.forget_permits(8 - free);
        Idle::new(slots, 4)
    }

    #[tokio::test]
    async fn idle_connections_give_way_only_while_the_listener_is_busy() {
        use tokio::io::AsyncReadExt as _;
        let read_for = |free: usize, answering: bool, wait: Duration| async move {
            let (io, _peer) = tokio::io::duplex(64);
            let idle = idle(free);
            let _answering = answering.then(|| InFlight::enter(&idle.in_flight));
            let mut conn = Stalls::new(io, WRITE_STALL, idle);
            let mut buf = [0u8; 8];
            tokio::time::timeout(wait, conn.read(&mut buf)).await
        };
        // Busy (2 of 8 free) and idle: cut after PRESSED_IDLE.
        let cut = read_for(2, false, Duration::from_secs(5)).await;
        assert_eq!(
            cut.expect("cut before the timeout").unwrap_err().kind(),
            std::io::ErrorKind::TimedOut
        );
        // Not busy: it waits as long as the client likes (the header timeout is hyper's).
        assert!(
            read_for(6, false, Duration::from_millis(2500))
                .await
                .is_err(),
            "still waiting"
        );
        // Busy, but answering a request: not idle.
        assert!(
            read_for(2, true, Duration::from_millis(2500))
                .await
                .is_err(),
            "still waiting"
        );
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_cut_off() {
        // The other end never reads: the pipe's buffer fills, then writes wait, then fail.
        let (io, _unread) = tokio::io::duplex(64);
        let mut stalls = Stalls::new(io, Duration::from_millis(200), idle(8));
        let started = std::time::Instant::now();
        let err = stalls.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // A reader that keeps up is never cut off.
        let (io, mut reader) = tokio::io::duplex(64);
        let mut stalls = Stalls::new(io, Duration::from_millis(200), idle(8));
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
