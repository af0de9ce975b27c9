//! The bodies and policies the engine benchmarks measure.

#![allow(dead_code)]

/// (a) a ~200-byte `tools/call`, and a policy with one limit.
pub const BODY_A: &str = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"binance_us_close_listen_key","arguments":{"listenKey":"pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a8"},"_meta":{"progressToken":42}}}"#;

pub const POLICY_A: &str = r#"{"version":"1","default":"deny","tools":{"binance_us_close_listen_key":{
    "limits":[{"counter":"rate","window":"day","max":4000000000,"scope":"grant"}]}}}"#;

pub const BODY_B: &str = r#"{"jsonrpc":"2.0","id":"req-7f3a9c2e","method":"tools/call","params":{"name":"transfer","arguments":{"amount":250.75,"to":"acct_9a8b7c6d5e4f3a2b","currency":"usd","memo":"Quarterly settlement for invoice INV-2026-00417, covering consulting services rendered in October and November, including travel expenses and materials as itemised in the attached statement.","reference":"a1b2c3d4-e5f6-4711-8899-aabbccddeeff","tags":["settlement","q4","consulting","priority"],"metadata":{"requested_by":"agent-42","approved_by":null,"source":"invoice-workflow","attempt":1,"dry_run":false,"notes":["checked balance","verified payee","confirmed currency"]},"schedule":{"at":"2026-11-24T12:00:00Z","timezone":"UTC","repeat":false},"limits":{"daily":5000,"monthly":50000},"beneficiary":{"name":"Example Consulting Ltd","country":"GB","bank":"Example Bank plc","address":["1 High Street","London","EC1A 1AA"],"contact":"accounts@consulting.example"},"trace":"8f14e45fceea167a5a36dedd4bea2543"},"_meta":{"progressToken":"tok-1"}}}"#;

pub const POLICY_B: &str = r#"{"version":"1","default":"deny",
    "all_tools":{"limits":[{"counter":"all","window":"day","max":4000000000}]},
    "tools":{"transfer":{
      "deny_if":[{"conditions":[{"path":"args.amount","op":"gt","value":1000}],"on_deny":"Transfers above 1000 need a human."}],
      "limits":[{"counter":"transfers","window":"day","max":4000000000}]}}}"#;

/// What the whole-request drivers (`requests`, `server`) send: a `tools/call` of the
/// demo's `echo` of about `size` bytes.
pub fn echo_call(size: usize) -> String {
    let head = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":""#;
    let tail = r#""},"_meta":{"progressToken":42}}}"#;
    let text = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a8 ".repeat(size / 48 + 1);
    let text = &text[..size.saturating_sub(head.len() + tail.len())];
    format!("{head}{text}{tail}")
}

/// Their policy: `echo` allowed with a limit that never runs out, so every call is
/// decoded, judged, charged and forwarded.
pub const ECHO_POLICY: &str = r#"{"version":"1","default":"deny","tools":{"echo":{
    "limits":[{"counter":"rate","window":"day","max":4000000000,"scope":"grant"}]}}}"#;

/// Sends `requests` calls with `body` to `http://ADDRESS/mcp` over one keep-alive
/// connection, each answered 200 with a result (never a denial), then closes it.
pub async fn send_calls(address: &str, body: String, requests: usize) {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    let connection = tokio::spawn(connection);
    let body = bytes::Bytes::from(body);
    let uri = format!("http://{address}/mcp");
    for _ in 0..requests {
        let request = http::Request::post(&uri)
            .header(http::header::HOST, address)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header(http::header::AUTHORIZATION, "Bearer bench")
            .body(http_body_util::Full::new(body.clone()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert!(
            answer.starts_with(b"{") && !answer.windows(6).any(|w| w == b"DENIED"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        std::hint::black_box(answer);
    }
    drop(sender);
    let _ = connection.await;
}

/// A policy of `rules` exact rules (`tool0000`… and `get_price`), `patterns` pattern rules
/// (`vendor0000_*`…) and `hidden` hide patterns (`hidden0000_*`…): the pattern-scaling
/// table. Every limit is on one counter that never runs out.
pub fn scaled_policy(rules: usize, patterns: usize, hidden: usize) -> String {
    let limit = r#"{"limits":[{"counter":"calls","window":"day","max":4000000000}]}"#;
    let mut tools = vec![format!(r#""get_price":{limit}"#)];
    tools.extend((1..rules).map(|i| format!(r#""tool{i:04}":{limit}"#)));
    tools.extend((0..patterns).map(|i| format!(r#""vendor{i:04}_*":{limit}"#)));
    let hide: Vec<String> = (0..hidden)
        .map(|i| format!(r#""hidden{i:04}_*""#))
        .collect();
    format!(
        r#"{{"version":"1","default":"deny","hide":[{}],"tools":{{{}}}}}"#,
        hide.join(","),
        tools.join(",")
    )
}

/// The policies of the pattern-scaling table: (name, rules, patterns, hide patterns).
pub const SCALED: &[(&str, usize, usize, usize)] = &[
    ("one-rule", 1, 0, 0),
    ("100-rules", 100, 0, 0),
    ("1000-patterns", 1, 1000, 0),
    ("100-rules+1000-hide", 100, 0, 1000),
    ("1000-patterns+1000-hide", 1, 1000, 1000),
];

/// The calls of the pattern-scaling table: an exact rule, a name only a pattern
/// resolves (denied by default where there is none), and a name nothing matches.
pub const SCALED_CALLS: &[(&str, &str)] = &[
    ("exact", "get_price"),
    ("pattern", "vendor0500_get_price"),
    ("unknown", "unknown_tool_name"),
];

/// A ~200-byte `tools/call` of `tool`.
pub fn scaled_body(tool: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"listenKey":"pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a8"}},"_meta":{{"progressToken":42}}}}}}"#
    )
}
