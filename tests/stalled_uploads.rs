//! Stalled uploads over real sockets: the memory a request holds follows the bytes it
//! sent, never the `Content-Length` it declared or the body limit, and a body-read
//! timeout answers them 408. Alone in its binary: it measures this process's RSS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_mcp_policy::{Policy, PolicyLayer};

const UPLOADS: usize = 100;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

async fn serve(layer: PolicyLayer) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mcp = tower::service_fn(|_: Request<axum::body::Body>| async {
        Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
    });
    let app = Router::new().nest_service("/mcp", mcp).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, task)
}

/// Opens `UPLOADS` uploads that declare `declared` bytes, send `sent`, and stall.
async fn stall(address: SocketAddr, declared: usize, sent: usize) -> Vec<TcpStream> {
    let mut uploads = Vec::new();
    let body = vec![b' '; sent];
    for _ in 0..UPLOADS {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        uploads.push(stream);
    }
    uploads
}

fn policy() -> Policy {
    r#"{"version":"1","default":"allow"}"#.parse().unwrap()
}

/// RSS added per stalled upload that declared `declared` bytes and sent `sent`.
async fn held_per_upload(declared: usize, sent: usize) -> u64 {
    let (address, server) = serve(PolicyLayer::new(policy())).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = rss_bytes();
    let uploads = stall(address, declared, sent).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_bytes();
    server.abort();
    drop(uploads);
    after.saturating_sub(before) / UPLOADS as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_hold_what_they_sent_and_time_out() {
    const KIB: usize = 1024;
    let limit = tower_mcp_policy::PolicyLayer::DEFAULT_MAX_BODY;
    let mut report = Vec::new();
    // Warm up the runtime, the allocator's arenas and the listener path first.
    held_per_upload(2 * KIB, KIB).await;
    for (declared, sent) in [(limit, KIB), (2 * KIB, KIB), (limit, 256 * KIB)] {
        let held = held_per_upload(declared, sent).await;
        report.push(format!(
            "declared {declared} B, sent {sent} B: {} KiB held per upload",
            held / 1024
        ));
        // The connection's own buffers, plus at most about twice what was sent: never
        // the declared length or the 4 MiB limit.
        let bound = 2 * sent as u64 + 160 * 1024;
        assert!(held < bound, "{}: over {bound} B", report.last().unwrap());
    }
    println!("{UPLOADS} stalled uploads:\n{}", report.join("\n"));

    // With a body-read timeout, every stalled upload is answered 408 and let go.
    let layer = PolicyLayer::new(policy()).body_read_timeout(Duration::from_millis(200));
    let (address, server) = serve(layer).await;
    let uploads = stall(address, limit, KIB).await;
    for mut upload in uploads {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), upload.read_to_end(&mut answer))
            .await
            .expect("answered well before 10 s")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("did not arrive within 200ms"), "{answer}");
    }
    server.abort();
}
