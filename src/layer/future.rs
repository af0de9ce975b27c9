//! The response future of [`PolicyService`](super::PolicyService): it reads the body,
//! then drives the gate's steps (judge, wait for the store, forward, answer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::{Buffer, PolicyBody, ResponseBody};
use super::deadline::Deadline;
use super::gate::{
    ApprovalFuture, BoxError, Charging, Concluding, Forwarded, Gate, Looked, Looking, Next, Read,
    TaskLookup,
};
use crate::counter::CounterStore;
use crate::grants::Caller;

pin_project! {
    /// The response future of [`PolicyService`](super::PolicyService).
    ///
    /// See the examples in the [`layer`](crate::layer) module.
    pub struct ResponseFuture<Inner, S, ReqBody, ResBody>
    where
        Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
        S: CounterStore,
    {
        #[pin]
        state: State<Inner, S, ReqBody, ResBody>,
        gate: Arc<Gate<S>>,
        // Who the request is (`None` once refused): kept out of the state, which is
        // moved at each step.
        caller: Option<Caller>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Inner, S, ReqBody, ResBody>
    where
        Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
        S: CounterStore,
    {
        // Reading the request body, as far as the gate admitted it.
        Reading {
            #[pin]
            body: ReqBody,
            request: Option<(Parts, Inner)>,
            buffer: Buffer,
            read: Read,
            deadline: Deadline,
        },
        // Waiting for a counter store that cannot answer at once.
        Waiting {
            #[pin]
            future: S::Future,
            rest: Option<(Box<Charging>, Parts, Bytes, Inner)>,
        },
        // Waiting for the store to tell who owns a task the request names.
        Looking {
            future: TaskLookup,
            rest: Option<(Looking, Parts, Bytes, Inner, Read)>,
        },
        // Waiting for the store that shares approvals with other replicas.
        Approving {
            future: ApprovalFuture,
            rest: Option<(Box<Concluding>, Parts, Bytes, Inner)>,
        },
        // Waiting for the inner service.
        Calling {
            #[pin]
            future: Inner::Future,
            forwarded: Option<Forwarded>,
        },
        // An answer of the layer's own.
        Answered {
            response: Option<Response<ResponseBody<ResBody>>>,
        },
    }
}

impl<Inner, S, ReqBody, ResBody> ResponseFuture<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>> + Send + 'static,
    Inner::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ReqBody: Body,
    S: CounterStore,
{
    pub(crate) fn new(gate: Arc<Gate<S>>, inner: Inner, request: Request<ReqBody>) -> Self {
        let (parts, body) = request.into_parts();
        let (state, caller) = match gate.admit(&parts) {
            Ok((read, caller)) if !read.judge && body.is_end_stream() => {
                // A GET (the SSE stream), DELETE, HEAD or OPTIONS without a body passes
                // at once.
                let state = next(&gate, inner, parts, Bytes::new(), read, &caller);
                (state, Some(caller))
            }
            Ok((read, caller)) => {
                let state = State::Reading {
                    body,
                    request: Some((parts, inner)),
                    buffer: Buffer::default(),
                    read,
                    deadline: Deadline::after(gate.config.body_read_timeout),
                };
                (state, Some(caller))
            }
            Err(response) => (answered(response), None),
        };
        ResponseFuture {
            state,
            gate,
            caller,
        }
    }
}

fn answered<Inner, S, ReqBody, ResBody>(
    response: Response<ResponseBody<ResBody>>,
) -> State<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
    S: CounterStore,
{
    State::Answered {
        response: Some(response),
    }
}

/// The body has been read whole: the gate judges it.
#[inline]
fn next<Inner, S, ReqBody, ResBody>(
    gate: &Arc<Gate<S>>,
    inner: Inner,
    parts: Parts,
    bytes: Bytes,
    read: Read,
    caller: &Caller,
) -> State<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>> + Send + 'static,
    Inner::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    S: CounterStore,
{
    judged(gate, inner, parts, bytes, read, caller, &Looked::new())
}

/// The gate judges the body, knowing the owners of the tasks in `looked`.
#[inline]
fn judged<Inner, S, ReqBody, ResBody>(
    gate: &Arc<Gate<S>>,
    inner: Inner,
    parts: Parts,
    bytes: Bytes,
    read: Read,
    caller: &Caller,
    looked: &Looked,
) -> State<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>> + Send + 'static,
    Inner::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    S: CounterStore,
{
    let next = gate.judge(&parts, &bytes, read, caller, looked);
    match next {
        Next::Look(future, looking) => State::Looking {
            future,
            rest: Some((looking, parts, bytes, inner, read)),
        },
        next => step(gate, inner, parts, bytes, next),
    }
}

/// The state for what the gate said happens next.
#[inline]
fn step<Inner, S, ReqBody, ResBody>(
    gate: &Arc<Gate<S>>,
    mut inner: Inner,
    parts: Parts,
    bytes: Bytes,
    next: Next<ResBody, S>,
) -> State<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>> + Send + 'static,
    Inner::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    S: CounterStore,
{
    match next {
        Next::Forward(mut forwarded) => {
            let parts = gate.forward(&mut forwarded, parts);
            let bytes = forwarded.body.take().unwrap_or(bytes);
            State::Calling {
                future: inner.call(Request::from_parts(parts, PolicyBody::new(bytes))),
                forwarded: Some(forwarded),
            }
        }
        Next::Answer(response) => answered(response),
        Next::Wait(future, charging) => State::Waiting {
            future,
            rest: Some((charging, parts, bytes, inner)),
        },
        Next::Approve(future, concluding) => State::Approving {
            future,
            rest: Some((concluding, parts, bytes, inner)),
        },
        #[cfg(feature = "tokio")]
        Next::Elicit(forwarded, eliciting) => {
            answered(elicit(gate, inner, parts, bytes, forwarded, eliciting))
        }
        Next::Look(..) => unreachable!("a task's owner is looked up before any charge"),
    }
}

/// The event stream that asks the client's user about the call, then forwards it (or
/// refuses it) on the same stream.
#[cfg(feature = "tokio")]
fn elicit<Inner, S, ResBody>(
    gate: &Arc<Gate<S>>,
    mut inner: Inner,
    parts: Parts,
    bytes: Bytes,
    mut forwarded: Forwarded,
    mut eliciting: Box<super::gate::Eliciting>,
) -> Response<ResponseBody<ResBody>>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>> + Send + 'static,
    Inner::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    S: CounterStore,
{
    use super::approve::Answer;
    let first = std::mem::take(&mut eliciting.event);
    let (id, timeout) = (eliciting.id.clone(), eliciting.timeout);
    let answer = std::mem::replace(&mut eliciting.answer, tokio::sync::oneshot::channel().1);
    let elicitations = gate.elicitations.clone();
    let gate = gate.clone();
    let then: super::elicit::Then<ResBody> = Box::new(move |answer: Answer| {
        if answer != Answer::Approved {
            let refused = gate.elicitation_refused(forwarded, eliciting, answer);
            return Box::pin(std::future::ready(refused));
        }
        gate.elicitation_approved(&eliciting);
        let parts = gate.forward(&mut forwarded, parts);
        let bytes = forwarded.body.take().unwrap_or(bytes);
        let call = inner.call(Request::from_parts(parts, PolicyBody::new(bytes)));
        Box::pin(async move {
            match call.await {
                Ok(response) => gate.answered(response, forwarded),
                Err(_) => {
                    gate.failed(&mut forwarded);
                    gate.unreachable_server()
                }
            }
        })
    });
    let asking = super::elicit::Asking::new(first, answer, timeout, then, elicitations, id);
    let mut response = Response::new(ResponseBody::stage(Box::pin(asking)));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
}

impl<Inner, S, ReqBody, ResBody> Future for ResponseFuture<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>> + Send + 'static,
    Inner::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
    S: CounterStore,
{
    type Output = Result<Response<ResponseBody<ResBody>>, Inner::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Reading {
                    mut body,
                    request,
                    buffer,
                    read,
                    deadline,
                } => match body.as_mut().poll_frame(cx) {
                    Poll::Pending if deadline.expired(cx) => answered(this.gate.late(buffer.len())),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue; // trailers carry nothing the policy reads
                        };
                        if buffer.len() + data.remaining() > read.limit {
                            let (parts, _) = request.as_ref().expect("read until answered");
                            answered(this.gate.oversized(parts, *read))
                        } else {
                            buffer.push(data);
                            if !body.is_end_stream() {
                                continue;
                            }
                            // The body says it is complete (its length is reached): no
                            // further poll is needed to learn it.
                            let (parts, inner) = request.take().expect("read until answered");
                            let caller = this.caller.as_ref().expect("admitted");
                            next(this.gate, inner, parts, buffer.take(), *read, caller)
                        }
                    }
                    Poll::Ready(Some(Err(err))) => answered(this.gate.unreadable(err.into())),
                    Poll::Ready(None) => {
                        let (parts, inner) = request.take().expect("read until answered");
                        let caller = this.caller.as_ref().expect("admitted");
                        next(this.gate, inner, parts, buffer.take(), *read, caller)
                    }
                },
                StateProj::Waiting { future, rest } => {
                    let result = ready!(future.poll(cx));
                    let (charging, parts, bytes, inner) = rest.take().expect("charged once");
                    let next = this.gate.charged(charging, result);
                    step(this.gate, inner, parts, bytes, next)
                }
                StateProj::Looking { future, rest } => {
                    let found = ready!(future.as_mut().poll(cx));
                    let (looking, parts, bytes, inner, read) = rest.take().expect("looked once");
                    let looked = this.gate.looked(looking, found);
                    let caller = this.caller.as_ref().expect("admitted");
                    judged(this.gate, inner, parts, bytes, read, caller, &looked)
                }
                StateProj::Approving { future, rest } => {
                    let approval = ready!(future.as_mut().poll(cx));
                    let (concluding, parts, bytes, inner) = rest.take().expect("approved once");
                    let next = this.gate.approval_known(concluding, approval);
                    step(this.gate, inner, parts, bytes, next)
                }
                StateProj::Calling { future, forwarded } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(err) => {
                            if let Some(forwarded) = forwarded {
                                this.gate.failed(forwarded);
                            }
                            return Poll::Ready(Err(err));
                        }
                    };
                    let forwarded = forwarded.take().expect("answered once");
                    return Poll::Ready(Ok(this.gate.answered(response, forwarded)));
                }
                StateProj::Answered { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response));
                }
            };
            this.state.set(next);
        }
    }
}

impl<Inner, S, ReqBody, ResBody> fmt::Debug for ResponseFuture<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
    S: CounterStore,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Reading { .. } => "reading",
            State::Waiting { .. } => "waiting",
            State::Looking { .. } => "looking",
            State::Approving { .. } => "approving",
            State::Calling { .. } => "calling",
            State::Answered { .. } => "answered",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
