//! The request body handed to the inner service, and the response body handed back.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use super::filter::{SseSplitter, filter_event, filter_message};
use super::response::INTERNAL_ERROR;
use crate::policy::Policy;

/// The request body the inner service receives: the bytes the policy read.
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
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { bytes: Option<Bytes> },
        Sse { #[pin] body: B, splitter: SseSplitter, policy: Arc<Policy>, done: bool },
        Json { #[pin] body: B, buffer: BytesMut, limit: usize, policy: Arc<Policy>, done: bool },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Full { bytes: Some(bytes) },
        }
    }

    pub(crate) fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full { bytes: None },
        }
    }

    pub(crate) fn sse(body: B, policy: Arc<Policy>) -> Self {
        ResponseBody {
            kind: Kind::Sse {
                body,
                splitter: SseSplitter::default(),
                policy,
                done: false,
            },
        }
    }

    pub(crate) fn json(body: B, policy: Arc<Policy>, limit: usize) -> Self {
        ResponseBody {
            kind: Kind::Json {
                body,
                buffer: BytesMut::new(),
                limit,
                policy,
                done: false,
            },
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Full { .. } => "full",
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
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            KindProj::Sse {
                mut body,
                splitter,
                policy,
                done,
            } => loop {
                // Whole events go out as soon as they are complete, one frame each.
                if let Some(event) = splitter.next_event() {
                    let out = filter_event(&event, policy).unwrap_or(event);
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                if *done {
                    let rest = splitter
                        .rest()
                        .map(|rest| filter_event(&rest, policy).unwrap_or(rest));
                    return Poll::Ready(rest.filter(|r| !r.is_empty()).map(|r| Ok(Frame::data(r))));
                }
                match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => splitter.push(&data),
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => *done = true,
                }
            },
            KindProj::Json {
                mut body,
                buffer,
                limit,
                policy,
                done,
            } => loop {
                if *done {
                    return Poll::Ready(None);
                }
                match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if buffer.len() + data.len() > *limit => {
                            *done = true;
                            tracing::warn!(
                                target: "tower_mcp_policy",
                                limit = *limit,
                                "tools/list response too large to filter; replaced by an error"
                            );
                            return Poll::Ready(Some(Ok(Frame::data(unfilterable()))));
                        }
                        Ok(data) => buffer.extend_from_slice(&data),
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => {
                        *done = true;
                        let bytes = buffer.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(filter_json(bytes, policy)))));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { bytes } => bytes.is_none(),
            Kind::Sse { .. } | Kind::Json { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Sse { .. } | Kind::Json { .. } => SizeHint::default(),
        }
    }
}

/// A whole JSON response with hidden tools removed (or withheld when it cannot be
/// read); unchanged bytes when nothing was hidden in it.
fn filter_json(bytes: Bytes, policy: &Policy) -> Bytes {
    match filter_message(&bytes, policy) {
        Some(text) => Bytes::from(text),
        None => bytes,
    }
}

fn unfilterable() -> Bytes {
    let message = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": INTERNAL_ERROR, "message": "the tools/list response was too large for the policy layer to filter" }
    });
    Bytes::from(message.to_string())
}
