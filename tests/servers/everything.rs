//! The official TypeScript reference MCP server "everything"
//! (`@modelcontextprotocol/server-everything`, pinned in tests/ts/package-lock.json) on
//! a free loopback port. Needs Node.js; fails loudly without it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::demo::ensure_npm_packages;

/// The reference server on a free loopback port; killed when dropped.
pub struct Everything {
    child: Child,
    pub url: String,
}

impl Everything {
    pub async fn start() -> Everything {
        let entry = ensure_npm_packages()
            .join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
        // Ports handed out for `:0` binds come from the ephemeral range (32768 and up on
        // Linux); choosing below it means no listener of this test run can take ours.
        // Distinct for every server this process starts; varied across processes.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let base = std::process::id() % 1000 * 10;
        for _ in 0..10 {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let port = 20_000 + ((base + n) % 10_000) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            let mut child = Command::new("node")
                .arg(&entry)
                .arg("streamableHttp")
                .env("PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("node is needed to run the reference server");
            // Wait for this process to say it listens (not for any listener on the port).
            let stderr = child.stderr.take().unwrap();
            let (ready, listening) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut said = false;
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if !said && line.contains("listening on port") {
                        said = true;
                        let _ = ready.send(());
                    }
                }
            });
            match listening.recv_timeout(Duration::from_secs(30)) {
                Ok(()) => {
                    return Everything {
                        child,
                        url: format!("http://127.0.0.1:{port}/mcp"),
                    };
                }
                Err(_) => {
                    // It exited (the port was taken after all) or hung: try another.
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("the reference server could not find a free port");
    }
}

impl Drop for Everything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
