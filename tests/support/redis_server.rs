//! A `redis-server` of a test's (or benchmark's) own, on a free loopback port with no
//! persistence. Starting it fails loudly when redis-server is missing.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tower_mcp_policy::counter::RedisCounters;
use tower_mcp_policy::counter::RedisCountersBuilder;

/// A `redis-server` of this test's own; killed when dropped.
pub struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis { child: None, port };
        redis.restart();
        redis
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is needed for these tests (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// CPU time the server process has used so far (user and system, from `/proc`; Linux).
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The fields after the command name (in parentheses): utime and stime are the
        // 12th and 13th, in clock ticks (100 per second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn builder(&self) -> RedisCountersBuilder {
        RedisCounters::builder(self.url())
    }

    /// The keys matching `pattern`.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut client = self.client().await;
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut client)
            .await
            .unwrap()
    }

    /// `EVALSHA` calls so far, and the Redis CPU time they took (microseconds), from
    /// `INFO commandstats`.
    pub async fn script_stats(&self) -> (u64, u64) {
        let mut client = self.client().await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut client)
            .await
            .unwrap();
        let line = info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
            .unwrap_or("");
        let field = |name: &str| -> u64 {
            line.split(',')
                .find_map(|f| f.strip_prefix(name))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (field("calls="), field("usec="))
    }

    /// The charges a counter's bucket at `key` holds now (its theoretical arrival time
    /// ahead of the server's clock, in periods). The key holds the time in quarters of
    /// a microsecond.
    pub async fn charges_held(&self, key: &str, period: Duration) -> f64 {
        let mut client = self.client().await;
        let (seconds, micros): (u64, u64) =
            redis::cmd("TIME").query_async(&mut client).await.unwrap();
        let now = seconds as f64 * 1e6 + micros as f64;
        let tat: String = redis::cmd("GET")
            .arg(key)
            .query_async(&mut client)
            .await
            .unwrap();
        (tat.parse::<f64>().unwrap() / 4.0 - now) / period.as_micros() as f64
    }

    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
