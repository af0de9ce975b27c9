//! `mcp-policy explain`: the decision for one call, step by step, and the answer the
//! agent would read.

use std::convert::Infallible;
use std::future::{Ready, poll_fn, ready};
use std::path::PathBuf;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use tower_layer::Layer;
use tower_mcp_policy::layer::PolicyBody;
use tower_mcp_policy::testing::{self, Answer};
use tower_mcp_policy::{Decision, Policy, PolicyLayer};
use tower_service::Service;

use crate::{Outcome, shown};

/// `mcp-policy explain`: the options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The policy document.
    #[arg(value_name = "POLICY")]
    policy: PathBuf,
    /// The tool's name.
    #[arg(value_name = "TOOL")]
    tool: String,
    /// The call's arguments, a JSON object (numbers are read exactly as written).
    #[arg(value_name = "ARGS_JSON")]
    args: Option<String>,
}

/// What the stand-in server answers to a forwarded call.
const RAN: &str = "(the server would run the tool here)";

/// Stands in for the MCP server: answers every call with a result naming [`RAN`].
#[derive(Clone)]
struct StandIn;

impl Service<Request<PolicyBody>> for StandIn {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Full<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<PolicyBody>) -> Self::Future {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1,
            "result": {"content": [{"type": "text", "text": RAN}], "isError": false}});
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        ready(Ok(response))
    }
}

/// Sends the call through a real layer (fresh counters) to the stand-in server: the
/// HTTP status and body the agent would get, and how the test kit reads them.
async fn through_the_layer(policy: Policy, tool: &str, args: &str) -> (u16, String, Answer) {
    let tool = serde_json::to_string(tool).expect("a string is JSON");
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":{tool},"arguments":{args}}}}}"#
    );
    let request = Request::post("http://localhost/mcp")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let mut service = PolicyLayer::new(policy).layer(StandIn);
    poll_fn(|cx| Service::<Request<Full<Bytes>>>::poll_ready(&mut service, cx))
        .await
        .expect("infallible");
    let response = service.call(request).await.expect("infallible");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body in memory")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let answer = testing::answer(Response::new(Full::new(bytes)))
        .await
        .unwrap_or_else(|e| Answer::Error {
            code: 0,
            message: e,
        });
    (status, text, answer)
}

/// Runs `mcp-policy explain`.
pub async fn run(options: Options) -> Outcome {
    let policy = match Policy::from_file(&options.policy) {
        Ok(policy) => policy,
        Err(err) => {
            eprintln!("mcp-policy: {err}");
            return Outcome::Error;
        }
    };
    let text = options.args.as_deref().unwrap_or("{}");
    let explanation = match policy.explain(&options.tool, Some(text)) {
        Ok(explanation) => explanation,
        Err(err) => {
            eprintln!("mcp-policy: ARGS_JSON must be a JSON object: {err}");
            return Outcome::Error;
        }
    };
    let mut out = String::new();
    say!(
        out,
        "policy {}: {}",
        shown(&options.policy),
        policy.summary()
    );
    for warning in policy.warnings() {
        say!(out, "{}: warning: {warning}", shown(&options.policy));
    }
    say!(out, "call {} {}\n", options.tool, explanation.args);
    say!(out, "{explanation}\n");
    // A call no rule governs, under default deny: perhaps a misspelt name.
    if let Decision::Deny(denial) = &explanation.decision
        && denial.kind() == tower_mcp_policy::DenialKind::NotAllowed
    {
        let names: Vec<String> = policy
            .unmatched(&[options.tool.as_str()])
            .into_iter()
            .filter(|(entry, _)| !entry.contains('*'))
            .map(|(entry, _)| (*entry).to_owned())
            .collect();
        if let Some(name) = crate::check::did_you_mean(&options.tool, &names) {
            say!(
                out,
                "no rule names `{}`: did you mean `{name}`?\n",
                options.tool
            );
        }
    }

    let expected = explanation.decision.clone();
    let (status, body, answer) = through_the_layer(policy, &options.tool, text).await;
    let agrees = match (&expected, &answer) {
        (Decision::Allow, Answer::Result(result)) => result.to_string().contains(RAN),
        (Decision::Deny(denial), Answer::Denied(denied)) => {
            denied.rule() == denial.rule() && denied.kind() == denial.kind()
        }
        // A hidden tool is answered as the server answers an unknown one.
        (Decision::Deny(denial), Answer::Error { .. }) => {
            denial.kind() == tower_mcp_policy::DenialKind::Hidden
        }
        _ => false,
    };
    if !agrees {
        crate::print(&out);
        eprintln!(
            "mcp-policy: internal error: the layer answered differently from this explanation: HTTP {status} {body}"
        );
        return Outcome::Error;
    }
    match expected {
        Decision::Deny(_) => {
            say!(out, "the agent reads (HTTP {status}):\n{body}");
        }
        _ => {
            say!(
                out,
                "the call is forwarded to the MCP server, which answers the agent."
            );
        }
    }
    crate::print(&out);
    Outcome::Fine
}
