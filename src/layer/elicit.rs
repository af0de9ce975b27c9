//! Asking for approval in the client on MCP 2025-06-18 and 2025-11-25 (feature `tokio`):
//! over the call's own event stream.
//!
//! A client declares in `initialize` that it can ask its user (`elicitation`); the
//! layer remembers it with the session the server issued. A call of that session that
//! needs a person's approval, and accepts an event stream, is answered at once with a
//! stream whose first event is the layer's `elicitation/create` request (its id starts
//! with `mcp-policy-approval-`). The client asks its user and POSTs the answer, a
//! JSON-RPC response with that id: the layer takes it (`202 Accepted`) and never
//! forwards it (the server never asked). An approval forwards the call, and the
//! server's answer continues the same stream; a decline, a cancel, no answer within
//! the rule's timeout, or a client that goes away end it with a denial (the call never
//! ran, its charges are given back).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body::Body;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::approve::{self, Answer};
use super::body::{ResponseBody, Stage};
use crate::approval::Ask;
use crate::scope::ScopeValue;

/// What the ids of the layer's own elicitation requests start with.
pub(crate) const ID_PREFIX: &str = "mcp-policy-approval-";
/// How many calls one caller may keep waiting on its user at once.
const MAX_PER_CALLER: usize = 20;

/// Each elicitation waiting, by id: the caller it asked for, and where its answer goes.
type Waiting = HashMap<Box<str>, (ScopeValue, oneshot::Sender<Answer>)>;

/// The elicitations waiting for the client's answer, by id.
#[derive(Debug, Default)]
pub(crate) struct Elicitations {
    waiting: Mutex<Waiting>,
}

impl Elicitations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new elicitation for `owner`: its id, and where its answer arrives. `None`
    /// when the caller already has as many waiting as it may.
    pub(crate) fn open(&self, owner: ScopeValue) -> Option<(Arc<str>, oneshot::Receiver<Answer>)> {
        let mut waiting = self.lock();
        waiting.retain(|_, (_, sender)| !sender.is_closed());
        if waiting.values().filter(|(o, _)| *o == owner).count() >= MAX_PER_CALLER {
            return None;
        }
        let id: Arc<str> = format!(
            "{ID_PREFIX}{}",
            crate::pins::hex(&crate::scope::random_key())
        )
        .into();
        let (sender, receiver) = oneshot::channel();
        waiting.insert(id.as_ref().into(), (owner, sender));
        Some((id, receiver))
    }

    /// `owner`'s client answered elicitation `id`: `false` when none of its own waits
    /// under that id (never asked, already answered, given up, or another caller's).
    pub(crate) fn answer(&self, id: &str, owner: ScopeValue, answer: Answer) -> bool {
        let mut waiting = self.lock();
        if waiting.get(id).is_none_or(|(o, _)| *o != owner) {
            return false;
        }
        let (_, sender) = waiting.remove(id).expect("just found");
        sender.send(answer).is_ok()
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The client's answer in a POSTed body: a JSON-RPC response to one of the layer's
/// elicitations. `None` when the body is not one.
pub(crate) fn answer_in(body: &[u8]) -> Option<(String, Answer)> {
    let message: Value = serde_json::from_slice(body).ok()?;
    let id = message.get("id")?.as_str()?.strip_prefix(ID_PREFIX)?;
    let answer = match message.get("result") {
        Some(result) => approve::read(result.clone()),
        None => Answer::Declined,
    };
    Some((format!("{ID_PREFIX}{id}"), answer))
}

/// One server-sent event carrying `message`.
fn event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// The layer's `elicitation/create` request for `ask`, as the stream's first event.
pub(crate) fn request_event(id: &str, ask: &Ask) -> Bytes {
    let mut request = approve::elicitation(ask);
    // 2025 revisions: form mode is the default, and 2025-06-18 has no `mode`.
    if let Some(params) = request.get_mut("params").and_then(Value::as_object_mut) {
        params.remove("mode");
    }
    request["jsonrpc"] = json!("2.0");
    request["id"] = json!(id);
    event(&request)
}

/// The response whose body continues the stream, on its way.
type Running<B> = Pin<Box<dyn Future<Output = Response<ResponseBody<B>>> + Send>>;

/// What happens once the client answered (or did not in time).
pub(crate) type Then<B> = Box<dyn FnOnce(Answer) -> Running<B> + Send>;

/// The answer being passed on: an event stream as it comes, or JSON gathered into one
/// event.
struct Passing<B> {
    body: Pin<Box<ResponseBody<B>>>,
    gathered: Option<Vec<u8>>,
}

/// The event stream of a call asked about in the client.
pub(crate) struct Asking<B> {
    first: Option<Bytes>,
    answer: oneshot::Receiver<Answer>,
    timeout: Pin<Box<tokio::time::Sleep>>,
    then: Option<Then<B>>,
    running: Option<Running<B>>,
    streaming: Option<Passing<B>>,
    elicitations: Arc<Elicitations>,
    id: Arc<str>,
}

impl<B> Asking<B> {
    pub(crate) fn new(
        first: Bytes,
        answer: oneshot::Receiver<Answer>,
        timeout: Duration,
        then: Then<B>,
        elicitations: Arc<Elicitations>,
        id: Arc<str>,
    ) -> Asking<B> {
        Asking {
            first: Some(first),
            answer,
            timeout: Box::pin(tokio::time::sleep(timeout)),
            then: Some(then),
            running: None,
            streaming: None,
            elicitations,
            id,
        }
    }
}

impl<B> Drop for Asking<B> {
    fn drop(&mut self) {
        // The client went away (or the answer came): nobody waits under this id.
        self.elicitations.forget(&self.id);
        if let Some(then) = self.then.take() {
            // Gone before an answer: refused as unanswered (its charges given back,
            // reported); nobody reads the denial.
            drop(then(Answer::Missing));
        }
    }
}

impl<B> Stage for Asking<B>
where
    B: Body<Data = Bytes> + Send + 'static,
{
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(first));
        }
        loop {
            if let Some(then) = this.then.take() {
                let answer = match Pin::new(&mut this.answer).poll(cx) {
                    Poll::Ready(answer) => answer.unwrap_or(Answer::Missing),
                    Poll::Pending if this.timeout.as_mut().poll(cx).is_ready() => Answer::Missing,
                    Poll::Pending => {
                        this.then = Some(then);
                        return Poll::Pending;
                    }
                };
                this.elicitations.forget(&this.id);
                this.running = Some(then(answer));
            }
            if let Some(running) = &mut this.running {
                let response = std::task::ready!(running.as_mut().poll(cx));
                this.running = None;
                let sse = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
                let gathered = (!sse).then(Vec::new);
                this.streaming = Some(Passing {
                    body: Box::pin(response.into_body()),
                    gathered,
                });
            }
            let Some(Passing { body, gathered }) = &mut this.streaming else {
                return Poll::Ready(None);
            };
            match std::task::ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match gathered {
                        None => return Poll::Ready(Some(data)),
                        Some(json) => json.extend_from_slice(&data),
                    }
                }
                // The server's answer broke off: the stream ends.
                Some(Err(_)) => {
                    this.streaming = None;
                    return Poll::Ready(None);
                }
                None => {
                    let json = gathered.take();
                    this.streaming = None;
                    let Some(json) = json.filter(|json| !json.is_empty()) else {
                        return Poll::Ready(None);
                    };
                    let message = serde_json::from_slice::<Value>(&json).unwrap_or_else(|_| {
                        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32603,
                            "message": "the server's answer could not be read"}})
                    });
                    return Poll::Ready(Some(event(&message)));
                }
            }
        }
    }
}
