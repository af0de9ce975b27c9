//! The `mcp-policy` command run as a process, as a user runs it, for the tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// `mcp-policy gateway ARGS` as a user runs it, on a free port; the child (killed when
/// dropped) and the gateway's URL.
pub struct GatewayProcess {
    child: std::process::Child,
    pub url: String,
}

impl GatewayProcess {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-policy"))
            .arg("gateway")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = stdout.next().unwrap().unwrap();
        let url = first
            .strip_prefix("policy gateway listening on ")
            .and_then(|rest| rest.split(" -> ").next())
            .unwrap_or_else(|| panic!("{first}"))
            .to_owned();
        // Keep reading what it prints: with the pipe closed, its next line would kill it.
        std::thread::spawn(move || stdout.for_each(drop));
        GatewayProcess { child, url }
    }

    /// `GET PATH` on the gateway: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = self.url.replace("/mcp", path);
        let response = reqwest::get(url).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tmp-{name}-{}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}
