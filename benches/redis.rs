//! Redis counters against in-memory ones, in one run (needs redis-server; see README):
//!
//! 1. criterion: one `tools/call` through `PolicyLayer` (a trivial inner service), with
//!    the counter in memory or in Redis on loopback, 1 and 64 requests in flight;
//! 2. Redis commands per request (`INFO commandstats`): exactly 1 for requests one at a
//!    time, fewer when requests in flight share a script call; and Redis CPU per request;
//! 3. the demo server's HTTP throughput (rmcp, stateless JSON) under 32 keep-alive
//!    connections, with and without `--redis`, in 25 rounds that measure both (taking
//!    turns to go first); the median of the rounds' ratios, and the CPU time
//!    redis-server spent per request.

#[path = "../tests/servers/mod.rs"]
mod servers;
#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Engine, Policy, PolicyLayer, counter::CounterStore};

const BODY: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#;
const POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{
    "limits":[{"counter":"rate","window":"day","max":4000000000,"scope":"grant"}]}}}"#;

fn request() -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("authorization", "Bearer 9f86d081884c7d659a2feaa0c55ad015")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

/// One request through `layer` around a trivial server; true when forwarded.
async fn once<S: CounterStore>(layer: &PolicyLayer<S>) -> bool {
    let inner = tower::service_fn(|_: Request<PolicyBody>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(br#"{"jsonrpc":"2.0","id":42,"result":{"content":[]}}"#),
        ))))
    });
    let response = layer.clone().layer(inner).oneshot(request()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    !body.windows(8).any(|w| w == b"[POLICY ")
}

async fn many<S: CounterStore>(layer: &PolicyLayer<S>, n: usize) {
    let all = (0..n).map(|_| once(layer));
    for forwarded in futures::future::join_all(all).await {
        assert!(forwarded);
    }
}

fn policy() -> Arc<Policy> {
    Arc::new(POLICY.parse().unwrap())
}

/// Redis commands and Redis CPU (microseconds) per request while `requests` run.
async fn per_request(
    redis: &support::redis_server::Redis,
    requests: usize,
    run: impl Future<Output = ()>,
) -> (f64, f64) {
    let before = redis.script_stats().await;
    run.await;
    let after = redis.script_stats().await;
    let n = requests as f64;
    (
        (after.0 - before.0) as f64 / n,
        (after.1 - before.1) as f64 / n,
    )
}

/// Requests per second through the demo server at `url`, 32 connections.
const CONNECTIONS: usize = 32;
const PER_CONNECTION: usize = 300;
const REQUESTS: usize = CONNECTIONS * PER_CONNECTION;

async fn throughput(url: &str) -> f64 {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let workers = (0..CONNECTIONS).map(|worker| {
        let client = client.clone();
        let url = url.to_owned();
        async move {
            for i in 0..PER_CONNECTION {
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"w{worker}"}}}}}}"#
                );
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2025-06-18")
                    .header("authorization", format!("Bearer worker-{worker}"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let text = response.text().await.unwrap();
                assert!(text.contains("\"result\"") && !text.contains("POLICY"), "{text}");
            }
        }
    });
    futures::future::join_all(workers).await;
    REQUESTS as f64 / started.elapsed().as_secs_f64()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = support::redis_server::Redis::start();
    let memory = PolicyLayer::new(policy());
    let remote = runtime.block_on(async {
        let counters = redis.builder().connect().await.unwrap();
        PolicyLayer::from_engine(Engine::with_counters(policy(), counters))
    });

    let mut group = c.benchmark_group("redis/tools_call");
    group.bench_function("memory_1_in_flight", |b| {
        b.iter(|| black_box(runtime.block_on(once(&memory))))
    });
    group.bench_function("redis_1_in_flight", |b| {
        b.iter(|| black_box(runtime.block_on(once(&remote))))
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("memory_64_in_flight", |b| {
        b.iter(|| runtime.block_on(many(&memory, 64)))
    });
    group.bench_function("redis_64_in_flight", |b| {
        b.iter(|| runtime.block_on(many(&remote, 64)))
    });
    group.finish();

    runtime.block_on(async {
        let (commands, cpu) = per_request(&redis, 1000, async {
            for _ in 0..1000 {
                assert!(once(&remote).await);
            }
        })
        .await;
        println!(
            "one request at a time: {commands:.3} Redis commands and {cpu:.1} us of Redis CPU per request"
        );
        let (commands, cpu) = per_request(&redis, 6400, async {
            for _ in 0..100 {
                many(&remote, 64).await;
            }
        })
        .await;
        println!(
            "64 in flight: {commands:.3} Redis commands and {cpu:.1} us of Redis CPU per request"
        );
    });

    runtime.block_on(async {
        let memory = servers::demo::Demo::start(PolicyLayer::new(demo_policy()), true).await;
        let counters = redis.builder().prefix("demo:").connect().await.unwrap();
        let remote = servers::demo::Demo::start(
            PolicyLayer::from_engine(Engine::with_counters(demo_policy(), counters)),
            true,
        )
        .await;
        // Warm both up, then measure them alternately.
        throughput(&memory.url()).await;
        throughput(&remote.url()).await;
        // Each round measures both, in turn first (the machine's speed drifts: taking
        // turns keeps the drift out of the ratio).
        const ROUNDS: usize = 25;
        let mut rounds = Vec::new();
        let mut commands = 0.0;
        let mut redis_cpu = std::time::Duration::ZERO;
        for round in 0..ROUNDS {
            let mut in_memory = 0.0;
            if round % 2 == 0 {
                in_memory = throughput(&memory.url()).await;
            }
            let mut with_redis = 0.0;
            let cpu = redis.cpu_time();
            let (calls, _) = per_request(&redis, REQUESTS, async {
                with_redis = throughput(&remote.url()).await;
            })
            .await;
            redis_cpu += redis.cpu_time() - cpu;
            commands += calls / ROUNDS as f64;
            if round % 2 == 1 {
                in_memory = throughput(&memory.url()).await;
            }
            rounds.push((in_memory, with_redis));
        }
        let redis_cpu = redis_cpu.as_secs_f64() * 1e6 / (ROUNDS * REQUESTS) as f64;
        rounds.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
        let (in_memory, with_redis) = rounds[ROUNDS / 2];
        let ratios: Vec<String> = rounds.iter().map(|(m, r)| format!("{:.3}", r / m)).collect();
        let mean = rounds.iter().map(|(m, r)| r / m).sum::<f64>() / ROUNDS as f64;
        println!(
            "demo server, 32 connections: in memory {in_memory:.0} req/s, with Redis {with_redis:.0} req/s \
             ({:.3} of in-memory, the median round; mean {mean:.3}; rounds {}); {commands:.3} Redis commands and \
             {redis_cpu:.1} us of redis-server CPU per request",
            with_redis / in_memory,
            ratios.join(" ")
        );
    });
}

/// The demo's echo tool under a limit that never trips.
fn demo_policy() -> Arc<Policy> {
    Arc::new(
        r#"{"version":"1","default":"allow","tools":{"echo":{
            "limits":[{"counter":"echo","window":"day","max":4000000000}]}}}"#
            .parse()
            .unwrap(),
    )
}

criterion_group!(benches, bench);
criterion_main!(benches);
