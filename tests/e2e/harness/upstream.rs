//! A scripted HTTP/1.1 upstream for behaviours the simulator cannot show on purpose: odd status
//! codes, empty error bodies, a connection closed after the request arrived, an idle keep-alive
//! closed by the provider. Real sockets on loopback; one thread per connection. The script
//! decides, for the n-th POST overall (0-based), what the server does; other requests (the
//! agent's `/metrics` scrapes) get a 404 and are not counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the upstream does with a request.
pub enum Reply {
    /// Writes these bytes (a whole response) and keeps the connection for the next request.
    Respond(Vec<u8>),
    /// Writes these bytes, waits the given time, then closes the connection.
    RespondThenClose(Vec<u8>, Duration),
    /// Closes the connection without a byte of response.
    Close,
}

/// A JSON response with `status` and `body`, keep-alive.
pub fn json_response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A minimal chat completion with usage.
pub fn chat_ok() -> Vec<u8> {
    json_response(
        200,
        r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
    )
}

type Script = dyn Fn(usize, &[u8]) -> Reply + Send + Sync;

pub struct RawUpstream {
    pub addr: SocketAddr,
    /// Requests received in full.
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RawUpstream {
    pub fn start(script: impl Fn(usize, &[u8]) -> Reply + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the raw upstream");
        let addr = listener.local_addr().expect("raw upstream address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        {
            let (requests, connections, stop) =
                (requests.clone(), connections.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            connections.fetch_add(1, Ordering::Relaxed);
                            let (script, requests) = (script.clone(), requests.clone());
                            std::thread::spawn(move || serve(s, &*script, &requests));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        RawUpstream {
            addr,
            requests,
            connections,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream, script: &Script, requests: &AtomicUsize) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut s, &mut buf) else {
            return;
        };
        if !request.starts_with(b"POST ") {
            // The agent's replica scraper GETs /metrics now and then: not part of any script.
            if s.write_all(&json_response(404, "{}")).is_err() {
                return;
            }
            continue;
        }
        let n = requests.fetch_add(1, Ordering::SeqCst);
        match script(n, &request) {
            Reply::Respond(bytes) => {
                if s.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::RespondThenClose(bytes, after) => {
                let _ = s.write_all(&bytes);
                std::thread::sleep(after);
                return;
            }
            Reply::Close => return,
        }
    }
}

/// One request (head and Content-Length body) off the stream; `None` when the peer closed.
fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + len {
                return Some(buf.drain(..end + len).collect());
            }
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
