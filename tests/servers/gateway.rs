//! `mcp-policy gateway` in-process, in front of an upstream, until the test ends.

use mcp_policy::gateway::{Proxy, Upstream};
use tower_mcp_policy::PolicyLayer;

/// Serves `layer` around a proxy to `upstream` on a free loopback port; its URL.
pub async fn start(layer: PolicyLayer, upstream: &str) -> String {
    let proxy = Proxy::new(Upstream::parse(upstream).unwrap());
    start_proxy(layer, proxy).await
}

/// Serves `layer` around `proxy` (one that swaps credentials, say); its URL.
pub async fn start_proxy(layer: PolicyLayer, proxy: Proxy) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(mcp_policy::gateway::serve_proxy(
        listener,
        layer,
        proxy,
        std::future::pending(),
    ));
    format!("http://{address}/mcp")
}
