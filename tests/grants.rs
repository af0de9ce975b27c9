//! Grants: a policy per agent credential, in-process with `oneshot`. Every refused
//! request is checked twice: the answer, and that the inner service never saw it.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Grant, Grants, Policy, PolicyLayer};

const READ_ONLY: &str = r#"{"version":"1","default":"deny","hide":["transfer"],
    "tools":{"search":{"limits":[{"counter":"searches","window":"minute","max":2,"scope":"grant"}]}}}"#;
const TRADER: &str = r#"{"version":"1","default":"deny",
    "tools":{"search":{"limits":[{"counter":"searches","window":"minute","max":2,"scope":"grant"}]},
             "transfer":{"limits":[{"counter":"transfers","window":"minute","max":3,"scope":"global"}]}}}"#;

/// What the inner service saw: one entry per request, the grant the layer told it.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

type Ready = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// An inner service that answers a tool list for `tools/list`, `{"ok":true}` otherwise,
/// and records the `Grant` it was told.
fn upstream(
    seen: &Seen,
) -> impl Service<
    Request<PolicyBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Ready,
> + Clone
+ use<> {
    let seen = seen.clone();
    tower::service_fn(move |request: Request<PolicyBody>| {
        let grant = request
            .extensions()
            .get::<Grant>()
            .map(|g| g.as_str().to_owned());
        seen.lock().unwrap().push(grant);
        let list = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search"},{"name":"transfer"}]}}"#;
        let body = match request.headers().get("mcp-method").map(|v| v.as_bytes()) {
            Some(b"tools/list") => list,
            _ => r#"{"ok":true}"#,
        };
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
            body.as_bytes(),
        )))))
    })
}

fn call(tool: &str) -> Request<Full<Bytes>> {
    let body =
        json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":tool,"arguments":{}}});
    Request::post("/mcp")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn list() -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("mcp-method", "tools/list")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )))
        .unwrap()
}

fn as_grant(mut request: Request<Full<Bytes>>, name: &str) -> Request<Full<Bytes>> {
    request.extensions_mut().insert(Grant::new(name));
    request
}

fn with_token(mut request: Request<Full<Bytes>>, token: &str) -> Request<Full<Bytes>> {
    let value = format!("Bearer {token}").parse().unwrap();
    request.headers_mut().insert("authorization", value);
    request
}

async fn body<B>(response: Response<B>) -> Value
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// The answer to a call: "ok" (the server's), "denied: …" (the layer's), or the status
/// and error message of a refusal.
async fn outcome<S, B>(service: &S, request: Request<Full<Bytes>>) -> String
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let value = body(response).await;
    if value == json!({"ok": true}) {
        return "ok".into();
    }
    if let Some(text) = value["result"]["content"][0]["text"].as_str() {
        return format!("denied: {text}");
    }
    let message = value["error"]["message"].as_str().unwrap_or_default();
    match challenge {
        Some(challenge) => format!("{} [{challenge}] {message}", status.as_u16()),
        None => format!("{} {message}", status.as_u16()),
    }
}

fn two_grants() -> Grants {
    Grants::new()
        .policy("read-only", READ_ONLY.parse().unwrap())
        .policy("trader", TRADER.parse().unwrap())
        .grant("researcher", "read-only")
        .grant("librarian", "read-only")
        .grant("bot", "trader")
        .grant("bot-2", "trader")
}

#[tokio::test]
async fn each_grant_is_judged_under_its_own_policy() {
    let seen = Seen::default();
    let service = PolicyLayer::new(Policy::deny_all())
        .grants(two_grants())
        .layer(upstream(&seen));
    assert!(
        outcome(&service, as_grant(call("transfer"), "researcher"))
            .await
            .contains("Unknown tool: transfer")
    );
    assert_eq!(
        outcome(&service, as_grant(call("transfer"), "bot")).await,
        "ok"
    );
    assert_eq!(
        outcome(&service, as_grant(call("search"), "researcher")).await,
        "ok"
    );
    // The inner service is told which grant the caller is.
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("bot".to_owned()), Some("researcher".to_owned())]
    );

    // Each sees its own tools.
    let response = service
        .clone()
        .oneshot(as_grant(list(), "researcher"))
        .await
        .unwrap();
    let tools = body(response).await["result"]["tools"].clone();
    assert_eq!(tools, json!([{"name": "search"}]));
    let response = service
        .clone()
        .oneshot(as_grant(list(), "bot"))
        .await
        .unwrap();
    let tools = body(response).await["result"]["tools"].clone();
    assert_eq!(tools, json!([{"name": "search"}, {"name": "transfer"}]));
}

#[tokio::test]
async fn an_unknown_grant_reaches_nothing() {
    let seen = Seen::default();
    let service = PolicyLayer::new(Policy::deny_all())
        .grants(two_grants())
        .layer(upstream(&seen));
    let unauthorized = "401 [Bearer error=\"invalid_token\"] Unauthorized: the credential is unknown, revoked or expired";
    assert_eq!(
        outcome(&service, as_grant(call("search"), "stranger")).await,
        unauthorized
    );
    // A bearer token when no grant has one; a Basic credential.
    assert_eq!(
        outcome(&service, with_token(call("search"), "guess")).await,
        unauthorized
    );
    let mut basic = call("search");
    basic
        .headers_mut()
        .insert("authorization", "Basic dTpw".parse().unwrap());
    assert_eq!(outcome(&service, basic).await, unauthorized);
    // No credential, and no anonymous policy.
    assert_eq!(
        outcome(&service, call("search")).await,
        "401 [Bearer] Unauthorized: this server needs a bearer token"
    );
    // Not even a GET stream, or a DELETE.
    for method in [http::Method::GET, http::Method::DELETE] {
        let request = Request::builder()
            .method(method)
            .uri("/mcp")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let error = body(response).await;
        assert_eq!(error["error"]["code"], -32052, "{error}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the server saw a refused request"
    );
}

#[tokio::test]
async fn grant_counters_are_the_grants_and_global_ones_the_policys() {
    let seen = Seen::default();
    let service = PolicyLayer::new(Policy::deny_all())
        .grants(two_grants())
        .layer(upstream(&seen));
    // "scope": "grant": two searches a minute each, even for grants of one policy.
    for grant in ["researcher", "librarian", "bot"] {
        for _ in 0..2 {
            assert_eq!(
                outcome(&service, as_grant(call("search"), grant)).await,
                "ok"
            );
        }
        let third = outcome(&service, as_grant(call("search"), grant)).await;
        assert!(third.contains("Rate limit of 2 per minute"), "{third}");
    }
    // "scope": "global": three transfers a minute for every grant of the trader policy
    // together.
    for grant in ["bot", "bot-2", "bot"] {
        assert_eq!(
            outcome(&service, as_grant(call("transfer"), grant)).await,
            "ok"
        );
    }
    let fourth = outcome(&service, as_grant(call("transfer"), "bot-2")).await;
    assert!(fourth.contains("Rate limit of 3 per minute"), "{fourth}");
    assert_eq!(seen.lock().unwrap().len(), 6 + 3);
}

#[tokio::test]
async fn counters_of_two_policies_never_share_state() {
    // The same counter, global, in two policies: each policy has its own budget.
    let policy = r#"{"version":"1","default":"deny",
        "tools":{"ping":{"limits":[{"counter":"pings","window":"minute","max":1}]}}}"#;
    let grants = Grants::new()
        .policy("a", policy.parse().unwrap())
        .policy("b", policy.parse().unwrap())
        .grant("alice", "a")
        .grant("bob", "b");
    let seen = Seen::default();
    let service = PolicyLayer::new(Policy::deny_all())
        .grants(grants)
        .layer(upstream(&seen));
    assert_eq!(
        outcome(&service, as_grant(call("ping"), "alice")).await,
        "ok"
    );
    assert_eq!(outcome(&service, as_grant(call("ping"), "bob")).await, "ok");
    let again = outcome(&service, as_grant(call("ping"), "alice")).await;
    assert!(again.contains("Rate limit"), "{again}");
}

/// A temporary directory with two policies and a grants file.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("grants-{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/read-only.json"), READ_ONLY).unwrap();
        std::fs::write(dir.join("policies/trader.json"), TRADER).unwrap();
        Files { dir }
    }

    fn grants(&self, grants: Value) -> PathBuf {
        let path = self.dir.join("grants.json");
        std::fs::write(&path, serde_json::to_string_pretty(&grants).unwrap()).unwrap();
        path
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn file_of(grants: Value) -> Value {
    json!({
        "version": "1",
        "policies": {"read-only": "policies/read-only.json", "trader": "policies/trader.json"},
        "grants": grants,
    })
}

#[tokio::test]
async fn bearer_tokens_from_a_grants_file() {
    let files = Files::new("tokens");
    let path = files.grants(file_of(json!({
        "researcher": {"policy": "read-only", "token_sha256": Grants::hash_token("tok-r")},
        "bot": {"policy": "trader", "token_sha256": Grants::hash_token("tok-b")},
        "retired": {"policy": "trader", "token_sha256": Grants::hash_token("tok-old"), "revoked": true},
        "temp": {"policy": "trader", "token_sha256": Grants::hash_token("tok-t"),
                 "expires": "2020-01-01T00:00:00Z"},
        "later": {"policy": "trader", "token_sha256": Grants::hash_token("tok-l"),
                  "expires": "2999-01-01T00:00:00Z"},
    })));
    let seen = Seen::default();
    let service = PolicyLayer::from_grants_file(&path)
        .unwrap()
        .layer(upstream(&seen));
    assert_eq!(
        outcome(&service, with_token(call("transfer"), "tok-b")).await,
        "ok"
    );
    assert_eq!(
        outcome(&service, with_token(call("transfer"), "tok-l")).await,
        "ok"
    );
    assert!(
        outcome(&service, with_token(call("transfer"), "tok-r"))
            .await
            .contains("Unknown tool")
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("bot".to_owned()), Some("later".to_owned())]
    );
    for token in ["tok-old", "tok-t", "tok-B", "tok-b2", "tok"] {
        let answer = outcome(&service, with_token(call("search"), token)).await;
        assert!(
            answer.starts_with("401 [Bearer error=\"invalid_token\"]"),
            "{token}: {answer}"
        );
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "a refused token reached the server"
    );
}

#[tokio::test]
async fn anonymous_callers_get_the_anonymous_policy_when_there_is_one() {
    let files = Files::new("anonymous");
    let mut file =
        file_of(json!({"bot": {"policy": "trader", "token_sha256": Grants::hash_token("t")}}));
    file["anonymous"] = json!("read-only");
    let path = files.grants(file);
    let seen = Seen::default();
    let service = PolicyLayer::from_grants_file(&path)
        .unwrap()
        .layer(upstream(&seen));
    assert_eq!(outcome(&service, call("search")).await, "ok");
    assert!(
        outcome(&service, call("transfer"))
            .await
            .contains("Unknown tool")
    );
    // A credential that is not a grant's is still refused: it is not anonymous.
    let answer = outcome(&service, with_token(call("search"), "nope")).await;
    assert!(answer.starts_with("401"), "{answer}");
    assert_eq!(*seen.lock().unwrap(), vec![Some("anonymous".to_owned())]);
}

#[test]
fn a_grants_file_that_is_wrong_says_where() {
    let files = Files::new("errors");
    let cases = [
        (
            json!({"bot": {"policy": "trading"}}),
            "/grants/bot/policy",
            "no policy is named \"trading\"",
        ),
        (
            json!({"bot": {"policy": "trader", "token_sha256": "abc"}}),
            "/grants/bot/token_sha256",
            "64 hex digits",
        ),
        (
            json!({"bot": {"policy": "trader", "expires": "tomorrow"}}),
            "/grants/bot/expires",
            "2027-01-31T00:00:00Z",
        ),
        (
            json!({"bot": {"policy": "trader", "token": "plain"}}),
            "/grants/bot/token",
            "unknown field `token`",
        ),
        (
            json!({"bot": {"policy": "trader", "upstream": {"env": "MCP_POLICY_TEST_UNSET_VARIABLE"}}}),
            "/grants/bot/upstream",
            "MCP_POLICY_TEST_UNSET_VARIABLE",
        ),
    ];
    for (grants, pointer, message) in cases {
        let path = files.grants(file_of(grants));
        let error = Grants::from_file(&path).unwrap_err();
        assert_eq!(error.pointer(), pointer, "{error}");
        assert!(error.to_string().contains(message), "{error}");
        assert_eq!(error.file(), Some(path.as_path()));
    }
    // A duplicate grant name.
    let path = files.path().join("grants.json");
    std::fs::write(
        &path,
        r#"{"version":"1","policies":{"trader":"policies/trader.json"},
            "grants":{"bot":{"policy":"trader"},"bot":{"policy":"trader"}}}"#,
    )
    .unwrap();
    let error = Grants::from_file(&path).unwrap_err();
    assert!(error.to_string().contains("duplicate key `bot`"), "{error}");
    // A policy file that does not load names both files.
    std::fs::write(files.path().join("policies/trader.json"), "{").unwrap();
    let path = files.grants(file_of(json!({"bot": {"policy": "trader"}})));
    let error = Grants::from_file(&path).unwrap_err();
    assert_eq!(error.pointer(), "/policies/trader");
    assert!(error.to_string().contains("trader.json"), "{error}");
}

#[test]
fn upstream_credentials_come_from_the_environment_or_a_file() {
    let files = Files::new("upstream");
    std::fs::write(
        files.path().join("trader.secret"),
        "Bearer upstream-trader\n",
    )
    .unwrap();
    // SAFETY: no other test of this binary reads this variable.
    unsafe { std::env::set_var("MCP_POLICY_TEST_UPSTREAM", "Bearer upstream-all") };
    let mut file = file_of(json!({
        "researcher": {"policy": "read-only"},
        "bot": {"policy": "trader", "upstream": {"file": "trader.secret"}},
        "keyed": {"policy": "trader", "upstream": {"header": "x-api-key", "env": "MCP_POLICY_TEST_UPSTREAM"}},
    }));
    file["upstream"] = json!({"env": "MCP_POLICY_TEST_UPSTREAM"});
    let grants = Grants::from_file(files.grants(file)).unwrap();
    let of = |grant: Option<&str>| {
        grants
            .upstream_credential(grant)
            .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap().to_owned()))
    };
    let all = Some(("authorization".to_owned(), "Bearer upstream-all".to_owned()));
    assert_eq!(of(Some("researcher")), all);
    assert_eq!(of(None), all);
    assert_eq!(
        of(Some("bot")),
        Some((
            "authorization".to_owned(),
            "Bearer upstream-trader".to_owned()
        ))
    );
    assert_eq!(
        of(Some("keyed")),
        Some(("x-api-key".to_owned(), "Bearer upstream-all".to_owned()))
    );
    assert!(
        grants
            .upstream_credential(Some("bot"))
            .unwrap()
            .1
            .is_sensitive()
    );
    // Never in the Debug output.
    assert!(!format!("{grants:?}").contains("upstream-trader"));
}

#[tokio::test]
async fn a_reload_keeps_the_counters_of_unchanged_grants() {
    let seen = Seen::default();
    let layer = PolicyLayer::new(Policy::deny_all()).grants(two_grants());
    let handle = layer.handle();
    let service = layer.layer(upstream(&seen));
    for _ in 0..2 {
        assert_eq!(
            outcome(&service, as_grant(call("search"), "researcher")).await,
            "ok"
        );
    }
    // researcher unchanged, librarian revoked (removed), bot moved to read-only, a new
    // grant added.
    handle.replace_grants(
        Grants::new()
            .policy("read-only", READ_ONLY.parse().unwrap())
            .policy("trader", TRADER.parse().unwrap())
            .grant("researcher", "read-only")
            .grant("bot", "read-only")
            .grant("newcomer", "trader"),
    );
    let spent = outcome(&service, as_grant(call("search"), "researcher")).await;
    assert!(spent.contains("Rate limit"), "{spent}");
    assert!(
        outcome(&service, as_grant(call("search"), "librarian"))
            .await
            .starts_with("401")
    );
    assert!(
        outcome(&service, as_grant(call("transfer"), "bot"))
            .await
            .contains("Unknown tool")
    );
    assert_eq!(
        outcome(&service, as_grant(call("transfer"), "newcomer")).await,
        "ok"
    );
}

/// Records each call event's decision and grant name.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<Vec<Named>>>);

/// A decision and the grant name its event carried.
type Named = (String, Option<String>);

impl tower_mcp_policy::observe::Observer for Names {
    fn observe(&self, event: &tower_mcp_policy::observe::Event<'_>) {
        if let tower_mcp_policy::observe::Event::Call(call) = event {
            let name = call.grant_name.map(str::to_owned);
            self.0
                .lock()
                .unwrap()
                .push((call.decision_label().to_owned(), name));
        }
    }
}

#[tokio::test]
async fn events_carry_the_grants_name() {
    let names = Names::default();
    let seen = Seen::default();
    let service = PolicyLayer::new(Policy::deny_all())
        .grants(two_grants())
        .observer(names.clone())
        .layer(upstream(&seen));
    assert_eq!(
        outcome(&service, as_grant(call("search"), "researcher")).await,
        "ok"
    );
    outcome(&service, as_grant(call("transfer"), "researcher")).await;
    assert_eq!(
        *names.0.lock().unwrap(),
        vec![
            ("allow".to_owned(), Some("researcher".to_owned())),
            ("deny".to_owned(), Some("researcher".to_owned())),
        ]
    );
    // A layer with one policy knows callers only by their credential's hash.
    let names = Names::default();
    let service = PolicyLayer::new(Policy::deny_all())
        .observer(names.clone())
        .layer(upstream(&seen));
    outcome(&service, as_grant(call("search"), "researcher")).await;
    assert_eq!(*names.0.lock().unwrap(), vec![("deny".to_owned(), None)]);
}

/// The library path: an axum app whose own authentication middleware inserts the
/// caller's `Grant` (here from an API key it checked), in front of the policy layer.
#[tokio::test]
async fn an_axum_apps_own_authentication_picks_the_grant() {
    use axum::extract::Request as AxumRequest;
    use axum::middleware::{self, Next};

    async fn authenticate(mut request: AxumRequest, next: Next) -> axum::response::Response {
        let grant = match request.headers().get("x-api-key").map(|v| v.as_bytes()) {
            Some(b"key-of-the-researcher") => Some("researcher"),
            Some(b"key-of-the-bot") => Some("bot"),
            _ => None,
        };
        if let Some(grant) = grant {
            request.extensions_mut().insert(Grant::new(grant));
        }
        next.run(request).await
    }

    let seen = Seen::default();
    let mcp = PolicyLayer::new(Policy::deny_all())
        .grants(two_grants())
        .layer(upstream(&seen));
    // The middleware runs first: added after the policy, it is outside it.
    let app = axum::Router::new()
        .route_service("/mcp", mcp)
        .layer(middleware::from_fn(authenticate));
    let with_key = |request: Request<Full<Bytes>>, key: &str| {
        let (mut parts, body) = request.into_parts();
        parts.headers.insert("x-api-key", key.parse().unwrap());
        Request::from_parts(parts, axum::body::Body::new(body))
    };
    let send = |request: Request<axum::body::Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            (response.status(), body(response).await)
        }
    };
    let (_, answer) = send(with_key(call("transfer"), "key-of-the-bot")).await;
    assert_eq!(answer, json!({"ok": true}));
    let (_, answer) = send(with_key(call("transfer"), "key-of-the-researcher")).await;
    assert_eq!(
        answer["error"]["message"], "Unknown tool: transfer",
        "{answer}"
    );
    let (status, answer) = send(with_key(call("search"), "no-such-key")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(*seen.lock().unwrap(), vec![Some("bot".to_owned())]);
}
