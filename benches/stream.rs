//! Throughput of the streaming `tools/list` filter by chunk size: one 1 MiB SSE event
//! (a tool list with one hidden tool) through `PolicyLayer`, delivered in chunks of 1 B
//! to 64 KiB. Filtering costs O(bytes) however the stream is chunked, so the figures
//! should differ only by the per-frame overhead.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Policy, PolicyLayer};

fn event() -> Bytes {
    let mut tools: Vec<_> = (0..8_200)
        .map(|i| json!({"name": format!("tool_{i:05}"), "description": "d".repeat(100)}))
        .collect();
    tools.push(json!({"name": "delete_everything"}));
    let message = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}});
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

fn bench(c: &mut Criterion) {
    let event = event();
    let policy: Policy = r#"{"version":"1","default":"allow","hide":["delete_*"]}"#
        .parse()
        .unwrap();
    let layer = PolicyLayer::new(policy);
    let mut group = c.benchmark_group("stream/tools_list_sse");
    group.throughput(Throughput::Bytes(event.len() as u64));
    group.sample_size(10);
    for chunk in [1usize, 64, 1024, 16 * 1024, 64 * 1024] {
        let chunks: Vec<Bytes> = (0..event.len())
            .step_by(chunk)
            .map(|start| event.slice(start..(start + chunk).min(event.len())))
            .collect();
        let upstream = tower::service_fn(move |_: Request<PolicyBody>| {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
            let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)));
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let service = layer.clone().layer(upstream);
        let request = || {
            Request::post("/mcp")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                )))
                .unwrap()
        };
        let check = futures::executor::block_on(async {
            let response = service.clone().oneshot(request()).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        });
        assert!(!check.windows(6).any(|w| w == b"delete"), "filtered");
        group.bench_function(BenchmarkId::from_parameter(format!("{chunk}B")), |b| {
            b.iter(|| {
                futures::executor::block_on(async {
                    let response = service.clone().oneshot(request()).await.unwrap();
                    black_box(response.into_body().collect().await.unwrap().to_bytes())
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
