//! How many heap allocations the layer adds to an allowed `tools/call`: counted by a
//! counting allocator on this thread, over 100 requests, next to the same requests sent
//! to the bare service. The README states the figure; this test keeps it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_mcp_policy::{FakeClock, Policy, PolicyLayer};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the counter is a
// thread-local `Cell` with a const initializer, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const ANSWER: &[u8] = br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"closed"}],"isError":false}}"#;

/// The MCP server: answers every call at once, allocating nothing of its own.
async fn server<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(ANSWER))))
}

fn call() -> Request<Full<Bytes>> {
    Request::post("http://localhost/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::AUTHORIZATION, "Bearer alice")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"binance_us_close_listen_key","arguments":{"listenKey":"pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a8"}}}"#,
        )))
        .unwrap()
}

/// Allocations per request of sending 100 prepared calls through `service` and
/// reading every answer whole.
async fn per_request<S, B>(mut service: S) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    // Warm up: counters, session tables and lazily built statics.
    for _ in 0..10 {
        let response = service.ready().await.unwrap().call(call()).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let requests: Vec<_> = (0..100).map(|_| call()).collect();
    let before = allocations();
    for request in requests {
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], ANSWER);
    }
    (allocations() - before) as f64 / 100.0
}

#[test]
fn an_allowed_call_costs_a_handful_of_allocations() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bare = per_request(tower::service_fn(server::<Full<Bytes>>)).await;
        let policy: Policy =
            r#"{"version":"1","default":"deny","tools":{"binance_us_close_listen_key":{
            "limits":[{"counter":"rate","window":"day","max":4000000000,"scope":"grant"}]}}}"#
                .parse()
                .unwrap();
        let layered =
            PolicyLayer::with_clock(policy, FakeClock::new()).layer(tower::service_fn(server));
        let layered = per_request(layered).await;
        let added = layered - bare;
        println!("allocations per request: bare {bare}, with the layer {layered}, added {added}");
        assert!(
            added <= 3.0,
            "the layer adds {added} allocations per request"
        );
    });
}
