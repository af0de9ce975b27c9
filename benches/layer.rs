//! Per-request cost in-process (`oneshot`) of one trivial JSON-RPC inner service: bare,
//! under `tower_governor`, and under `PolicyLayer`, in one run.
//!
//! Every variant gets the same ~200-byte `tools/call` POST with an `Authorization`
//! header. `tower_governor` keys its limiter on that header (the same key our grant
//! scope uses) with a quota that never trips; `PolicyLayer` enforces the motivating
//! policy (one tool, one per-grant limit) with a budget that never trips either.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body as AxumBody;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_mcp_policy::{Policy, PolicyLayer};

const BODY: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"binance_us_close_listen_key","arguments":{"listenKey":"pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a8"},"_meta":{"progressToken":42}}}"#;
const RESULT: &str = r#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;
const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"binance_us_close_listen_key":{
    "limits":[{"counter":"rate","window":"day","max":4000000000,"scope":"grant"}]}}}"#;

/// A trivial JSON-RPC server: reads the whole body, answers a fixed result.
#[derive(Clone, Copy)]
struct Trivial;

impl<B> Service<Request<B>> for Trivial
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<AxumBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<AxumBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(async move {
            let body = request
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            black_box(body);
            Ok(Response::new(AxumBody::from(RESULT)))
        })
    }
}

/// tower_governor keyed on the Authorization header, like our grant scope.
#[derive(Clone, Copy)]
struct AuthorizationKey;

impl KeyExtractor for AuthorizationKey {
    type Key = Bytes;

    fn extract<T>(&self, request: &Request<T>) -> Result<Bytes, GovernorError> {
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

fn request() -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer 9f86d081884c7d659a2feaa0c55ad015")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

fn run<S>(service: &S)
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let response = futures::executor::block_on(service.clone().oneshot(request())).unwrap();
    black_box(response);
}

fn bench(c: &mut Criterion) {
    let bare = Trivial;

    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(AuthorizationKey)
        .finish()
        .unwrap();
    let governed = GovernorLayer::new(Arc::new(config)).layer(Trivial);

    let policy: Policy = POLICY.parse().unwrap();
    let policed = PolicyLayer::new(policy).layer(Trivial);
    let check = futures::executor::block_on(policed.clone().oneshot(request())).unwrap();
    let body = futures::executor::block_on(check.into_body().collect())
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], RESULT.as_bytes(), "the call must be forwarded");

    let mut group = c.benchmark_group("layer/tools_call_200B");
    group.bench_function("bare", |b| b.iter(|| run(&bare)));
    group.bench_function("tower_governor", |b| b.iter(|| run(&governed)));
    group.bench_function("policy_layer", |b| b.iter(|| run(&policed)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
