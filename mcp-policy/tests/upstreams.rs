//! Every kind of upstream behind the gateway: an https server with a certificate made
//! for the test (trusted through `--upstream-ca`, refused with a readable reason
//! without it), and `check --server https://…`.

#[path = "../../tests/servers/mod.rs"]
mod servers;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mcp_policy::gateway::{Proxy, Upstream};
use serde_json::json;
use servers::demo::{call, connect, raw};
use tower_mcp_policy::{Policy, PolicyLayer};

fn example_layer() -> PolicyLayer {
    PolicyLayer::from_file(servers::demo::example_policy()).unwrap()
}

/// The demo exchange served over https on loopback with a certificate for 127.0.0.1
/// made by the test; the CA file (the certificate itself: it is self-signed).
struct HttpsUpstream {
    url: String,
    ca: PathBuf,
    executions: demo_server::Executions,
}

async fn https_upstream(name: &str) -> HttpsUpstream {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let ca = std::env::temp_dir().join(format!("tmp-{name}-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let allow_all: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let executions = demo_server::Executions::default();
    let app = demo_server::app(
        PolicyLayer::new(allow_all),
        executions.clone(),
        demo_server::server_config(true),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: not an error.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    HttpsUpstream {
        url: format!("https://{address}/mcp"),
        ca,
        executions,
    }
}

use servers::demo::demo_server;

#[tokio::test]
async fn an_https_upstream_with_its_ca_works_behind_the_gateway() {
    let upstream = https_upstream("https-ok").await;
    let tls = mcp_policy::tls::client_config(Some(&upstream.ca)).unwrap();
    let proxy = Proxy::with_tls(Upstream::parse(&upstream.url).unwrap(), tls);
    let gateway = servers::gateway::start_proxy(example_layer(), proxy).await;

    let client = connect(gateway, "alice").await;
    assert_eq!(
        servers::demo::tool_names(&client).await,
        servers::demo::VISIBLE_TOOLS
    );
    let result = call(&client, "get_price", json!({"symbol": "ETHUSD"})).await;
    assert_eq!(
        result["content"][0]["text"],
        r#"get_price ran with {"symbol":"ETHUSD"}"#
    );
    let denied = call(&client, "transfer", json!({"amount": 2500, "to": "x"})).await;
    assert_eq!(
        denied["content"][0]["text"],
        "[POLICY DENIED] Transfers above 1000 need human approval."
    );
    assert_eq!(upstream.executions.of("get_price"), 1);
    assert_eq!(upstream.executions.of("transfer"), 0);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn an_https_upstream_without_its_ca_is_refused_with_the_reason() {
    let upstream = https_upstream("https-untrusted").await;
    let proxy = Proxy::new(Upstream::parse(&upstream.url).unwrap());
    let gateway = servers::gateway::start_proxy(example_layer(), proxy).await;

    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"get_price","arguments":{"symbol":"ETHUSD"}}});
    let response = raw(
        reqwest::Method::POST,
        &gateway,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 502, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "the TLS certificate of 127.0.0.1 is signed by an authority this machine does not trust"
        ) && message.contains("--upstream-ca FILE"),
        "{message}"
    );
    assert_eq!(upstream.executions.total(), 0);
}

#[tokio::test]
async fn check_reads_an_https_server_with_its_ca_and_says_why_not_without() {
    let upstream = https_upstream("https-check").await;
    let policy = servers::demo::example_policy();
    let url = upstream.url.clone();
    let check = move |ca: Option<&PathBuf>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-policy"));
        command.arg("check").arg(&policy).args(["--server", &url]);
        if let Some(ca) = ca {
            command.arg("--server-ca").arg(ca);
        }
        command.output().unwrap()
    };
    let ca = upstream.ca.clone();
    let (with, without) = tokio::task::spawn_blocking(move || {
        let with = check(Some(&ca));
        let without = check(None);
        (with, without)
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&with.stdout);
    assert_eq!(
        with.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(stdout.contains("get_price"), "{stdout}");

    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&without.stdout),
        String::from_utf8_lossy(&without.stderr)
    );
    assert_eq!(without.status.code(), Some(1), "{report}");
    assert!(report.contains("certificate"), "{report}");
    assert!(report.contains("--server-ca FILE"), "{report}");
}

#[test]
fn a_ca_file_that_cannot_be_used_stops_the_gateway_with_the_reason() {
    let policy = servers::demo::example_policy();
    let not_pem = std::env::temp_dir().join(format!("tmp-not-pem-{}.pem", std::process::id()));
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let missing = std::env::temp_dir().join("tmp-no-such-ca.pem");
    for (ca, expected) in [
        (&missing, "cannot read the CA file"),
        (&not_pem, "holds no certificate"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
            .arg("gateway")
            .arg("--policy")
            .arg(&policy)
            .args([
                "--upstream",
                "https://127.0.0.1:9/mcp",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--upstream-ca")
            .arg(ca)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_file(not_pem).unwrap();
}
