//! Shared helpers: the demo server in-process on an ephemeral loopback port.

#![allow(dead_code)]

#[path = "../../examples/demo_server.rs"]
#[allow(dead_code, unreachable_pub)]
pub mod demo_server;

use std::net::SocketAddr;
use std::path::PathBuf;

use demo_server::Executions;
use tower_mcp_policy::{CounterStore, PolicyLayer};

pub fn example_policy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policy.json")
}

/// A running demo server; it stops when dropped.
pub struct Demo {
    pub address: SocketAddr,
    pub executions: Executions,
    task: tokio::task::JoinHandle<()>,
}

impl Demo {
    /// The demo app under `layer`, answering with SSE (`json: false`) or JSON.
    pub async fn start<S: CounterStore>(layer: PolicyLayer<S>, json: bool) -> Demo {
        let executions = Executions::default();
        let app = demo_server::app(layer, executions.clone(), demo_server::server_config(json));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Demo {
            address,
            executions,
            task,
        }
    }

    /// The demo app under the example policy, as `cargo run --example demo_server` runs it.
    pub async fn example(json: bool) -> Demo {
        Demo::start(PolicyLayer::from_file(example_policy()).unwrap(), json).await
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.address)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.task.abort();
    }
}
