//! The policy composes with tower-http's layers in `ServiceBuilder`, inside and outside
//! them: this compiles, and a call, a denial and a filtered tool list come through.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::{Policy, PolicyLayer};

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
