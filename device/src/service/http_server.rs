//! The HTTP server loop: axum's router on hyper's HTTP/1 connections, with the limits a service
//! exposed to misbehaving clients needs (`axum::serve` has none of them):
//!
//! * **header timeout**: a connection that has not sent a whole request head within
//!   [`HttpLimits::header_timeout`] is closed; this also closes idle keep-alive connections
//!   (hyper starts the timer whenever it waits for the next request);
//! * **connection cap**: at most [`HttpLimits::max_connections`] at once; more are accepted and
//!   closed at once, so that a flood cannot exhaust the file descriptors the frame source needs;
//! * **accept errors** (EMFILE when the process is out of descriptors) are logged and retried
//!   after a pause, never fatal.
//!
//! On shutdown the loop stops accepting, asks every connection to finish its response and waits
//! for them (the caller bounds the wait).

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time a client has to send a request head, and the longest idle keep-alive.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 128,
        }
    }
}

/// Serve `app` on `listener` until `stop` turns true, then wait for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("HTTP: cannot accept a connection ({e}); retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(
                "HTTP: {} connections open, closing a new one",
                limits.max_connections
            );
            drop(stream);
            continue;
        };
        let (app, stop) = (app.clone(), stop.clone());
        connections.spawn(async move {
            let _permit = permit;
            connection(stream, app, limits, stop).await;
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// One connection, until the client closes it, a limit does, or the server stops.
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let stopping = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("HTTP connection: {e}");
            }
            false
        }
        _ = stop.wait_for(|s| *s) => true,
    };
    if stopping {
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}
