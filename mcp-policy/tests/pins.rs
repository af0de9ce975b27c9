//! Tool pins as an operator uses them, in front of the official TypeScript reference
//! server `everything` (needs Node.js): `mcp-policy pin` writes the lock file, `check
//! --pins` passes, the gateway with `--pins` shows every tool to the official
//! TypeScript SDK client; one digest edited in the file, and that tool disappears from
//! the list the client reads, its calls are denied, and `check --pins` fails with the
//! difference.

#[path = "../../tests/servers/mod.rs"]
mod servers;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};
use servers::everything::Everything;
use tower_mcp_policy::{Policy, PolicyLayer};

async fn mcp_policy(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| (*a).to_owned()).collect()
}

/// A gateway with `pins` in front of `upstream`; its URL.
async fn gateway(pins: &Path, upstream: &str) -> String {
    let allow: Policy = r#"{"version":"1","default":"allow"}"#.parse().unwrap();
    let layer = PolicyLayer::new(allow).pins_file(pins).unwrap();
    servers::gateway::start(layer, upstream).await
}

async fn typescript(url: &str, steps: Value) -> Vec<Value> {
    servers::demo::node_script(
        "client.mjs",
        vec![url.to_owned(), "agent".into(), steps.to_string()],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_tools_pass_and_an_edited_pin_withholds_its_tool() {
    let server = Everything::start().await;
    let dir = std::env::temp_dir().join(format!("mcp-pins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("tools.lock.json");
    let lock_arg = lock.to_str().unwrap();

    let pinned = mcp_policy(args(&["pin", "--server", &server.url, "--out", lock_arg])).await;
    let said = String::from_utf8_lossy(&pinned.stdout).into_owned();
    assert!(
        pinned.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    assert!(said.contains("tools of"), "{said}");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    assert!(
        file["tools"]["echo"]["sha256"].as_str().unwrap().len() == 64,
        "{file}"
    );
    // The schema describes the file.
    let schema = mcp_policy(args(&["schema", "--pins"])).await;
    let schema: Value = serde_json::from_slice(&schema.stdout).unwrap();
    assert!(jsonschema::validator_for(&schema).unwrap().is_valid(&file));

    let again = mcp_policy(args(&["pin", "--server", &server.url, "--out", lock_arg])).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    let check = args(&["check", "--pins", lock_arg, "--server", &server.url]);
    let checked = mcp_policy(check.clone()).await;
    let text = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert_eq!(checked.status.code(), Some(0), "{text}");
    assert!(text.contains("every tool matches its pin"), "{text}");

    // Through the gateway, the TypeScript client sees every tool the server has.
    let url = gateway(&lock, &server.url).await;
    let listed = typescript(&url, json!([{"list": true}])).await;
    let all = listed[0]["tools"].as_array().unwrap().clone();
    assert!(all.contains(&json!("echo")), "{listed:?}");
    let pinned_names = file["tools"].as_object().unwrap().len();
    assert_eq!(all.len(), pinned_names, "{listed:?}");

    // Edit echo's pin, as if its description had been reviewed differently.
    let mut edited = file.clone();
    edited["tools"]["echo"]["sha256"] = json!("0".repeat(64));
    edited["tools"]["echo"]["fields"]["description"] = json!("0".repeat(64));
    std::fs::write(&lock, edited.to_string()).unwrap();
    let url = gateway(&lock, &server.url).await;
    let steps = json!([{"list": true}, {"call": "echo", "args": {"message": "hi"}}]);
    let seen = typescript(&url, steps).await;
    let tools = seen[0]["tools"].as_array().unwrap();
    assert!(!tools.contains(&json!("echo")), "{seen:?}");
    assert_eq!(tools.len(), pinned_names - 1);
    let denied = seen[1]["result"]["content"][0]["text"].as_str().unwrap();
    assert!(denied.contains("changed since it was reviewed"), "{denied}");

    let checked = mcp_policy(check).await;
    let text = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert_eq!(checked.status.code(), Some(1), "{text}");
    assert!(text.contains("~ echo: description"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
