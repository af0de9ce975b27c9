//! Request ids in flight, per session.
//!
//! JSON-RPC forbids reusing an id while its request is pending, and a server that keeps
//! sessions may hand an answer to whichever open request of the session last used its id
//! (rmcp does): two requests of one session sent at once with one id could each receive
//! the other's answer (an unfiltered tool list on a `ping`'s stream, an error that
//! refunds another call). So a request whose id is already in flight in its session (the
//! `Mcp-Session-Id` it carries, for the same grant) is refused, and so is a batch that
//! repeats an id. An id is in flight from the moment its request is judged until its
//! answer has been delivered whole or dropped.
//!
//! Requests without a session are answered on their own response and nowhere else, so
//! their ids cannot be confused across requests: several agents sharing one credential
//! may all start counting at 1. Only the batch check applies to them.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use smallvec::SmallVec;

use crate::jsonrpc::Id;
use crate::scope::ScopeValue;

/// The ids in flight, as keyed hashes of (caller, id).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    keys: Mutex<HashSet<u64, BuildHasherDefault<Identity>>>,
    /// Seeds the hash of (caller, id): a caller cannot choose what collides.
    hasher: foldhash::quality::RandomState,
}

/// Why ids cannot be claimed.
#[derive(Debug)]
pub(crate) enum Taken<'a> {
    /// The same id twice in one batch.
    Repeated(&'a Id),
    /// The id is pending in another request of the same caller.
    InFlight(&'a Id),
}

/// The ids a forwarded request holds; released when dropped (its answer delivered).
#[derive(Debug)]
pub(crate) struct Claim {
    inflight: Arc<InFlight>,
    keys: SmallVec<[u64; 1]>,
}

impl InFlight {
    /// Claims `ids` (the ids of a request's messages) in `session` (the grant, and the
    /// session id the request carries), all or none; without a session, only checks that
    /// no id repeats.
    pub fn claim<'a>(
        self: &Arc<Self>,
        session: Option<(ScopeValue, ScopeValue)>,
        ids: impl Iterator<Item = &'a Id>,
    ) -> Result<Option<Box<Claim>>, Taken<'a>> {
        let mut ids = ids.peekable();
        let first = ids.next();
        if session.is_none() && ids.peek().is_none() {
            // One id and no session: nothing to compare it with.
            return Ok(None);
        }
        let mut keys: SmallVec<[(u64, &Id); 1]> = SmallVec::new();
        for id in first.into_iter().chain(ids) {
            let key = self.hasher.hash_one((session, id));
            if keys.iter().any(|&(k, _)| k == key) {
                return Err(Taken::Repeated(id));
            }
            keys.push((key, id));
        }
        if keys.is_empty() || session.is_none() {
            return Ok(None);
        }
        let mut held = self.lock();
        if let Some(&(_, id)) = keys.iter().find(|(key, _)| held.contains(key)) {
            return Err(Taken::InFlight(id));
        }
        held.extend(keys.iter().map(|&(key, _)| key));
        drop(held);
        Ok(Some(Box::new(Claim {
            inflight: self.clone(),
            keys: keys.into_iter().map(|(key, _)| key).collect(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64, BuildHasherDefault<Identity>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Taken<'_> {
    /// The id, and what the client is told.
    pub fn explain(&self) -> (&Id, String) {
        match self {
            Taken::Repeated(id) => (
                id,
                format!(
                    "the id {id} is used twice in this batch: JSON-RPC ids must be unique among pending requests"
                ),
            ),
            Taken::InFlight(id) => (
                id,
                format!(
                    "a request with id {id} is already in flight in this session: JSON-RPC forbids reusing an id until its answer has arrived"
                ),
            ),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self.inflight.lock();
        for key in &self.keys {
            held.remove(key);
        }
    }
}

/// The keys are already hashes.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_per_caller_all_or_none_and_released_on_drop() {
        let inflight = Arc::new(InFlight::default());
        let hasher = crate::scope::ScopeHasher::random();
        let grant = hasher.anonymous();
        let (alice, bob) = (
            Some((grant, hasher.session(b"s-1"))),
            Some((grant, hasher.session(b"s-2"))),
        );
        let (one, two) = (Id::Number(1.into()), Id::String("2".into()));
        let claim = inflight.claim(alice, [&one].into_iter()).unwrap();
        assert!(matches!(
            inflight.claim(alice, [&two, &one].into_iter()),
            Err(Taken::InFlight(id)) if *id == one
        ));
        // All or none: `two` was not claimed by the refused request.
        let two_claim = inflight.claim(alice, [&two].into_iter()).unwrap();
        assert!(inflight.claim(bob, [&one].into_iter()).unwrap().is_some());
        assert!(matches!(
            inflight.claim(bob, [&two, &two].into_iter()),
            Err(Taken::Repeated(_))
        ));
        drop(claim);
        assert!(inflight.claim(alice, [&one].into_iter()).unwrap().is_some());
        drop(two_claim);
        assert!(inflight.claim(alice, std::iter::empty()).unwrap().is_none());
        // Without a session, ids are only checked within the request.
        let held = inflight.claim(None, [&one].into_iter()).unwrap();
        assert!(held.is_none() && inflight.claim(None, [&one].into_iter()).is_ok());
        assert!(matches!(
            inflight.claim(None, [&one, &one].into_iter()),
            Err(Taken::Repeated(_))
        ));
        assert!(inflight.lock().is_empty());
    }
}
