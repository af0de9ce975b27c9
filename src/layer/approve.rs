//! Asking for approval in the client, on MCP 2026-07-28 (multi round-trip requests).
//!
//! A call that needs a person's approval, from a client that declared it can elicit
//! (`io.modelcontextprotocol/clientCapabilities` in the call's `_meta`), is answered
//! with an `InputRequiredResult`: one form elicitation that shows the tool, the
//! arguments and the rule's reason, and a sealed `requestState` (see
//! `approval::seal`). The client asks its user and retries the call with the answer
//! under `inputResponses` and the state echoed. The retry is judged like any call,
//! then its state is opened for exactly this call (grant, tool, policy, canonical
//! arguments), its nonce spent, and the answer read: an approval forwards the call
//! once, without the layer's state and answer in it; anything else refuses it.
//! Everything else (an older revision, a client that cannot elicit, a batch) is asked
//! out of band.

use bytes::Bytes;
use http::request::Parts;
use serde_json::{Map, Value, json};

use super::request::MCP_PROTOCOL_VERSION;
use super::sessions::Elicits;
use crate::approval::{Ask, INPUT_KEY, Seal};
use crate::jsonrpc::Id;

/// The first revision with multi round-trip requests (SEP-2322).
const ROUND_TRIPS_SINCE: &str = "2026-07-28";
const CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// What a single call that needs approval says about asking in the client.
#[derive(Debug, Clone)]
pub(crate) struct InClient {
    /// Asked over the call's own event stream (MCP 2025-06-18 and 2025-11-25, see
    /// `elicit.rs`) rather than by a multi round-trip answer.
    pub stream: bool,
    /// The client declared it can ask its user (form elicitation).
    pub can_ask: bool,
    /// The client declared it can open a URL for its user (URL-mode elicitation).
    pub can_open: bool,
    /// The approval state the retry echoes (one of ours, by its form).
    pub state: Option<Box<str>>,
    /// The user's answer to the layer's elicitation.
    pub answer: Answer,
    /// The retry as the server gets it once approved: without the layer's state and
    /// answer (the server never issued them).
    pub forward: Option<Bytes>,
}

/// The user's answer to the layer's elicitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// No answer in the retry.
    Missing,
    /// `accept` with `approve: true`.
    Approved,
    /// `decline`, `cancel`, or `accept` without `approve: true`.
    Declined,
}

impl InClient {
    /// How a call of this request can be asked about in the client, if it can: a
    /// single call (`body` holds it, already checked strictly by the decoder) on a
    /// revision with multi round-trip requests.
    pub(crate) fn of(parts: &Parts, body: &[u8]) -> Option<InClient> {
        let speaks = parts
            .headers
            .get(&MCP_PROTOCOL_VERSION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|version| version >= ROUND_TRIPS_SINCE);
        if !speaks {
            return None;
        }
        let mut message: Value = serde_json::from_slice(body).ok()?;
        let params = message.get_mut("params")?.as_object_mut()?;
        let declared = elicits(
            params
                .get("_meta")
                .and_then(|meta| meta.get(CAPABILITIES))
                .and_then(|capabilities| capabilities.get("elicitation")),
        );
        let state = params
            .get("requestState")
            .and_then(Value::as_str)
            .filter(|state| Seal::claims(state))
            .map(Box::from);
        let mut client = InClient {
            stream: false,
            can_ask: declared.form,
            can_open: declared.url,
            state,
            answer: Answer::Missing,
            forward: None,
        };
        if client.state.is_none() {
            return Some(client);
        }
        params.remove("requestState");
        if let Some(Value::Object(responses)) = params.get_mut("inputResponses") {
            client.answer = responses.remove(INPUT_KEY).map_or(Answer::Missing, read);
            if responses.is_empty() {
                params.remove("inputResponses");
            }
        }
        client.forward = serde_json::to_vec(&message).ok().map(Bytes::from);
        Some(client)
    }
}

impl InClient {
    /// A call of a session whose client declared it can ask its user, on a revision
    /// that asks over the call's event stream.
    #[cfg(feature = "tokio")]
    pub(crate) fn stream() -> InClient {
        InClient {
            stream: true,
            can_ask: true,
            can_open: false,
            state: None,
            answer: Answer::Missing,
            forward: None,
        }
    }
}

/// How an `initialize` request (`body`) declares its client can ask its user.
pub(crate) fn declares_elicitation(body: &[u8]) -> Elicits {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return Elicits::default();
    };
    elicits(message.pointer("/params/capabilities/elicitation"))
}

/// An `elicitation` capability: `{}` is form mode; otherwise the modes it names.
fn elicits(capability: Option<&Value>) -> Elicits {
    match capability.and_then(Value::as_object) {
        None => Elicits::default(),
        Some(modes) if modes.is_empty() => Elicits {
            form: true,
            url: false,
        },
        Some(modes) => Elicits {
            form: modes.contains_key("form"),
            url: modes.contains_key("url"),
        },
    }
}

/// The answer to a call that waits for an operator (`denial`, request `id`), for a
/// client that opens URLs for its user: a URL elicitation required error (-32042) to
/// the approvals `page`, the denial as its message.
pub(crate) fn url_required(
    call: Option<&Id>,
    denial: &crate::decision::Denial,
    id: &str,
    page: &str,
) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": call,
        "error": {
            "code": URL_ELICITATION_REQUIRED,
            "message": denial.message(),
            "data": {
                "elicitations": [{
                    "mode": "url",
                    "elicitationId": id,
                    "url": format!("{page}#{id}"),
                    "message": format!(
                        "{} Approve or decline it on the approvals page.",
                        denial.message()
                    ),
                }],
                "rule": denial.rule(),
                "tool": denial.tool(),
                "kind": denial.kind().as_str(),
                "approvalId": id,
            }
        }
    })
}

/// The JSON-RPC error code of a request that needs the user to open a URL first
/// (MCP 2025-11-25).
const URL_ELICITATION_REQUIRED: i64 = -32042;

/// An elicitation result: approved only by `accept` with `approve: true`.
pub(crate) fn read(result: Value) -> Answer {
    let accepted = result.get("action").and_then(Value::as_str) == Some("accept");
    let approve = result
        .get("content")
        .and_then(|content| content.get("approve"))
        .and_then(Value::as_bool);
    if accepted && approve == Some(true) {
        Answer::Approved
    } else {
        Answer::Declined
    }
}

/// The `elicitation/create` request that asks the user to approve `ask`: the reason,
/// the tool and the arguments, and one boolean to answer.
pub(crate) fn elicitation(ask: &Ask) -> Value {
    let arguments: Value =
        serde_json::from_str(&ask.arguments).unwrap_or_else(|_| Value::Object(Map::new()));
    let message = format!(
        "{}\n\nTool: {}\nArguments: {}\n\nApprove this call? It runs once, with exactly these arguments.",
        ask.reason,
        ask.tool,
        serde_json::to_string_pretty(&arguments).unwrap_or_else(|_| ask.arguments.to_string()),
    );
    json!({
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": message,
            "requestedSchema": {
                "type": "object",
                "properties": {
                    "approve": {
                        "type": "boolean",
                        "title": format!("Approve {}", ask.tool),
                        "description": "Run this call once, with exactly these arguments.",
                        "default": false
                    }
                },
                "required": ["approve"]
            }
        }
    })
}

/// The answer that asks the client's user to approve `ask`, with `state` to echo.
pub(crate) fn input_required(id: Option<&Id>, ask: &Ask, state: String) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "resultType": "input_required",
            "inputRequests": { INPUT_KEY: elicitation(ask) },
            "requestState": state,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: &str) -> Parts {
        let request = http::Request::post("/mcp")
            .header("mcp-protocol-version", version)
            .body(())
            .unwrap();
        request.into_parts().0
    }

    #[test]
    fn only_a_revision_with_round_trips_is_asked_in_the_client() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}}}"#;
        assert!(InClient::of(&parts("2025-11-25"), body).is_none());
        let client = InClient::of(&parts("2026-07-28"), body).unwrap();
        assert!(client.can_ask && client.state.is_none() && client.forward.is_none());
        // URL mode only: the layer's form cannot be shown.
        let url_only = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"io.modelcontextprotocol/clientCapabilities":{"elicitation":{"url":{}}}}}}"#;
        assert!(
            !InClient::of(&parts("2026-07-28"), url_only)
                .unwrap()
                .can_ask
        );
    }

    #[test]
    fn the_retry_goes_on_without_the_layers_state_and_answer() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1},"requestState":"mcp-policy-approval.1.x","inputResponses":{"mcp-policy/approval":{"action":"accept","content":{"approve":true}},"other":{"action":"decline"}}}}"#;
        let client = InClient::of(&parts("2026-07-28"), body).unwrap();
        assert_eq!(client.answer, Answer::Approved);
        let forward: Value = serde_json::from_slice(&client.forward.unwrap()).unwrap();
        assert_eq!(
            forward["params"],
            json!({"name":"t","arguments":{"a":1},"inputResponses":{"other":{"action":"decline"}}})
        );
        for answer in [
            json!({"action":"accept","content":{"approve":false}}),
            json!({"action":"accept","content":{"approve":"true"}}),
            json!({"action":"accept"}),
            json!({"action":"decline"}),
            json!({"action":"cancel"}),
        ] {
            assert_eq!(read(answer.clone()), Answer::Declined, "{answer}");
        }
    }
}
