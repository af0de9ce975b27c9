//! The response future of [`PolicyService`](super::PolicyService): a state machine that
//! reads the body, asks the policy, then calls the inner service or answers itself.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::ResponseBody;
use super::body::{Buffer, PolicyBody};
use super::deadline::Deadline;
use super::request::{Refused, check_entity_headers, too_large};
use super::service::{
    BoxError, Charging, Forwarded, Judged, Judgment, MCP_SESSION_ID, Outcome, PolicyDecision,
    Shared,
};
use crate::counter::CounterStore;
use crate::jsonrpc::INVALID_REQUEST;

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
        shared: Arc<Shared<S>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Inner, S, ReqBody, ResBody>
    where
        Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
        S: CounterStore,
    {
        // Reading the request body: up to the body limit for methods that are judged,
        // nothing at all for GET, DELETE, HEAD and OPTIONS.
        Reading {
            #[pin]
            body: ReqBody,
            request: Option<(Parts, Inner)>,
            buffer: Buffer,
            limit: usize,
            judge: bool,
            deadline: Deadline,
        },
        // Waiting for a counter store that cannot answer at once; the body was decoded
        // and judged, and only the charges remain.
        Charging {
            #[pin]
            future: S::Future,
            rest: Option<(Charging, Parts, Bytes, Inner)>,
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
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    S: CounterStore,
{
    pub(crate) fn new(shared: Arc<Shared<S>>, mut inner: Inner, request: Request<ReqBody>) -> Self {
        let (parts, body) = request.into_parts();
        let bodiless = matches!(
            parts.method,
            Method::GET | Method::DELETE | Method::HEAD | Method::OPTIONS
        );
        let state = if bodiless && body.is_end_stream() {
            // GET (the SSE stream), DELETE, HEAD, OPTIONS pass untouched.
            let forwarded = Forwarded::unjudged(shared.engine.policy());
            calling(&shared, &mut inner, parts, Bytes::new(), forwarded)
        } else if bodiless {
            // They never carry a body nobody read: read it, and refuse any byte.
            State::Reading {
                body,
                request: Some((parts, inner)),
                buffer: Buffer::default(),
                limit: 0,
                judge: false,
                deadline: Deadline::after(shared.config.body_read_timeout),
            }
        } else {
            // POST, and every other method that can carry a body, is read and judged.
            match check_entity_headers(&parts.headers, shared.config.max_body) {
                Err(refused) => answered(&shared, refused),
                Ok(()) => State::Reading {
                    body,
                    request: Some((parts, inner)),
                    buffer: Buffer::default(),
                    limit: shared.config.max_body,
                    judge: true,
                    deadline: Deadline::after(shared.config.body_read_timeout),
                },
            }
        };
        ResponseFuture { state, shared }
    }
}

fn answered<Inner, S, ReqBody, ResBody>(
    shared: &Shared<S>,
    refused: Refused,
) -> State<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
    S: CounterStore,
{
    State::Answered {
        response: Some(shared.refused_response(refused, None)),
    }
}

fn calling<Inner, S, ReqBody, ResBody>(
    shared: &Shared<S>,
    inner: &mut Inner,
    parts: Parts,
    bytes: Bytes,
    mut forwarded: Forwarded,
) -> State<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
    S: CounterStore,
{
    forwarded.session = parts.headers.get(&MCP_SESSION_ID).cloned();
    forwarded.deletes = parts.method == Method::DELETE;
    forwarded.streams = parts.method == Method::GET;
    if !forwarded.allowed.is_empty() {
        forwarded.sent = Some(std::time::Instant::now());
    }
    let parts = shared.prepare_forward(&forwarded, parts);
    State::Calling {
        future: inner.call(Request::from_parts(parts, PolicyBody::new(bytes))),
        forwarded: Some(forwarded),
    }
}

fn after_judging<Inner, S, ReqBody, ResBody>(
    shared: &Shared<S>,
    mut inner: Inner,
    judged: Judged<ResBody>,
    parts: Parts,
    bytes: Bytes,
) -> State<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
    S: CounterStore,
{
    match judged {
        Judged::Forward(forwarded) => calling(shared, &mut inner, parts, bytes, forwarded),
        Judged::Answer(response) => State::Answered {
            response: Some(response),
        },
    }
}

impl<Inner, S, ReqBody, ResBody> Future for ResponseFuture<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
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
                    limit,
                    judge,
                    deadline,
                } => match body.as_mut().poll_frame(cx) {
                    Poll::Pending if deadline.expired(cx) => answered(
                        this.shared,
                        Refused {
                            status: StatusCode::REQUEST_TIMEOUT,
                            code: INVALID_REQUEST,
                            message: format!(
                                "the request body did not arrive within {:?} (received {} bytes)",
                                this.shared.config.body_read_timeout.unwrap_or_default(),
                                buffer.len()
                            ),
                        },
                    ),
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(frame) => match frame {
                        Some(Ok(frame)) => {
                            let Ok(data) = frame.into_data() else {
                                continue; // trailers carry nothing the policy reads
                            };
                            if buffer.len() + data.remaining() <= *limit {
                                buffer.push(data);
                                if !body.is_end_stream() {
                                    continue;
                                }
                                // The body says it is complete (its length is reached):
                                // no further poll is needed to learn it.
                                read_whole(this.shared, request, buffer, *judge)
                            } else {
                                let (parts, _) = request.as_ref().expect("read until answered");
                                answered(
                                    this.shared,
                                    if *judge {
                                        too_large(*limit)
                                    } else {
                                        Refused {
                                            status: StatusCode::BAD_REQUEST,
                                            code: INVALID_REQUEST,
                                            message: format!(
                                                "a {} request must not carry a body",
                                                parts.method
                                            ),
                                        }
                                    },
                                )
                            }
                        }
                        Some(Err(err)) => answered(
                            this.shared,
                            Refused {
                                status: StatusCode::BAD_REQUEST,
                                code: INVALID_REQUEST,
                                message: format!("could not read the request body: {}", err.into()),
                            },
                        ),
                        None => read_whole(this.shared, request, buffer, *judge),
                    },
                },
                StateProj::Charging { future, rest } => {
                    let result = ready!(future.poll(cx));
                    let (charging, parts, bytes, inner) = rest.take().expect("charged once");
                    let judged = this.shared.charged(charging, result);
                    after_judging(this.shared, inner, judged, parts, bytes)
                }
                StateProj::Calling { future, forwarded } => {
                    let response = match ready!(future.poll(cx)) {
                        Ok(response) => response,
                        Err(err) => {
                            if let Some(forwarded) = forwarded {
                                this.shared.failed(forwarded);
                            }
                            return Poll::Ready(Err(err));
                        }
                    };
                    let forwarded = forwarded.take().expect("answered once");
                    return Poll::Ready(Ok(this.shared.wrap(response, forwarded)));
                }
                StateProj::Answered { response } => {
                    let mut response = response.take().expect("polled after completion");
                    if response.extensions().get::<PolicyDecision>().is_none() {
                        // Every answer of the layer's own that is not a denial.
                        let rejected = PolicyDecision::new(Outcome::Rejected);
                        response.extensions_mut().insert(rejected);
                    }
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
            State::Charging { .. } => "charging",
            State::Calling { .. } => "calling",
            State::Answered { .. } => "answered",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// The body has been read whole: judge it (or forward it unjudged), and the next state.
fn read_whole<Inner, S, ReqBody, ResBody>(
    shared: &Arc<Shared<S>>,
    request: &mut Option<(Parts, Inner)>,
    buffer: &mut Buffer,
    judge: bool,
) -> State<Inner, S, ReqBody, ResBody>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    S: CounterStore,
{
    let (parts, mut inner) = request.take().expect("read until answered");
    let bytes = buffer.take();
    if !judge {
        let forwarded = Forwarded::unjudged(shared.engine.policy());
        return calling(shared, &mut inner, parts, bytes, forwarded);
    }
    match shared.judge(&parts, &bytes) {
        Judgment::Judged(judged) => after_judging(shared, inner, judged, parts, bytes),
        Judgment::Awaiting(future, charging) => State::Charging {
            future,
            rest: Some((charging, parts, bytes, inner)),
        },
    }
}
