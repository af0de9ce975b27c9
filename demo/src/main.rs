//! The demo server: `cargo run -p demo -- --help` from the repository's root. The
//! server itself is this package's library (`src/lib.rs`).

#[tokio::main]
async fn main() {
    demo_server::main().await;
}
