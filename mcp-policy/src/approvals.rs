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

/// An answer of the API: status, content type, body.
pub type Reply = (StatusCode, &'static str, String);

impl Api {
    /// The API over the layer `handle` belongs to.
    pub fn new(handle: PolicyHandle, approvers: Approvers) -> Api {
        Api { handle, approvers }
    }

    /// Whether `path` is the API's (`/approvals` and below).
    pub fn serves(path: &str) -> bool {
        path == "/approvals" || path.starts_with("/approvals/")
    }

    /// The answer to `method path` with `headers`.
    pub fn answer(&self, method: &Method, path: &str, headers: &HeaderMap) -> Reply {
        if self.approvers.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "no approver is configured: set MCP_POLICY_APPROVER_TOKEN or --approver-token-file FILE",
            );
        }
        let Some(approver) = self.approvers.who(headers) else {
            let mut reply = error(
                StatusCode::UNAUTHORIZED,
                "an approver's token is needed: Authorization: Bearer TOKEN",
            );
            reply.1 = "application/json";
            return reply;
        };
        if *method == Method::POST && cross_site(headers) {
            return error(
                StatusCode::FORBIDDEN,
                "a request from another site cannot approve or decline",
            );
        }
        let rest = path.trim_start_matches("/approvals").trim_matches('/');
        match (method, rest.split('/').collect::<Vec<_>>().as_slice()) {
            (&Method::GET, [""]) => ok(json!({ "pending": self.handle.pending_approvals() })),
            (&Method::POST, [id, verb @ ("approve" | "decline")]) => {
                let decided = match *verb {
                    "approve" => self.handle.approve(id, approver),
                    _ => self.handle.decline(id, approver),
                };
                match decided {
                    Some(request) => {
                        let key = if *verb == "approve" {
                            "approved"
                        } else {
                            "declined"
                        };
                        ok(json!({ key: request, "by": approver }))
                    }
                    None => error(
                        StatusCode::NOT_FOUND,
                        &format!(
                            "no call waits for approval under {id}: it expired, was answered, or never existed"
                        ),
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
    (StatusCode::OK, "application/json", body.to_string())
}

fn error(status: StatusCode, message: &str) -> Reply {
    (
        status,
        "application/json",
        json!({ "error": message }).to_string(),
    )
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
