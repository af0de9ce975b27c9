//! [`PolicyService`]: hands each request to the gate's response future. No policy
//! logic lives here.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::{PolicyBody, ResponseBody};
use super::future::ResponseFuture;
use super::gate::{BoxError, Gate};
use crate::counter::{CounterStore, MemoryCounters};
use crate::engine::Engine;

/// Middleware that enforces a policy on the MCP requests it passes to `Inner`; see the
/// [module docs](crate::layer) for an example.
pub struct PolicyService<Inner, S = MemoryCounters> {
    inner: Inner,
    gate: Arc<Gate<S>>,
}

impl<Inner: Clone, S> Clone for PolicyService<Inner, S> {
    fn clone(&self) -> Self {
        PolicyService {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<Inner: fmt::Debug, S> fmt::Debug for PolicyService<Inner, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyService")
            .field("inner", &self.inner)
            .field("policy", &self.gate.engine.policy().summary())
            .finish_non_exhaustive()
    }
}

impl<Inner, S> PolicyService<Inner, S> {
    pub(crate) fn from_gate(inner: Inner, gate: Arc<Gate<S>>) -> Self {
        PolicyService { inner, gate }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &Inner {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> Inner {
        self.inner
    }

    /// The engine (policy and counters).
    pub fn engine(&self) -> &Engine<S> {
        &self.gate.engine
    }
}

impl<Inner, S, ReqBody, ResBody> Service<Request<ReqBody>> for PolicyService<Inner, S>
where
    Inner: Service<Request<PolicyBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    S: CounterStore,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = Inner::Error;
    type Future = ResponseFuture<Inner, S, ReqBody, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The instance that was polled ready serves this request; a clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(self.gate.clone(), inner, request)
    }
}
