//! The approvals API the gateway and the demo server serve beside `/mcp`, outside the
//! policy: an operator lists the calls waiting for a person (`require_approval`) and
//! approves or declines them.
//!
//! ```text
//! GET  /approvals               {"pending": [{"id", "tool", "arguments", "grant", "reason", ...}]}
//! POST /approvals/ID/approve    {"approved": {...}}   (404 when nothing waits under ID)
//! POST /approvals/ID/decline    {"declined": {...}}
//! ```
//!
//! Every request needs an approver's token: `Authorization: Bearer TOKEN`, or HTTP
//! Basic with the approver's name and the token as password. Tokens come from
//! `MCP_POLICY_APPROVER_TOKEN` (the approver `operator`) and `--approver-token-file
//! FILE` (lines `NAME:TOKEN`; `#` comments). They are kept as SHA-256 digests and
//! compared in constant time; an agent's token is never an approver's. With no
//! approver configured the API answers 404: nobody can approve, so calls that need
//! approval wait until they expire.

use std::path::Path;

use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_mcp_policy::PolicyHandle;

/// The environment variable that holds the token of the approver `operator`.
pub const TOKEN_VARIABLE: &str = "MCP_POLICY_APPROVER_TOKEN";

/// The people who may approve calls: names and the digests of their tokens.
#[derive(Clone, Default)]
pub struct Approvers(Vec<(String, [u8; 32])>);

impl std::fmt::Debug for Approvers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_tuple("Approvers").field(&names).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Approvers {
    /// The approvers of `MCP_POLICY_APPROVER_TOKEN` and of `file`, or what is wrong
    /// with them.
    pub fn load(file: Option<&Path>) -> Result<Approvers, String> {
        let mut approvers = Approvers::default();
        if let Ok(token) = std::env::var(TOKEN_VARIABLE) {
            approvers.add("operator", token.trim(), TOKEN_VARIABLE)?;
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                format!(
                    "cannot read the approver token file {}: {err}",
                    path.display()
                )
            })?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let at = format!("{}:{}", path.display(), number + 1);
                let Some((name, token)) = line.split_once(':') else {
                    return Err(format!("{at}: expected NAME:TOKEN"));
                };
                approvers.add(name.trim(), token.trim(), &at)?;
            }
        }
        Ok(approvers)
    }

    fn add(&mut self, name: &str, token: &str, at: &str) -> Result<(), String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(format!(
                "{at}: an approver's name is letters, digits, and - _ . @ (not {name:?})"
            ));
        }
        if token.len() < 16 {
            return Err(format!(
                "{at}: the token of approver {name} is shorter than 16 characters; use a long random one (openssl rand -hex 32)"
            ));
        }
        if self.0.iter().any(|(known, _)| known == name) {
            return Err(format!("{at}: approver {name} is named twice"));
        }
        self.0.push((name.to_owned(), digest(token)));
        Ok(())
    }

    /// True when nobody is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The approver the request's credentials name, if they are one's.
    fn who(&self, headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = value.split_once(' ')?;
        let (claimed, token) = if scheme.eq_ignore_ascii_case("bearer") {
            (None, rest.trim().to_owned())
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (name, token) = text.split_once(':')?;
            (Some(name.to_owned()), token.to_owned())
        } else {
            return None;
        };
        let presented = digest(&token);
        // Every entry is compared, so the time taken tells nothing of which matched.
        let mut found = None;
        for (name, known) in &self.0 {
            if bool::from(known.ct_eq(&presented)) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        let name = found?;
        match claimed {
            Some(claimed) if claimed != name => None,
            _ => Some(name),
        }
    }
}

/// The approvals API of one layer.
#[derive(Debug, Clone)]
pub struct Api {
    handle: PolicyHandle,
    approvers: Approvers,
}

/// An answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
    /// Headers to add: `WWW-Authenticate` on a 401, `Location` after a form's POST.
    pub headers: Vec<(http::HeaderName, String)>,
}

impl Reply {
    /// The reply as an HTTP response with `body` made of its text.
    pub fn into_response<B: From<String>>(self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.headers {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }
}

impl Api {
    /// The API over the layer `handle` belongs to.
    pub fn new(handle: PolicyHandle, approvers: Approvers) -> Api {
        Api { handle, approvers }
    }

    /// Whether `path` is the API's (`/approvals` and below).
    pub fn serves(path: &str) -> bool {
        path == "/approvals" || path.starts_with("/approvals/")
    }

    /// The answer to `method path` with `headers`. A browser (`Accept: text/html`)
    /// gets the approvals page, and its forms' POSTs are sent back to it.
    pub async fn answer(&self, method: &Method, path: &str, headers: &HeaderMap) -> Reply {
        let html = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"));
        if self.approvers.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "no approver is configured: set MCP_POLICY_APPROVER_TOKEN or --approver-token-file FILE",
            );
        }
        let Some(approver) = self.approvers.who(headers) else {
            let mut reply = error(
                StatusCode::UNAUTHORIZED,
                "an approver's token is needed: Authorization: Bearer TOKEN (or Basic NAME:TOKEN)",
            );
            // A browser asks for the approver's name and token.
            reply.headers.push((
                header::WWW_AUTHENTICATE,
                "Basic realm=\"mcp-policy approvals\", charset=\"UTF-8\"".to_owned(),
            ));
            return reply;
        };
        if *method == Method::POST && cross_site(headers) {
            return error(
                StatusCode::FORBIDDEN,
                "a request from another site cannot approve or decline",
            );
        }
        if html && *method == Method::GET && path.ends_with("/approvals/") {
            // The page's links are relative to /approvals (or /NAME/approvals).
            return Reply {
                status: StatusCode::SEE_OTHER,
                content_type: "text/plain; charset=utf-8",
                body: String::new(),
                headers: vec![(header::LOCATION, "../approvals".to_owned())],
            };
        }
        let rest = path.trim_start_matches("/approvals").trim_matches('/');
        let unavailable = |trouble: tower_mcp_policy::counter::StoreError| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the approvals cannot be reached: {trouble}"),
            )
        };
        match (method, rest.split('/').collect::<Vec<_>>().as_slice()) {
            (&Method::GET, [""]) if html => Reply {
                status: StatusCode::OK,
                content_type: "text/html; charset=utf-8",
                body: match self.handle.pending_approvals().await {
                    Ok(pending) => page(&pending, approver),
                    Err(error) => return unavailable(error),
                },
                headers: vec![
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                    (header::X_FRAME_OPTIONS, "DENY".to_owned()),
                    (
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'".to_owned(),
                    ),
                ],
            },
            (&Method::GET, [""]) => match self.handle.pending_approvals().await {
                Ok(pending) => ok(json!({ "pending": pending })),
                Err(error) => unavailable(error),
            },
            (&Method::POST, [id, verb @ ("approve" | "decline")]) => {
                let decided = match *verb {
                    "approve" => self.handle.approve(id, approver).await,
                    _ => self.handle.decline(id, approver).await,
                };
                let decided = match decided {
                    Ok(decided) => decided,
                    Err(error) => return unavailable(error),
                };
                match decided {
                    Some(_) if html => Reply {
                        status: StatusCode::SEE_OTHER,
                        content_type: "text/plain; charset=utf-8",
                        body: String::new(),
                        // Relative: behind a gateway of several servers the page is
                        // /NAME/approvals.
                        headers: vec![(header::LOCATION, "../../approvals".to_owned())],
                    },
                    Some(request) => {
                        let key = if *verb == "approve" { "approved" } else { "declined" };
                        ok(json!({ key: request, "by": approver }))
                    }
                    None => error(
                        StatusCode::NOT_FOUND,
                        &format!("no call waits for approval under {id}: it expired, was answered, or never existed"),
                    ),
                }
            }
            (_, [""]) => error(StatusCode::METHOD_NOT_ALLOWED, "GET /approvals"),
            _ => error(
                StatusCode::NOT_FOUND,
                "the approvals API is GET /approvals, POST /approvals/ID/approve and POST /approvals/ID/decline",
            ),
        }
    }
}

/// The approvals page: each pending call with its tool, arguments, grant and reason,
/// and an Approve and a Decline button. Server-rendered, no script.
fn page(pending: &[Value], approver: &str) -> String {
    use std::fmt::Write as _;
    let mut html = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Approvals</title><style>\
         body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}\
         li{border:1px solid #ccc;border-radius:6px;padding:1rem;margin:1rem 0;list-style:none}\
         pre{background:#f5f5f5;padding:.5rem;overflow:auto}form{display:inline}\
         button{margin-right:.5rem;padding:.3rem 1rem}</style></head><body>\n<h1>Calls waiting for approval</h1>\n",
    );
    let _ = writeln!(html, "<p>Signed in as <b>{}</b>.</p>", escape(approver));
    if pending.is_empty() {
        html.push_str("<p id=\"none\">No call is waiting for approval.</p>\n");
    }
    html.push_str("<ul>\n");
    for request in pending {
        let text = |key: &str| request[key].as_str().unwrap_or("").to_owned();
        let id = escape(&text("id"));
        let arguments = serde_json::to_string_pretty(&request["arguments"]).unwrap_or_default();
        let grant = request["grant"]
            .as_str()
            .unwrap_or("(one policy for every caller)");
        let _ = writeln!(
            html,
            "<li id=\"{id}\"><h2>{tool}</h2><p class=\"reason\">{reason}</p>\
             <pre class=\"arguments\">{arguments}</pre>\
             <p>Grant: {grant} &middot; requested {requested} &middot; expires in {expires}s &middot; id {id}</p>\
             <form method=\"post\" action=\"approvals/{id}/approve\"><button name=\"approve\">Approve</button></form>\
             <form method=\"post\" action=\"approvals/{id}/decline\"><button name=\"decline\">Decline</button></form></li>",
            tool = escape(&text("tool")),
            reason = escape(&text("reason")),
            arguments = escape(&arguments),
            grant = escape(grant),
            requested = escape(&text("requested_at")),
            expires = request["expires_in_seconds"].as_u64().unwrap_or(0),
        );
    }
    html.push_str("</ul>\n</body></html>\n");
    html
}

/// `text` safe inside HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Posts each new request for approval to a URL (`--approval-webhook`): JSON with a
/// Slack-compatible `text` and the request under `approval`. Delivery never holds up
/// a request; a failure is logged. `Webhook::default()` posts nothing.
#[derive(Debug, Clone, Default)]
pub struct Webhook(Option<tokio::sync::mpsc::UnboundedSender<Value>>);

impl Webhook {
    /// A webhook posting to `url` from a task of its own (call within a Tokio runtime).
    pub fn start(url: &str) -> Result<Webhook, String> {
        #[cfg(feature = "commands")]
        {
            let parsed: http::Uri = url
                .parse()
                .map_err(|err| format!("--approval-webhook {url}: not a URL ({err})"))?;
            if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
                return Err(format!(
                    "--approval-webhook {url}: expected an http:// or https:// URL"
                ));
            }
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|err| format!("--approval-webhook: {err}"))?;
            let (sender, mut requests) = tokio::sync::mpsc::unbounded_channel::<Value>();
            let url = url.to_owned();
            tokio::spawn(async move {
                while let Some(body) = requests.recv().await {
                    let request = client
                        .post(&url)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(body.to_string());
                    match request.send().await {
                        Ok(response) if response.status().is_success() => {}
                        Ok(response) => tracing::warn!(
                            "approval webhook {url} answered {}: request {} not delivered",
                            response.status(),
                            body["approval"]["id"]
                        ),
                        Err(err) => tracing::warn!(
                            "approval webhook {url} failed: {err}: request {} not delivered",
                            body["approval"]["id"]
                        ),
                    }
                }
            });
            Ok(Webhook(Some(sender)))
        }
        #[cfg(not(feature = "commands"))]
        {
            Err(format!(
                "--approval-webhook {url}: this program does not send webhooks (mcp-policy gateway does)"
            ))
        }
    }
}

impl tower_mcp_policy::observe::Observer for Webhook {
    fn observe(&self, event: &tower_mcp_policy::observe::Event<'_>) {
        use tower_mcp_policy::observe::Event;
        let (
            Some(sender),
            Event::Approval {
                step: "requested",
                id,
                tool,
                grant,
                arguments,
                reason,
                ..
            },
        ) = (&self.0, event)
        else {
            return;
        };
        let parsed: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
        let who = grant.map(|g| format!(" by grant {g}")).unwrap_or_default();
        let text = format!(
            "Approval needed{who}: {tool} {arguments}. {reason} Approve: POST /approvals/{id}/approve, decline: POST /approvals/{id}/decline (or open /approvals)."
        );
        let _ = sender.send(json!({
            "text": text,
            "approval": { "id": id, "tool": tool, "arguments": parsed, "grant": grant, "reason": reason },
        }));
    }

    fn wants_allowed(&self) -> bool {
        false
    }
}

/// A browser's request from a page of another site (its `Origin` or
/// `Sec-Fetch-Site` says so).
fn cross_site(headers: &HeaderMap) -> bool {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = value("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (value("origin"), value("host")) {
        (Some(origin), Some(host)) => {
            let origin = origin.split("://").nth(1).unwrap_or(origin);
            origin != host
        }
        (Some(_), None) => true,
        _ => false,
    }
}

fn ok(body: Value) -> Reply {
    Reply {
        status: StatusCode::OK,
        content_type: "application/json",
        body: body.to_string(),
        headers: Vec::new(),
    }
}

fn error(status: StatusCode, message: &str) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: json!({ "error": message }).to_string(),
        headers: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    fn approvers() -> Approvers {
        let mut approvers = Approvers::default();
        approvers
            .add("ana", "0123456789abcdef-ana", "test")
            .unwrap();
        approvers.add("bo", "0123456789abcdef-bo", "test").unwrap();
        approvers
    }

    #[test]
    fn an_approver_is_known_by_token_or_by_name_and_token() {
        let approvers = approvers();
        assert_eq!(
            approvers.who(&headers("Bearer 0123456789abcdef-bo")),
            Some("bo")
        );
        assert_eq!(approvers.who(&headers("Bearer 0123456789abcdef-xx")), None);
        use base64::Engine as _;
        let basic = |text: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            )
        };
        assert_eq!(
            approvers.who(&headers(&basic("ana:0123456789abcdef-ana"))),
            Some("ana")
        );
        // Another approver's name with this token: no one.
        assert_eq!(
            approvers.who(&headers(&basic("bo:0123456789abcdef-ana"))),
            None
        );
        assert_eq!(approvers.who(&HeaderMap::new()), None);
    }

    #[test]
    fn tokens_must_be_long_and_names_plain_and_unique() {
        let mut approvers = Approvers::default();
        assert!(
            approvers
                .add("ana", "short", "x")
                .unwrap_err()
                .contains("shorter than 16")
        );
        assert!(approvers.add("a b", "0123456789abcdef", "x").is_err());
        approvers.add("ana", "0123456789abcdef", "x").unwrap();
        assert!(
            approvers
                .add("ana", "0123456789abcdefg", "x")
                .unwrap_err()
                .contains("twice")
        );
    }

    #[test]
    fn the_page_escapes_what_the_agent_chose() {
        let pending = [
            json!({"id": "abc", "tool": "<script>", "arguments": {"to": "\"><img>"},
            "grant": null, "reason": "R & D", "requested_at": "2026-12-05T00:00:00Z",
            "expires_in_seconds": 60}),
        ];
        let html = page(&pending, "ana");
        assert!(
            !html.contains("<script>") && !html.contains("<img>"),
            "{html}"
        );
        assert!(
            html.contains("&lt;script&gt;") && html.contains("R &amp; D"),
            "{html}"
        );
        assert!(html.contains("action=\"approvals/abc/approve\""), "{html}");
    }

    #[test]
    fn a_request_from_another_site_is_cross_site() {
        let mut h = HeaderMap::new();
        assert!(!cross_site(&h));
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        h.insert("origin", "http://127.0.0.1:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert("origin", "https://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h));
    }
}
