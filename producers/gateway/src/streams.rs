//! What a connection may hold, and for how long: caps on the live feeds open at once (per
//! client and in total), keep-alive comments on a quiet feed, a write timeout that closes
//! the connection of a reader that stopped reading, and a time limit on every other
//! request.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::app::AppState;
use crate::error::ApiError;

/// How long a client refused for the total cap is asked to wait.
const RETRY_STREAM_SECS: &str = "5";

/// The live feeds open now.
#[derive(Debug)]
pub struct Streams {
    per_client: Mutex<HashMap<String, usize>>,
    max_per_client: usize,
    max_total: usize,
    /// `gateway_feed_streams`: also the total the cap is checked against.
    open: IntGauge,
}

impl Streams {
    pub fn new(max_per_client: usize, max_total: usize, open: IntGauge) -> Arc<Self> {
        Arc::new(Streams {
            per_client: Mutex::new(HashMap::new()),
            max_per_client,
            max_total,
            open,
        })
    }

    /// A place for one more feed of `client`, held until the guard is dropped (when the
    /// response body is, however the stream ended); or the refusal: 429 over the client's
    /// cap (it is the one holding too many), 503 over the total (nobody's fault, retry).
    pub fn open(self: &Arc<Self>, client: &str) -> Result<StreamGuard, ApiError> {
        let mut per_client = self.per_client.lock().expect("streams lock");
        let total: usize = per_client.values().sum();
        let mine = per_client.get(client).copied().unwrap_or(0);
        if mine >= self.max_per_client {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "this client already has {mine} live feeds open, the most it may; close one first"
                ),
            )
            .header(header::RETRY_AFTER, RETRY_STREAM_SECS));
        }
        if total >= self.max_total {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                "the gateway serves as many live feeds as it may; retry later",
            )
            .header(header::RETRY_AFTER, RETRY_STREAM_SECS));
        }
        *per_client.entry(client.to_owned()).or_default() += 1;
        self.open.set((total + 1) as i64);
        Ok(StreamGuard {
            streams: self.clone(),
            client: client.to_owned(),
        })
    }
}

/// One open feed, counted until dropped.
#[derive(Debug)]
pub struct StreamGuard {
    streams: Arc<Streams>,
    client: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut per_client = self.streams.per_client.lock().expect("streams lock");
        if let Some(count) = per_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.client);
            }
        }
        self.streams
            .open
            .set(per_client.values().sum::<usize>() as i64);
    }
}

/// The SSE body passed through from order-view, holding `guard` while it lives, with a
/// comment line whenever nothing came for `keep_alive`. Comments only go between events
/// (after a blank line), so they never split one.
pub fn live<S, E>(
    upstream: S,
    guard: StreamGuard,
    keep_alive: Duration,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    futures::stream::unfold(
        (Box::pin(upstream), guard, true),
        move |(mut upstream, guard, at_boundary)| async move {
            loop {
                match tokio::time::timeout(keep_alive, upstream.next()).await {
                    Ok(Some(Ok(bytes))) => {
                        let at_boundary = if bytes.is_empty() {
                            at_boundary
                        } else {
                            bytes.ends_with(b"\n\n") || bytes.ends_with(b"\r\n\r\n")
                        };
                        return Some((Ok(bytes), (upstream, guard, at_boundary)));
                    }
                    Ok(Some(Err(e))) => return Some((Err(e), (upstream, guard, at_boundary))),
                    Ok(None) => return None,
                    Err(_) if at_boundary => {
                        return Some((
                            Ok(Bytes::from_static(b": keep-alive\n\n")),
                            (upstream, guard, at_boundary),
                        ));
                    }
                    // Mid-event: the rest of it is on its way.
                    Err(_) => {}
                }
            }
        },
    )
}

/// Middleware: every route but the live feed answers within `request_timeout` (plus the
/// longest wait, for requests that ask to wait), or gets 503 with `Retry-After`.
pub async fn request_timeout(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/feed" {
        return next.run(request).await;
    }
    let waits = request.uri().query().is_some_and(|q| q.contains("wait="))
        || request.headers().contains_key("prefer");
    let limit = app.request_timeout + if waits { app.max_wait } else { Duration::ZERO };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            app.metrics.request_timeouts.inc();
            tracing::warn!("request timed out");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long and was abandoned; retry later",
            )
            .header(header::RETRY_AFTER, "1")
            .into_response()
        }
    }
}

/// The gateway's listener: every accepted connection has a write timeout.
#[derive(Debug)]
pub struct TimedListener {
    inner: TcpListener,
    write_timeout: Duration,
    /// `gateway_write_timeouts_total`.
    timeouts: IntCounter,
}

impl TimedListener {
    pub fn new(inner: TcpListener, write_timeout: Duration, timeouts: IntCounter) -> Self {
        TimedListener {
            inner,
            write_timeout,
            timeouts,
        }
    }
}

impl axum::serve::Listener for TimedListener {
    type Io = WriteTimeout<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let io = WriteTimeout::new(io, self.write_timeout, Some(self.timeouts.clone()));
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The peer address of a connection, as the per-address limits see it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TimedListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TimedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A connection whose writes fail once the peer has taken nothing for `timeout`: the
/// server then closes it and drops the response (and with it a feed's place and its
/// upstream subscription). Without it, a reader that stops reading would hold them for as
/// long as it keeps the socket open.
#[derive(Debug)]
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Set while a write is blocked: when it fires, the write fails.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Counts the connections given up on.
    timeouts: Option<IntCounter>,
}

impl<T> WriteTimeout<T> {
    /// `timeouts` counts the connections given up on.
    pub fn new(inner: T, timeout: Duration, timeouts: Option<IntCounter>) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
            timeouts,
        }
    }

    /// Passes a write's outcome on; a pending write starts (or checks) the clock.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        if let Some(timeouts) = &self.timeouts {
            timeouts.inc();
        }
        tracing::info!("client stopped reading, closing its connection");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "write timed out: the client stopped reading",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(per_client: usize, total: usize) -> Arc<Streams> {
        Streams::new(per_client, total, IntGauge::new("g", "g").unwrap())
    }

    #[test]
    fn caps_per_client_and_in_total() {
        let streams = streams(2, 3);
        let a1 = streams.open("a").unwrap();
        let _a2 = streams.open("a").unwrap();
        assert_eq!(streams.open("a").unwrap_err().status, 429);
        let _b1 = streams.open("b").unwrap();
        let full = streams.open("c").unwrap_err();
        assert_eq!(full.status, 503);
        assert_eq!(streams.open.get(), 3);
        drop(a1);
        assert_eq!(streams.open.get(), 2);
        let _c1 = streams.open("c").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_comments_only_between_events() {
        let (send, receive) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, ()>>();
        let upstream = tokio_stream_of(receive);
        let guard = streams(1, 1).open("a").unwrap();
        let mut body = Box::pin(live(upstream, guard, Duration::from_secs(10)));
        send.send(Ok(Bytes::from_static(b"event: x\ndata: ")))
            .unwrap();
        assert_eq!(
            &body.next().await.unwrap().unwrap()[..],
            b"event: x\ndata: "
        );
        // Mid-event: quiet for three intervals, and still no comment.
        let quiet = tokio::time::timeout(Duration::from_secs(30), body.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        send.send(Ok(Bytes::from_static(b"1\n\n"))).unwrap();
        assert_eq!(&body.next().await.unwrap().unwrap()[..], b"1\n\n");
        let started = tokio::time::Instant::now();
        assert_eq!(
            &body.next().await.unwrap().unwrap()[..],
            b": keep-alive\n\n"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(send);
        assert!(body.next().await.is_none());
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut receive: tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> impl Stream<Item = T> + Send + 'static {
        futures::stream::poll_fn(move |cx| receive.poll_recv(cx))
    }
}
