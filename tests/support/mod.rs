//! What the tests share (`mod support;` in a test file): requests built with the
//! crate's own testing kit, as a user's tests would build them, and
//!
//! * `redis_server`: a redis-server of the test's own on a free loopback port;
//! * `recorder`: a tracing layer that keeps every event, for tests of the log.
//!
//! The MCP servers tests talk to are in `tests/servers/` (`mod servers;`, beside this
//! module), kept apart because building them costs every test that includes them.

#![allow(dead_code, unreachable_pub)]

pub mod recorder;
pub mod redis_server;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use tower_mcp_policy::testing;

/// A `tools/call` of `tool` with `args`, as an MCP client posts it.
pub fn call(tool: &str, args: Value) -> Request<Full<Bytes>> {
    testing::tool_call(tool, args)
}

/// The same call from the caller whose credential is `authorization`.
pub fn call_as(tool: &str, args: Value, authorization: &str) -> Request<Full<Bytes>> {
    testing::as_caller(testing::tool_call(tool, args), authorization)
}

/// The repository's root (examples, fixtures, the pinned npm packages), from the tests
/// of either package of the workspace.
pub fn repository() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    match here.join("examples/policy.json").exists() {
        true => here.to_path_buf(),
        false => here.parent().expect("the workspace's root").to_path_buf(),
    }
}
