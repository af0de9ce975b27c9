//! Start-up shared by the example programs: logging, the policy, the listener. Every
//! failure ends the program with a one-line message and an exit code, never a panic.

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tower_mcp_policy::PolicyLayer;

/// The command-line options, or exit code 2 with the message.
pub fn options_or_exit<T>(program: &str, options: Result<T, String>) -> T {
    options.unwrap_or_else(|message| {
        eprintln!("{program}: {message}");
        std::process::exit(2);
    })
}

/// Logs to stderr; `RUST_LOG` overrides the default (decisions at debug). Colours only
/// when stderr is a terminal, so a log file or collector gets no escape sequences.
pub fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_mcp_policy=debug".into()),
        )
        .init();
}

/// The policy layer from `path`, or exit code 1 with the error's path and line.
pub fn load_layer(program: &str, path: &Path) -> PolicyLayer {
    PolicyLayer::from_file(path).unwrap_or_else(|err| {
        eprintln!("{program}: cannot load the policy: {err}");
        std::process::exit(1);
    })
}

/// A listener on `address`, or exit code 1.
pub async fn bind(program: &str, address: SocketAddr) -> TcpListener {
    TcpListener::bind(address).await.unwrap_or_else(|err| {
        eprintln!("{program}: cannot listen on {address}: {err}");
        std::process::exit(1);
    })
}
