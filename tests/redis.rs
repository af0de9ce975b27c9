//! `RedisCounters` against a real Redis: each test starts its own `redis-server` on a
//! free loopback port (no persistence) and stops it. A test that cannot start Redis
//! fails: `apt-get install redis-server`.

mod servers;
mod support;

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::redis_server::Redis;
use tower::{Layer, Service, ServiceExt};
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{
    Engine, Policy, PolicyLayer, ScopeHasher,
    counter::{Charge, ChargeError, CounterStore as _, MemoryCounters, RedisCounters},
};

fn seed_policy() -> Arc<Policy> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policies/seed-binance-rate-limit.json");
    Arc::new(Policy::from_file(path).unwrap())
}

/// What the test upstream answers, at once.
type Answer = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// An upstream that counts what it runs.
fn upstream(
    runs: Arc<AtomicUsize>,
) -> impl Service<
    Request<PolicyBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Answer,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Request<PolicyBody>| {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
        )))))
    })
}

/// A call of `tool` from the caller `token`.
fn call(tool: &str, token: &str) -> Request<Full<Bytes>> {
    support::call_as(tool, json!({"listenKey": "k"}), &format!("Bearer {token}"))
}

async fn answer<B: http_body::Body<Data = Bytes>>(response: Response<B>) -> Value
where
    B::Error: std::fmt::Debug,
{
    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

fn denied(answer: &Value) -> bool {
    answer["result"]["isError"] == json!(true)
}

const SEED_TOOL: &str = "binance_us_close_listen_key";

/// Retries `attempt` until it holds, for at most `limit`; fails with `what` after that.
async fn eventually(limit: Duration, what: &str, mut attempt: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !attempt().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_replicas_sharing_redis_enforce_one_budget() {
    let redis = Redis::start();
    let runs = Arc::new(AtomicUsize::new(0));
    // Two replicas: their own connections, their own layers; one Redis.
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let counters = redis.builder().connect().await.unwrap();
        let layer = PolicyLayer::from_engine(Engine::with_counters(seed_policy(), counters));
        replicas.push(layer.layer(upstream(runs.clone())));
    }
    let mut passed = 0;
    for i in 0..60 {
        let replica = replicas[i % 2].clone();
        if !denied(&answer(replica.oneshot(call(SEED_TOOL, "alice")).await.unwrap()).await) {
            passed += 1;
        }
    }
    assert_eq!(passed, 30, "30 per minute per grant, across both replicas");
    assert_eq!(runs.load(Ordering::SeqCst), 30);
    let other = answer(
        replicas[1]
            .clone()
            .oneshot(call(SEED_TOOL, "bob"))
            .await
            .unwrap(),
    )
    .await;
    assert!(!denied(&other), "another grant is unaffected: {other}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_charged_all_or_nothing() {
    let redis = Redis::start();
    let policy: Arc<Policy> = Arc::new(
        r#"{"version":"1","default":"deny","tools":{"t":{"limits":[
            {"counter":"a","window":"day","max":10},
            {"counter":"b","window":"day","max":1000}]}}}"#
            .parse()
            .unwrap(),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let mut layers = Vec::new();
    for _ in 0..4 {
        let counters = redis.builder().connect().await.unwrap();
        let layer = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), counters));
        layers.push(layer.layer(upstream(runs.clone())));
    }
    let mut tasks = Vec::new();
    for i in 0..64 {
        let service = layers[i % 4].clone();
        tasks.push(tokio::spawn(async move {
            !denied(&answer(service.oneshot(call("t", "alice")).await.unwrap()).await)
        }));
    }
    let mut passed = 0;
    for task in tasks {
        passed += usize::from(task.await.unwrap());
    }
    assert_eq!(passed, 10);
    assert_eq!(runs.load(Ordering::SeqCst), 10);

    // Both counters hold exactly ten charges: none was charged half.
    for def in policy.counters() {
        let keys = redis.keys(&format!("mcp-policy:{}:*", def.id())).await;
        assert_eq!(keys.len(), 1, "{}", def.name());
        let units = redis.charges_held(&keys[0], def.quota().period()).await;
        assert_eq!(units.round(), 10.0, "{} holds {units} charges", def.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_share_script_calls_and_each_is_still_all_or_nothing() {
    let redis = Redis::start();
    let policy: Arc<Policy> = Arc::new(
        r#"{"version":"1","default":"deny","tools":{"t":{"limits":[
            {"counter":"per-grant","window":"day","max":5},
            {"counter":"all","window":"day","max":1000,"scope":"global"}]}}}"#
            .parse()
            .unwrap(),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let counters = redis.builder().connect().await.unwrap();
    let service = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), counters))
        .layer(upstream(runs.clone()));

    // One at a time: one script call each (once Redis has the script: the first call
    // meets NOSCRIPT, loads it and calls again).
    let response = service.clone().oneshot(call("t", "solo")).await.unwrap();
    assert!(!denied(&answer(response).await));
    let before = redis.script_stats().await.0;
    for _ in 0..3 {
        let response = service.clone().oneshot(call("t", "solo")).await.unwrap();
        assert!(!denied(&answer(response).await));
    }
    assert_eq!(redis.script_stats().await.0 - before, 3);

    // 200 at once, 20 from each of 10 grants, 5 allowed per grant: the requests that
    // wait while a call is out share the next one, and each is judged on its own.
    let before = redis.script_stats().await.0;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let grant = format!("grant-{}", i % 10);
            (
                i % 10,
                !denied(&answer(service.oneshot(call("t", &grant)).await.unwrap()).await),
            )
        }));
    }
    let mut passed = [0; 10];
    for task in tasks {
        let (grant, ok) = task.await.unwrap();
        passed[grant] += usize::from(ok);
    }
    let calls = redis.script_stats().await.0 - before;
    assert_eq!(passed, [5; 10], "5 calls per grant pass");
    assert_eq!(runs.load(Ordering::SeqCst), 4 + 50);
    assert!(calls < 200, "200 requests took {calls} script calls");

    // The global counter holds exactly the 54 calls that passed: a refused request
    // charged nothing, even when it shared a script call with allowed ones.
    let all = policy
        .counters()
        .iter()
        .find(|def| def.name() == "all")
        .unwrap();
    let keys = redis.keys(&format!("mcp-policy:{}:*", all.id())).await;
    assert_eq!(keys.len(), 1);
    let units = redis.charges_held(&keys[0], all.quota().period()).await;
    assert_eq!(
        units.round(),
        54.0,
        "the global counter holds {units} charges"
    );
}

/// Two stores on `redis`: one failing closed (the default), one failing open.
async fn closed_and_open(redis: &Redis) -> (RedisCounters, RedisCounters) {
    let closed = redis.builder().connect().await.unwrap();
    let open = redis.builder().fail_open().connect().await.unwrap();
    (closed, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_neither_hangs_nor_needs_a_restart() {
    let mut redis = Redis::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let policy = r#"{"version":"1","default":"deny","tools":{"free":{},
        "limited":{"limits":[{"counter":"l","window":"minute","max":1000}]}}}"#;
    let policy: Arc<Policy> = Arc::new(policy.parse().unwrap());
    let (closed, open) = closed_and_open(&redis).await;
    let closed = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), closed))
        .layer(upstream(runs.clone()));
    let open = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), open))
        .layer(upstream(runs.clone()));
    assert!(!denied(
        &answer(closed.clone().oneshot(call("limited", "a")).await.unwrap()).await
    ));

    // SCRIPT FLUSH is survived (EVALSHA reloads the script).
    let mut client = redis.client().await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut client)
        .await
        .unwrap();
    assert!(!denied(
        &answer(closed.clone().oneshot(call("limited", "a")).await.unwrap()).await
    ));
    let before = runs.load(Ordering::SeqCst);

    redis.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let limited = answer(closed.clone().oneshot(call("limited", "a")).await.unwrap()).await;
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(100 + 900),
            "answered within the 100 ms deadline plus a margin, not {waited:?}"
        );
        assert!(denied(&limited), "fail closed: {limited}");
        assert!(
            limited["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .starts_with("[POLICY DENIED] Rate-limit state is unavailable, the call was not run; try again in ")
        );
        let free = answer(closed.clone().oneshot(call("free", "a")).await.unwrap()).await;
        assert!(!denied(&free), "a call with no limit needs no counter");
        let open_answer = answer(open.clone().oneshot(call("limited", "a")).await.unwrap()).await;
        assert!(!denied(&open_answer), "fail open: allowed uncounted");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        before + 10,
        "5 free + 5 fail-open calls ran"
    );

    // Redis comes back: counting resumes in the same process, by itself.
    redis.restart();
    eventually(
        Duration::from_secs(15),
        "counting did not resume",
        async || {
            !denied(&answer(closed.clone().oneshot(call("limited", "a")).await.unwrap()).await)
        },
    )
    .await;
    let mut client = redis.client().await;
    let keys = redis.keys("mcp-policy:*:*").await;
    assert_eq!(
        keys.len(),
        1,
        "the charge was counted in the new Redis: {keys:?}"
    );
    // The shared hashing secret is back in the new Redis, for replicas that start now.
    eventually(
        Duration::from_secs(2),
        "the secret was not written back",
        async || {
            let secret: Option<String> = redis::cmd("GET")
                .arg("mcp-policy:scope-hasher-key")
                .query_async(&mut client)
                .await
                .unwrap();
            secret.is_some()
        },
    )
    .await;
    let late = redis.builder().connect().await.unwrap();
    let late = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), late))
        .layer(upstream(runs.clone()));
    let spent = answer(late.oneshot(call("limited", "a")).await.unwrap()).await;
    assert!(!denied(&spent));
    let keys = redis.keys("mcp-policy:*:*").await;
    assert_eq!(
        keys.len(),
        1,
        "a replica started after the restart counts in the same bucket: {keys:?}"
    );
}

/// The quotas of the differential test: (max, window), each with a whole number of
/// microseconds per unit.
const QUOTAS: [(u32, u64); 4] = [(2, 1), (5, 60), (30, 60), (4, 3600)];

#[tokio::test]
async fn the_redis_store_decides_exactly_as_the_memory_store() {
    let redis = Redis::start();
    let remote = redis.builder().connect().await.unwrap();
    let clock = FakeClock::new();
    let local = MemoryCounters::with_clock(clock.clone());
    let hasher = ScopeHasher::with_key([5; 16]);
    let keys = [
        hasher.credential(b"Bearer a"),
        hasher.credential(b"Bearer b"),
    ];
    let charges: Vec<Charge> = QUOTAS
        .iter()
        .enumerate()
        .flat_map(|(i, &(max, window))| {
            let quota = tower_mcp_policy::counter::Quota::new(
                NonZeroU32::new(max).unwrap(),
                Duration::from_secs(window),
            );
            let id = tower_mcp_policy::counter::CounterId::new(
                &format!("c{i}"),
                quota,
                tower_mcp_policy::Scope::Grant,
            );
            keys.map(|key| (id, quota, key))
        })
        .map(|(id, quota, key)| Charge::new(id, quota, key, NonZeroU32::MIN))
        .collect();

    // A fixed pseudo-random walk: which charges (one or two at once), their costs, and
    // how far time moves (whole milliseconds), from a 64-bit LCG.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let base = Duration::from_secs(1_700_000_000);
    let mut elapsed = Duration::ZERO;
    let (mut allowed, mut refused) = (0, 0);
    for step in 0..600 {
        let advance = Duration::from_millis(next(3) * next(800));
        elapsed += advance;
        clock.advance(advance);
        let mut request = vec![charges[next(charges.len() as u64) as usize]];
        if next(3) == 0 {
            request.push(charges[next(charges.len() as u64) as usize]);
        }
        for charge in &mut request {
            charge.cost = NonZeroU32::new(1 + next(2) as u32).unwrap();
        }
        let mine = local.charge(&request).into_inner();
        let theirs = remote.charge_at(&request, base + elapsed).await;
        match (&mine, &theirs) {
            (Ok(()), Ok(())) => allowed += 1,
            (
                Err(ChargeError::Exceeded {
                    index: a,
                    retry_after: x,
                }),
                Err(ChargeError::Exceeded {
                    index: b,
                    retry_after: y,
                }),
            ) => {
                assert_eq!((a, x), (b, y), "step {step}: {request:?}");
                refused += 1;
            }
            _ => panic!("step {step}: memory {mine:?}, redis {theirs:?} for {request:?}"),
        }
    }
    assert!(
        allowed > 100 && refused > 100,
        "both outcomes exercised: {allowed} / {refused}"
    );
}

#[tokio::test]
async fn every_key_expires_and_none_holds_a_credential_or_session() {
    let redis = Redis::start();
    let policy: Arc<Policy> = Arc::new(
        r#"{"version":"1","default":"deny","tools":{"t":{"limits":[
            {"counter":"g","window":"minute","max":5},
            {"counter":"s","window":"hour","max":5,"scope":"session"},
            {"counter":"all","window":"day","max":5,"scope":"global"}]}}}"#
            .parse()
            .unwrap(),
    );
    let counters = redis.builder().connect().await.unwrap();
    let service = PolicyLayer::from_engine(Engine::with_counters(policy, counters))
        .layer(upstream(Arc::new(AtomicUsize::new(0))));
    let mut request = call("t", "sk-live-0123456789");
    request
        .headers_mut()
        .insert("mcp-session-id", "session-abcdef".parse().unwrap());
    assert!(!denied(
        &answer(service.oneshot(request).await.unwrap()).await
    ));

    let mut client = redis.client().await;
    let keys = redis.keys("*").await;
    let counters: Vec<&String> = keys
        .iter()
        .filter(|k| !k.ends_with("scope-hasher-key"))
        .collect();
    assert_eq!(
        counters.len(),
        3,
        "one bucket per counter (the invented session's per grant): {keys:?}"
    );
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut client)
            .await
            .unwrap();
        let value: String = redis::cmd("GET")
            .arg(key)
            .query_async(&mut client)
            .await
            .unwrap();
        if key.ends_with("scope-hasher-key") {
            assert_eq!(ttl, -1, "the shared hashing secret is kept");
        } else {
            assert!(ttl > 0, "{key} expires");
        }
        for secret in ["sk-live-0123456789", "session-abcdef", "Bearer"] {
            assert!(
                !key.contains(secret) && !value.contains(secret),
                "{secret} in {key} = {value}"
            );
        }
    }
}

/// A key must outlive its bucket (else a caller's charges vanish early) and should not
/// outlive it by much (Redis memory follows the active callers). Its expiry is written
/// only when the bucket's arrival time enters another eighth of the window (7.5 s here):
/// then at the end of the next eighth, plus a second.
#[tokio::test]
async fn a_key_outlives_its_bucket_by_at_most_a_quarter_window() {
    use tower_mcp_policy::counter::{CounterId, CounterStore, Quota};

    let redis = Redis::start();
    let counters = redis.builder().connect().await.unwrap();
    // 100 a minute: each charge moves the bucket 0.6 s, 12.5 charges an eighth.
    let quota = Quota::new(NonZeroU32::new(100).unwrap(), Duration::from_secs(60));
    let id = CounterId::new("k", quota, tower_mcp_policy::Scope::Grant);
    let scope = ScopeHasher::with_key([1; 16]).credential(b"Bearer k");
    let charge = Charge::new(id, quota, scope, NonZeroU32::MIN);
    let key = counters.key_of(&charge);
    let mut client = redis.client().await;
    let mut ttls = Vec::new();
    for n in 1..=40 {
        counters.charge(&[charge]).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut client)
            .await
            .unwrap();
        let held = redis.charges_held(&key, quota.period()).await;
        assert_eq!(held.round(), f64::from(n), "charge {n}");
        // The bucket refills `held` periods (0.6 s each) from now. The key lasts a
        // second longer at least, and at most two eighths (15 s) and a second more.
        let refill_ms = held * 600.0;
        assert!(
            ttl as f64 >= refill_ms + 1000.0 - 100.0 && ttl as f64 <= refill_ms + 16_000.0,
            "charge {n}: the key expires in {ttl} ms, its bucket refills in {refill_ms} ms"
        );
        ttls.push(ttl);
    }
    // 40 charges move the bucket 24 s: into 3 or 4 other eighths. The expiry moves on
    // those charges only (an expiry of refill + 1 s would move on every charge).
    let moves = ttls.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        (3..=4).contains(&moves),
        "{moves} moves: expiries {ttls:?} ms"
    );
}

/// The script reads a call's buckets 1,000 at a time (Lua's `unpack` has a limit): a
/// request naming 2,500 buckets is charged in every one of them, all or nothing.
#[tokio::test]
async fn a_call_naming_thousands_of_buckets_charges_each_once() {
    use tower_mcp_policy::counter::{CounterId, CounterStore, Quota};

    let redis = Redis::start();
    // A large call (this is not about the deadline): allow a debug build its time.
    let counters = redis
        .builder()
        .deadline(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let quota = Quota::new(NonZeroU32::new(1).unwrap(), Duration::from_secs(3600));
    let id = CounterId::new("many", quota, tower_mcp_policy::Scope::Grant);
    let hasher = ScopeHasher::with_key([3; 16]);
    let charges: Vec<Charge> = (0..2500)
        .map(|i| {
            let scope = hasher.credential(format!("Bearer {i}").as_bytes());
            Charge::new(id, quota, scope, NonZeroU32::MIN)
        })
        .collect();
    counters.charge(&charges).await.unwrap();
    for charge in [charges[0], charges[999], charges[1000], charges[2499]] {
        let held = redis
            .charges_held(&counters.key_of(&charge), quota.period())
            .await;
        assert_eq!(held.round(), 1.0);
    }
    // Every bucket is full now: the same request again does not fit, at its first.
    match counters.charge(&charges).await {
        Err(ChargeError::Exceeded { index: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(redis.keys("mcp-policy:*").await.len(), 2500 + 1);
}

/// A tools/call of the demo's limited tool over HTTP; the answer's JSON-RPC message.
async fn demo_call(url: &str, token: &str, id: u32) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": SEED_TOOL, "arguments": {"listenKey": "k"}}});
    let auth = format!("Bearer {token}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let response = servers::demo::raw(reqwest::Method::POST, url, &headers, body.to_string()).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_servers_on_one_redis_give_one_budget_and_survive_a_restart() {
    let mut redis = Redis::start();
    let policy = Arc::new(Policy::from_file(servers::demo::example_policy()).unwrap());
    let mut demos = Vec::new();
    for _ in 0..2 {
        let counters = redis.builder().connect().await.unwrap();
        let layer = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), counters));
        demos.push(servers::demo::Demo::start(layer, true).await);
    }
    let mut passed = 0;
    for i in 0..60 {
        let answer = demo_call(&demos[i % 2].url(), "alice", i as u32).await;
        passed += usize::from(!denied(&answer));
    }
    assert_eq!(
        passed, 30,
        "exactly 30 immediate calls per grant across both servers"
    );
    let executed: usize = demos.iter().map(|d| d.executions.of(SEED_TOOL)).sum();
    assert_eq!(executed, 30, "the tool ran 30 times");
    assert!(
        !denied(&demo_call(&demos[0].url(), "bob", 99).await),
        "another grant"
    );

    // Kill Redis under load, then bring it back: no request hangs, and counting
    // resumes in the same processes.
    let load: Vec<_> = (0..4)
        .map(|worker| {
            let url = demos[worker % 2].url();
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                for i in 0..40 {
                    let started = Instant::now();
                    let answer = demo_call(&url, &format!("load-{worker}"), i).await;
                    slowest = slowest.max(started.elapsed());
                    assert!(answer.get("result").is_some(), "{answer}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                slowest
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    for worker in load {
        let slowest = worker.await.unwrap();
        assert!(
            slowest < Duration::from_secs(2),
            "a request waited {slowest:?}"
        );
    }
    let mut id = 1000;
    eventually(
        Duration::from_secs(15),
        "counting did not resume",
        async || {
            id += 1;
            !denied(&demo_call(&demos[1].url(), "carol", id).await)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_answered_with_an_error_leaves_the_redis_budget_as_it_was() {
    let redis = Redis::start();
    let policy: Arc<Policy> = Arc::new(
        r#"{"version":"1","default":"deny","tools":{"t":{"limits":[
            {"counter":"c","window":"hour","max":1}]}}}"#
            .parse()
            .unwrap(),
    );
    let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"backend down"}}"#;
    for (content_type, body) in [
        ("application/json", error.to_owned()),
        (
            "text/event-stream",
            format!("event: message\ndata: {error}\n\n"),
        ),
    ] {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = fail.clone();
        let upstream = tower::service_fn(move |_: Request<PolicyBody>| {
            let body = if f.load(Ordering::SeqCst) {
                body.clone()
            } else {
                r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#.to_owned()
            };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let counters = redis
            .builder()
            .prefix(format!("{content_type}:"))
            .connect()
            .await
            .unwrap();
        let service = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), counters))
            .layer(upstream);
        let first = service.clone().oneshot(call("t", "alice")).await.unwrap();
        let text = String::from_utf8_lossy(&first.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        assert!(text.contains("backend down"), "{text}");
        fail.store(false, Ordering::SeqCst);
        // The refund is applied in the background: the budget comes back promptly.
        let what = format!("{content_type}: not refunded");
        eventually(Duration::from_secs(2), &what, async || {
            !denied(&answer(service.clone().oneshot(call("t", "alice")).await.unwrap()).await)
        })
        .await;
        let spent = answer(service.clone().oneshot(call("t", "alice")).await.unwrap()).await;
        assert!(
            denied(&spent),
            "{content_type}: refunded once, and the call that ran is charged"
        );
    }
}

/// A store whose runtime has shut down cannot reach Redis any more: its calls are
/// answered at once, closed (denied, readable) or open (allowed), never left hanging.
#[test]
fn a_store_outliving_its_runtime_fails_fast_in_its_fail_mode() {
    let redis = Redis::start();
    let policy: Arc<Policy> = Arc::new(
        r#"{"version":"1","default":"deny","tools":{"t":{"limits":[
            {"counter":"c","window":"minute","max":100}]}}}"#
            .parse()
            .unwrap(),
    );
    let first = tokio::runtime::Runtime::new().unwrap();
    let (closed, open) = first.block_on(closed_and_open(&redis));
    drop(first);

    let runs = Arc::new(AtomicUsize::new(0));
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let closed = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), closed))
            .layer(upstream(runs.clone()));
        let started = Instant::now();
        let denial = answer(closed.oneshot(call("t", "a")).await.unwrap()).await;
        assert!(denied(&denial), "{denial}");
        assert!(
            denial
                .to_string()
                .contains("Rate-limit state is unavailable"),
            "{denial}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0, "the call did not run");

        let open = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), open))
            .layer(upstream(runs.clone()));
        let allowed = answer(open.oneshot(call("t", "a")).await.unwrap()).await;
        assert!(!denied(&allowed), "{allowed}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "fail open: the call ran");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    });
}

/// Fail open is not silent: every call let through uncounted is a `StoreError` event,
/// which `MetricsObserver` counts in `mcp_policy_store_errors_total`; so are errors no
/// call waits for, such as a scope hasher that differs from the one the replicas share.
#[test]
fn failing_open_and_background_errors_are_counted() {
    use std::sync::Mutex;
    use tower_mcp_policy::metrics::MetricsObserver;
    use tower_mcp_policy::observe::{Event, Observer};

    #[derive(Clone, Default)]
    struct StoreErrors(Arc<Mutex<Vec<(String, bool, bool)>>>);
    impl Observer for StoreErrors {
        fn observe(&self, event: &Event<'_>) {
            if let Event::StoreError {
                error,
                uncounted,
                background,
                ..
            } = event
            {
                let seen = (error.to_string(), *uncounted, *background);
                self.0.lock().unwrap().push(seen);
            }
        }
    }

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let errors_total = || {
        handle
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("mcp_policy_store_errors_total "))
            .map(|n| n.trim().to_owned())
    };
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut redis = Redis::start();
            let runs = Arc::new(AtomicUsize::new(0));
            let policy: Arc<Policy> = Arc::new(
                r#"{"version":"1","default":"deny","tools":{
                    "limited":{"limits":[{"counter":"l","window":"minute","max":1000}]}}}"#
                    .parse()
                    .unwrap(),
            );
            let seen = StoreErrors::default();
            let store = redis.builder().fail_open().connect().await.unwrap();
            let service = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), store))
                .observer((MetricsObserver, seen.clone()))
                .layer(upstream(runs.clone()));
            assert!(!denied(
                &answer(service.clone().oneshot(call("limited", "a")).await.unwrap()).await
            ));
            assert_eq!(errors_total(), None, "no error while Redis answers");

            redis.stop();
            for _ in 0..3 {
                let limited = answer(service.clone().oneshot(call("limited", "a")).await.unwrap());
                assert!(!denied(&limited.await), "fail open: the call runs");
            }
            assert_eq!(runs.load(Ordering::SeqCst), 4, "every call ran");
            assert_eq!(errors_total().as_deref(), Some("3"));
            let seen = std::mem::take(&mut *seen.0.lock().unwrap());
            assert_eq!(seen.len(), 3);
            assert!(
                seen.iter()
                    .all(|(_, uncounted, background)| *uncounted && !background)
            );

            // A layer whose hasher differs from the one the store shares is reported
            // when it makes its service, in the background.
            let other = StoreErrors::default();
            redis.restart();
            let store = redis.builder().connect().await.unwrap();
            let _service = PolicyLayer::from_engine(Engine::with_counters(policy, store))
                .scope_hasher(ScopeHasher::with_key([1; 16]))
                .observer((MetricsObserver, other.clone()))
                .layer(upstream(runs.clone()));
            let other = other.0.lock().unwrap();
            assert_eq!(other.len(), 1, "{other:?}");
            assert!(other[0].0.contains("scope hasher"), "{other:?}");
            assert!(other[0].2, "a background error");
            assert_eq!(errors_total().as_deref(), Some("4"));
        });
    });
}

/// A session issued through one replica is a session on the others too: they share it
/// through Redis. Before, each replica that had not seen the `initialize` counted the
/// session per grant, so one session had each replica's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_issued_through_one_replica_counts_as_one_on_every_replica() {
    use std::sync::Mutex;
    use tower_mcp_policy::ScopeValue;
    use tower_mcp_policy::observe::{Event, Observer};

    /// The session of every allowed call, as the layer counted it.
    #[derive(Clone, Default)]
    struct Sessions(Arc<Mutex<Vec<ScopeValue>>>);
    impl Observer for Sessions {
        fn observe(&self, event: &Event<'_>) {
            if let Event::Call(call) = event {
                self.0.lock().unwrap().push(call.session);
            }
        }
    }

    let redis = Redis::start();
    let policy: Arc<Policy> = Arc::new(
        r#"{"version":"1","default":"deny","tools":{"free":{},
            "t":{"limits":[{"counter":"t","window":"hour","max":4,"scope":"session"}]}}}"#
            .parse()
            .unwrap(),
    );
    // The server issues session `s-1` in answer to initialize.
    let server = tower::service_fn(|request: Request<PolicyBody>| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let mut response = Response::new(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
        )));
        if String::from_utf8_lossy(&body).contains("initialize") {
            let id = http::HeaderValue::from_static("s-1");
            response.headers_mut().insert("mcp-session-id", id);
        }
        Ok::<_, Infallible>(response)
    });
    let seen = Sessions::default();
    let mut hasher = None;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = redis.builder().connect().await.unwrap();
        hasher = store.scope_hasher();
        let layer = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), store));
        replicas.push(tower::util::BoxCloneService::new(
            layer.observer(seen.clone()).layer(server),
        ));
    }
    let session = hasher.unwrap().session(b"s-1");
    let (a, b) = (&replicas[0], &replicas[1]);
    let as_alice = |mut request: Request<Full<Bytes>>, in_session: bool| {
        let headers = request.headers_mut();
        headers.insert("authorization", "Bearer alice".parse().unwrap());
        if in_session {
            headers.insert("mcp-session-id", "s-1".parse().unwrap());
        }
        request
    };
    let initialize = tower_mcp_policy::testing::request(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "test", "version": "0"}}),
    );
    a.clone()
        .oneshot(as_alice(initialize, false))
        .await
        .unwrap();

    // Replica B never saw the initialize: it asks Redis, and then counts the session.
    eventually(
        Duration::from_secs(5),
        "replica B counts the session",
        async || {
            let free = as_alice(support::call("free", json!({})), true);
            b.clone().oneshot(free).await.unwrap();
            seen.0.lock().unwrap().last() == Some(&session)
        },
    )
    .await;
    // One budget of 4 for the session, whichever replica the calls go through.
    let mut passed = 0;
    for service in [a, b, a, b, a, b] {
        let t = as_alice(support::call("t", json!({})), true);
        passed += usize::from(!denied(
            &answer(service.clone().oneshot(t).await.unwrap()).await,
        ));
    }
    assert_eq!(passed, 4, "one session, one budget across replicas");
}

/// A task handed out through one replica is bound to its owner on every replica: the
/// owner reaches it through another replica at once, another grant through none, and
/// Redis holds the binding for the task's time to live, as hashes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_bound_to_its_owner_on_every_replica() {
    let redis = Redis::start();
    let reached = Arc::new(AtomicUsize::new(0));
    let server = {
        let reached = reached.clone();
        tower::service_fn(move |request: Request<PolicyBody>| {
            let reached = reached.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let message: Value = serde_json::from_slice(&body).unwrap();
                let result = match message["method"].as_str().unwrap() {
                    "tools/call" => json!({"resultType": "task", "taskId": "task-secret-1",
                        "status": "working", "ttlMs": 60_000}),
                    _ => {
                        reached.fetch_add(1, Ordering::SeqCst);
                        json!({"resultType": "complete", "taskId": "task-secret-1",
                            "status": "completed"})
                    }
                };
                let answer = json!({"jsonrpc": "2.0", "id": message["id"], "result": result});
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer.to_string()))))
            }
        })
    };
    let policy: Arc<Policy> = Arc::new(r#"{"version":"1","default":"allow"}"#.parse().unwrap());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = redis.builder().connect().await.unwrap();
        let layer = PolicyLayer::from_engine(Engine::with_counters(policy.clone(), store));
        replicas.push(tower::util::BoxCloneService::new(
            layer.layer(server.clone()),
        ));
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    let get = |caller: &str| {
        let request =
            tower_mcp_policy::testing::request("tasks/get", json!({"taskId": "task-secret-1"}));
        tower_mcp_policy::testing::as_caller(request, caller)
    };

    let created = a
        .clone()
        .oneshot(support::call_as("slow", json!({}), "Bearer alice"))
        .await
        .unwrap();
    assert_eq!(answer(created).await["result"]["taskId"], "task-secret-1");
    // At once, through the replica that did not see it handed out.
    let polled = answer(b.clone().oneshot(get("Bearer alice")).await.unwrap()).await;
    assert_eq!(polled["result"]["status"], "completed", "{polled}");
    for replica in [a, b] {
        let refused = answer(replica.clone().oneshot(get("Bearer bob")).await.unwrap()).await;
        assert_eq!(refused["error"]["code"], -32602, "{refused}");
    }
    assert_eq!(reached.load(Ordering::SeqCst), 1, "only Alice's poll ran");

    let mut connection = redis.client().await;
    let keys = redis.keys("*task:*").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains("secret"), "hashed: {keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        (1..=60_000).contains(&ttl),
        "the task's time to live: {ttl}"
    );
}

/// Grants on two replicas sharing Redis: each grant's budget is one across replicas
/// (keyed by its name, so two tokens of one grant would share it too), another grant's
/// is its own, and a global counter is one budget for every grant of its policy.
#[tokio::test]
async fn two_replicas_with_grants_share_each_grants_budget() {
    let redis = Redis::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let grants = || {
        let trader: Policy = r#"{"version":"1","default":"deny","tools":{
            "binance_us_close_listen_key":{"limits":[
                {"counter":"per_grant","window":"minute","max":4,"scope":"grant"},
                {"counter":"desk","window":"minute","max":6,"scope":"global"}]}}}"#
            .parse()
            .unwrap();
        tower_mcp_policy::Grants::new()
            .policy("trader", trader)
            .grant("alice", "trader")
            .grant("bob", "trader")
    };
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let counters = redis.builder().connect().await.unwrap();
        let engine = Engine::with_counters(Policy::deny_all(), counters);
        let layer = PolicyLayer::from_engine(engine).grants(grants());
        replicas.push(layer.layer(upstream(runs.clone())));
    }
    let as_grant = |name: &str| {
        let mut request = call(SEED_TOOL, "ignored");
        request.headers_mut().remove("authorization");
        request
            .extensions_mut()
            .insert(tower_mcp_policy::Grant::new(name));
        request
    };
    let passed = |grant: &'static str, tries: usize| {
        let replicas = replicas.clone();
        async move {
            let mut passed = 0;
            for i in 0..tries {
                let replica = replicas[i % 2].clone();
                let answer = answer(replica.oneshot(as_grant(grant)).await.unwrap()).await;
                if !denied(&answer) {
                    passed += 1;
                }
            }
            passed
        }
    };
    assert_eq!(
        passed("alice", 8).await,
        4,
        "four a minute for alice, on both replicas"
    );
    assert_eq!(
        passed("bob", 8).await,
        2,
        "bob has his own four, but the desk's six are shared"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 6);
}
