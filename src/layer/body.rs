//! The request body handed to the inner service, and the response body handed back.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use super::filter::{Filter, filter_event, filter_message};
use super::inflight::Claim;
use super::refund::Watch;
use super::sse::{SseSplitter, event_data};
use crate::jsonrpc::INTERNAL_ERROR;

/// The request body the inner service receives: the bytes the policy read.
///
/// See the examples in the [`layer`](crate::layer) module.
#[derive(Debug, Default)]
pub struct PolicyBody {
    inner: Full<Bytes>,
}

impl PolicyBody {
    pub(crate) fn new(bytes: Bytes) -> Self {
        PolicyBody {
            inner: Full::new(bytes),
        }
    }
}

impl Body for PolicyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The response body of [`PolicyService`](super::PolicyService): the inner service's
    /// body, a tools/list answer with hidden tools removed, or an answer of the layer's own.
    ///
    /// See the examples in the [`layer`](crate::layer) module.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        // The request's ids, in flight until this answer is dropped.
        claim: Option<Box<Claim>>,
    }
}

/// A stream of the layer's own making, frame by frame (it cannot fail).
pub(crate) trait Stage: Send {
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // The layer's own stream (an approval asked over the call's event stream).
        Stage { stage: Pin<Box<dyn Stage>> },
        Full { bytes: Option<Bytes> },
        // An event stream, event by event: filtered when `filter` is set, watched for
        // error answers (refunds) when `watch` is.
        Sse {
            #[pin] body: B,
            splitter: SseSplitter,
            // The largest event buffered to filter.
            limit: usize,
            filter: Option<Box<Filter>>,
            watch: Option<Watch>,
            done: bool,
        },
        // A whole JSON answer: buffered and filtered when `filter` is set; otherwise
        // passed on frame by frame, a copy kept (up to `limit`) to watch for errors.
        Json {
            #[pin] body: B,
            buffer: Buffer,
            limit: usize,
            filter: Option<Box<Filter>>,
            watch: Option<Watch>,
            done: bool,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
            claim: None,
        }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full { bytes: Some(bytes) },
            claim: None,
        }
    }

    pub(crate) fn stage(stage: Pin<Box<dyn Stage>>) -> Self {
        ResponseBody {
            kind: Kind::Stage { stage },
            claim: None,
        }
    }

    pub(crate) fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full { bytes: None },
            claim: None,
        }
    }

    pub(crate) fn sse(
        body: B,
        filter: Option<Box<Filter>>,
        limit: usize,
        watch: Option<Watch>,
    ) -> Self {
        ResponseBody {
            kind: Kind::Sse {
                body,
                splitter: SseSplitter::default(),
                limit,
                filter,
                watch,
                done: false,
            },
            claim: None,
        }
    }

    /// The same body, holding the request's ids in flight until it is dropped.
    pub(crate) fn holding(mut self, claim: Option<Box<Claim>>) -> Self {
        self.claim = claim;
        self
    }

    pub(crate) fn json(
        body: B,
        filter: Option<Box<Filter>>,
        limit: usize,
        watch: Option<Watch>,
    ) -> Self {
        ResponseBody {
            kind: Kind::Json {
                body,
                buffer: Buffer::default(),
                limit,
                filter,
                watch,
                done: false,
            },
            claim: None,
        }
    }
}

/// An empty body: what tower-http's layers (`TimeoutLayer`, `CorsLayer` preflights, ...)
/// answer with when they answer by themselves.
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody::empty()
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Full { .. } => "full",
            Kind::Stage { .. } => "stage",
            Kind::Sse { .. } => "sse-filtered",
            Kind::Json { .. } => "json-filtered",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.kind.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // The answer has been delivered whole: its ids are free again.
            *this.claim = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}

impl<B> Kind<B>
where
    B: Body<Data = Bytes>,
{
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            KindProj::Stage { stage } => stage
                .as_mut()
                .poll_frame(cx)
                .map(|b| b.map(|b| Ok(Frame::data(b)))),
            KindProj::Sse {
                mut body,
                splitter,
                limit,
                filter,
                watch,
                done,
            } => loop {
                let event = match splitter.next_event() {
                    Some(event) => event,
                    None if *done => match splitter.rest() {
                        Some(rest) => rest,
                        None => return Poll::Ready(None),
                    },
                    // An event that must be filtered is buffered whole, so no more of
                    // it than the limit: past that it is withheld, and the stream ends.
                    // An event read only to learn from stops being read.
                    None if splitter.pending() > *limit
                        && filter.as_ref().is_some_and(|f| !f.rewrites()) =>
                    {
                        *filter = None;
                        continue;
                    }
                    None if splitter.pending() > *limit
                        && let Some(filter) = filter =>
                    {
                        filter.withheld(&format!(
                            "an event of the stream is larger than the {limit} bytes the \
                             layer reads to filter it (max_filtered_response_size)"
                        ));
                        *done = true;
                        *watch = None;
                        *splitter = SseSplitter::default();
                        let event = format!("event: message\ndata: {}\n\n", unfilterable_text());
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
                    }
                    None => {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => match frame.into_data() {
                                Ok(data) => splitter.push(&data),
                                Err(frame) => return Poll::Ready(Some(Ok(frame))),
                            },
                            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                            None => *done = true,
                        }
                        continue;
                    }
                };
                // Whole events go out as soon as they are complete, one frame each.
                if let Some(watch) = watch
                    && let Some(data) = event_data(&event)
                {
                    watch.message(data.as_bytes());
                }
                let out = match filter {
                    Some(filter) => filter_event(&event, filter).unwrap_or(event),
                    None => event,
                };
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            },
            KindProj::Json {
                mut body,
                buffer,
                limit,
                filter,
                watch,
                done,
            } => loop {
                if *done {
                    return Poll::Ready(None);
                }
                let (passed, ended) = match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if buffer.len() + data.len() > *limit => {
                            // Too large to read: nothing is refunded, and an answer
                            // read only to learn from passes unread.
                            *watch = None;
                            *buffer = Buffer::default();
                            let Some(filter) = filter.as_ref().filter(|f| f.rewrites()) else {
                                *filter = None;
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            };
                            *done = true;
                            filter.withheld(&format!(
                                "a tools/list answer is larger than the {limit} bytes the \
                                 layer reads to filter it (max_filtered_response_size)"
                            ));
                            return Poll::Ready(Some(Ok(Frame::data(unfilterable()))));
                        }
                        Ok(data) if filter.is_none() => {
                            // Watching only: the frame goes on at once, and a shared
                            // handle to it (not a copy) stays.
                            if watch.is_some() {
                                buffer.push(data.clone());
                            }
                            (Some(data), body.is_end_stream())
                        }
                        Ok(data) => {
                            buffer.push(data);
                            (None, body.is_end_stream())
                        }
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => (None, true),
                };
                if !ended {
                    match passed {
                        Some(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        None => continue,
                    }
                }
                // The whole answer is here. A sized body says so as soon as its length
                // is reached, and hyper then polls no more: it is read now.
                *done = true;
                let bytes = buffer.take();
                if let Some(watch) = watch {
                    watch.message(&bytes);
                }
                return match (filter, passed) {
                    (Some(filter), _) => {
                        Poll::Ready(Some(Ok(Frame::data(filter_json(bytes, filter)))))
                    }
                    (None, Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    (None, None) => Poll::Ready(None),
                };
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { bytes } => bytes.is_none(),
            Kind::Stage { .. } => false,
            Kind::Json { done, .. } => *done,
            Kind::Sse { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            // Watched only: the bytes pass unchanged, so the server's length holds (and
            // the client gets a Content-Length, not chunks).
            Kind::Json {
                body, filter: None, ..
            } => body.size_hint(),
            Kind::Sse { .. } | Kind::Json { .. } | Kind::Stage { .. } => SizeHint::default(),
        }
    }
}

/// A whole JSON response with hidden tools removed (or withheld when it cannot be
/// read); unchanged bytes when nothing was hidden in it.
fn filter_json(bytes: Bytes, filter: &Filter) -> Bytes {
    match filter_message(&bytes, filter) {
        Some(text) => Bytes::from(text),
        None => bytes,
    }
}

fn unfilterable() -> Bytes {
    Bytes::from(unfilterable_text())
}

fn unfilterable_text() -> String {
    let message = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": INTERNAL_ERROR, "message": "the answer was too large for the policy layer to filter" }
    });
    message.to_string()
}

/// The body read so far; a single frame is kept without copying.
#[derive(Default)]
pub(crate) struct Buffer {
    first: Option<Bytes>,
    rest: BytesMut,
}

impl Buffer {
    pub fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.rest.len()
    }

    pub fn push(&mut self, mut data: impl Buf) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(data.copy_to_bytes(data.remaining()));
            return;
        }
        if let Some(first) = self.first.take() {
            self.rest.extend_from_slice(&first);
        }
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            self.rest.extend_from_slice(chunk);
            data.advance(n);
        }
    }

    pub fn take(&mut self) -> Bytes {
        self.first
            .take()
            .unwrap_or_else(|| self.rest.split().freeze())
    }
}
