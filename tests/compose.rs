//! The policy composes with tower-http's and tower's layers and with `tower_governor`,
//! in `ServiceBuilder` and in axum's `Router::layer`, inside and outside them: this
//! compiles, and a call, a denial and a filtered tool list come through each stack.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::clock::QuantaInstant;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tower::buffer::BufferLayer;
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::util::MapResponseLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Policy, PolicyLayer};

mod servers;
mod support;

use servers::demo::demo_server;

fn policy() -> PolicyLayer {
    let policy: Policy =
        r#"{"version":"1","default":"deny","hide":["secret"],"tools":{"echo":{}}}"#
            .parse()
            .unwrap();
    PolicyLayer::new(policy)
}

async fn server<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = request;
    Ok(Response::new(Full::new(Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"secret"}],"content":[]}}"#,
    ))))
}

fn request(method: &str, params: serde_json::Value) -> Request<Full<Bytes>> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("origin", "https://agent.example")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer agent-1")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A call, a denial and a tool list through `service`; checks each answer.
async fn check<S, B>(service: S)
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let text = |response: Response<B>| async move {
        assert_eq!(response.status(), StatusCode::OK);
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    };
    let allowed = service
        .clone()
        .oneshot(request("tools/call", json!({"name": "echo"})))
        .await
        .unwrap();
    assert!(!text(allowed).await.contains("POLICY DENIED"));
    let denied = service
        .clone()
        .oneshot(request("tools/call", json!({"name": "transfer"})))
        .await
        .unwrap();
    assert!(text(denied).await.contains("[POLICY DENIED]"));
    let listed = service
        .oneshot(request("tools/list", json!({})))
        .await
        .unwrap();
    assert!(!text(listed).await.contains("secret"));
}

#[tokio::test]
async fn tower_http_layers_outside_the_policy() {
    // (tower-http's own limit body has no Default, so nothing that needs one, such as
    // its TimeoutLayer, can be outside RequestBodyLimitLayer; the policy's body has one.)
    let service = ServiceBuilder::new()
        .layer(RequestBodyLimitLayer::new(1 << 20))
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .layer(CorsLayer::permissive())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(5),
        ))
        .layer(policy())
        .service(tower::service_fn(server::<PolicyBody>));
    check(service).await;
}

#[tokio::test]
async fn tower_http_layers_inside_the_policy() {
    let service = ServiceBuilder::new()
        .layer(policy())
        .layer(RequestBodyLimitLayer::new(1 << 20))
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .layer(CorsLayer::permissive())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(5),
        ))
        .service(tower::service_fn(server));
    check(service).await;
}

/// tower_governor keyed on the Authorization header, generous enough never to refuse
/// here; its refusals answer 429 with an empty body. (tower_governor only serves axum
/// bodies: it needs `Response<B>: From<GovernorError>`, which it implements for axum's
/// `Body` alone, so the body under it is mapped to one: [`to_axum`].)
fn governor<B: Default + Send + 'static>()
-> GovernorLayer<AuthorizationKey, governor::middleware::NoOpMiddleware<QuantaInstant>, B> {
    let config = GovernorConfigBuilder::default()
        .per_millisecond(1)
        .burst_size(1000)
        .key_extractor(AuthorizationKey)
        .finish()
        .unwrap();
    GovernorLayer::new(Arc::new(config)).error_handler(|_| {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response
    })
}

/// Maps any response body to axum's, for tower_governor.
fn to_axum<B>() -> MapResponseLayer<fn(Response<B>) -> Response<axum::body::Body>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    MapResponseLayer::new(|response: Response<B>| response.map(axum::body::Body::new))
}

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

#[tokio::test]
async fn request_ids_validation_compression_and_load_control_outside_the_policy() {
    let x_request_id = http::HeaderName::from_static("x-request-id");
    let service = ServiceBuilder::new()
        .layer(CompressionLayer::new())
        .layer(SetRequestIdLayer::new(
            x_request_id.clone(),
            MakeRequestUuid,
        ))
        .layer(PropagateRequestIdLayer::new(x_request_id))
        .layer(ValidateRequestHeaderLayer::accept("application/json"))
        .layer(BufferLayer::new(64))
        .layer(LoadShedLayer::new())
        .layer(ConcurrencyLimitLayer::new(16))
        .layer(governor())
        .layer(to_axum())
        .layer(policy())
        .service(tower::service_fn(server::<PolicyBody>));
    check(service).await;
}

#[tokio::test]
async fn request_ids_validation_compression_and_load_control_inside_the_policy() {
    let x_request_id = http::HeaderName::from_static("x-request-id");
    let service = ServiceBuilder::new()
        .layer(policy())
        .layer(CompressionLayer::new())
        .layer(SetRequestIdLayer::new(
            x_request_id.clone(),
            MakeRequestUuid,
        ))
        .layer(PropagateRequestIdLayer::new(x_request_id))
        .layer(ValidateRequestHeaderLayer::accept("application/json"))
        .layer(BufferLayer::new(64))
        .layer(LoadShedLayer::new())
        .layer(ConcurrencyLimitLayer::new(16))
        .layer(governor())
        .layer(to_axum())
        .service(tower::service_fn(server::<PolicyBody>));
    check(service).await;
}

/// A real rmcp server (the demo exchange, stateless JSON) in an axum router, the policy
/// added with `Router::layer` together with the other layers, in both orders.
#[tokio::test]
async fn router_layer_around_a_real_rmcp_service_in_both_orders() {
    for policy_outside in [false, true] {
        let exchange: rmcp::transport::StreamableHttpService<demo_server::Exchange, _> =
            rmcp::transport::StreamableHttpService::new(
                || Ok(demo_server::Exchange::new(Default::default())),
                std::sync::Arc::new(
                    rmcp::transport::streamable_http_server::session::local::LocalSessionManager::default(),
                ),
                demo_server::server_config(true),
            );
        let mcp = axum::Router::new().nest_service("/mcp", exchange);
        // `Router::layer` wraps what is already there: the later call is outside.
        let others = ServiceBuilder::new()
            .layer(CatchPanicLayer::new())
            .layer(TraceLayer::new_for_http())
            .layer(CorsLayer::permissive())
            .layer(CompressionLayer::new())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(5),
            ));
        let policy = PolicyLayer::new(Policy::from_file(servers::demo::example_policy()).unwrap());
        let router = if policy_outside {
            mcp.layer(others).layer(policy)
        } else {
            mcp.layer(policy).layer(others)
        };
        let send = |body: serde_json::Value| {
            let request = Request::post("http://localhost/mcp")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("origin", "https://agent.example")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            router.clone().oneshot(request)
        };
        let text = |response: Response<axum::body::Body>, cors: bool| async move {
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response
                    .headers()
                    .contains_key("access-control-allow-origin"),
                cors
            );
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let allowed = send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "get_price", "arguments": {"symbol": "ETHUSD"}}}))
        .await
        .unwrap();
        let allowed = text(allowed, true).await;
        assert!(
            allowed.contains("\"result\"") && !allowed.contains("POLICY DENIED"),
            "{allowed}"
        );
        let denied = send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "transfer", "arguments": {"to": "x", "amount": 5000}}}))
        .await
        .unwrap();
        // The policy's own answers carry CORS headers only when CORS is outside it:
        // why the README puts CORS outside.
        let denied = text(denied, !policy_outside).await;
        assert!(denied.contains("[POLICY DENIED]"), "{denied}");
        let listed = send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
            .await
            .unwrap();
        let listed = text(listed, true).await;
        assert!(listed.contains("get_price"), "{listed}");
        assert!(
            !listed.contains("delete_account"),
            "a hidden tool shows: {listed}"
        );
    }
}
