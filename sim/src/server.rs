//! The accept loop and one task per connection: HTTP/1.1 with keep-alive through hyper.
//!
//! Each connection task serves requests until the client closes, the connection fails, or a
//! handler asks for a reset (then the connection is dropped mid-flight and closes with an RST;
//! see [`crate::conn`]). Accepted sockets get `TCP_NODELAY` so that SSE frames leave at once.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::conn::{ConnHandle, ResettableStream};
use crate::routes;

/// Accepts connections until `shutdown` resolves. Connections in flight are not waited for.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(connection(app.clone(), stream));
                }
                Err(error) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn connection(app: Arc<App>, stream: TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY");
    }
    let conn = ConnHandle::default();
    let io = TokioIo::new(ResettableStream::new(stream, conn.clone()));
    let service = {
        let conn = conn.clone();
        service_fn(move |request| {
            let (app, conn) = (app.clone(), conn.clone());
            async move { Ok::<_, Infallible>(routes::handle(app, conn, request).await) }
        })
    };
    let http = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::select! {
        result = http => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        () = conn.reset_requested() => tracing::debug!("connection reset on request"),
    }
}
