//! Which `Mcp-Session-Id`s the server issued.
//!
//! A session id only means a session if the server handed it out: a server that ignores
//! session ids (stateless mode, or a request of the 2026-07-28 revision, which has no
//! sessions) runs a call whatever id it carries, so an id the client made up must not
//! open a fresh budget. The layer records the id of every `initialize` answer that
//! carries one and forgets it when the server ends the session (a successful DELETE, or
//! a 404 for a request that carried it). Any other id counts its session-scoped limits
//! per grant, as a request without a session does.
//!
//! Memory is bounded: past the limit the oldest sessions are forgotten first, and their
//! session-scoped limits fall back to per-grant counting, which is never looser.

use http::{HeaderValue, Response, StatusCode};

use super::bounded::Bounded;
use super::request::MCP_SESSION_ID;
use crate::scope::{ScopeHasher, ScopeValue};

/// The default number of sessions remembered: about 7 MB.
pub(crate) const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// An `initialize` request: whether its client declared it can ask its user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Initialize {
    pub elicits: Elicits,
}

#[derive(Debug)]
pub(crate) struct Sessions {
    /// Each session the server issued, and what its client declared in `initialize`
    /// that it can ask its user.
    issued: Bounded<Elicits>,
}

/// How a client declared it can ask its user (the `elicitation` capability).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Elicits {
    /// A form it shows (`{}`, or `form` named).
    pub form: bool,
    /// A URL it opens (`url` named).
    pub url: bool,
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            issued: Bounded::new(max),
        }
    }

    /// True when the server issued `session` and has not ended it.
    pub fn is_issued(&self, session: ScopeValue) -> bool {
        self.issued.get(session).is_some()
    }

    /// The server issued `session` (to a client that cannot be asked to elicit, as far
    /// as this replica knows).
    pub fn issue(&self, session: ScopeValue) {
        self.issued.insert(session, Elicits::default());
    }

    /// How the client of `session` declared it can ask its user (nothing for a session
    /// the server did not issue, as far as this replica knows).
    pub fn elicits(&self, session: ScopeValue) -> Elicits {
        self.issued.get(session).unwrap_or_default()
    }

    /// Records what the server's answer shows: an `initialize` answered with an id
    /// issues that id; the id the request carried (`session`) ends with a 404, or
    /// with a successful answer to a DELETE. Each change is also told to `share`
    /// (the session and whether it is now issued), for other replicas.
    pub fn track<B>(
        &self,
        hasher: &ScopeHasher,
        initialize: Option<Initialize>,
        session: Option<&HeaderValue>,
        deletes: bool,
        response: &Response<B>,
        mut share: impl FnMut(ScopeValue, bool),
    ) {
        let status = response.status();
        if let Some(Initialize { elicits }) = initialize
            && status.is_success()
            && let Some(id) = response.headers().get(&MCP_SESSION_ID)
        {
            let issued = hasher.session(id.as_bytes());
            self.issued.insert(issued, elicits);
            share(issued, true);
        }
        if let Some(id) = session
            && (status == StatusCode::NOT_FOUND || (deletes && status.is_success()))
        {
            let ended = hasher.session(id.as_bytes());
            self.end(ended);
            share(ended, false);
        }
    }

    /// The server ended `session`.
    pub fn end(&self, session: ScopeValue) {
        self.issued.remove(session);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.issued.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_until_ended_and_bounded_oldest_first() {
        let h = ScopeHasher::with_key([1; 16]);
        let s = |i: u32| h.session(&i.to_le_bytes());
        let sessions = Sessions::new(3);
        assert!(!sessions.is_issued(s(1)));
        for i in 1..=3 {
            sessions.issue(s(i));
        }
        assert!((1..=3).all(|i| sessions.is_issued(s(i))));
        sessions.end(s(2));
        assert!(!sessions.is_issued(s(2)));
        sessions.issue(s(4));
        sessions.issue(s(5));
        // Three live at most: 1 (the oldest) is forgotten, 3, 4, 5 remain.
        assert_eq!(sessions.len(), 3);
        assert!(!sessions.is_issued(s(1)));
        assert!((3..=5).all(|i| sessions.is_issued(s(i))));
        // Re-issuing an id keeps it live past its old entry's turn.
        sessions.issue(s(3));
        sessions.issue(s(6));
        sessions.issue(s(7));
        assert!(sessions.is_issued(s(3)));
        assert!(!sessions.is_issued(s(4)));
        // Churn below the bound never grows the queue past twice the bound, nor evicts
        // the live sessions.
        sessions.end(s(6));
        for i in 0..1000 {
            sessions.issue(s(100 + i));
            sessions.end(s(100 + i));
        }
        assert!(sessions.issued.queued() <= 6);
        assert!([3, 7].iter().all(|&i| sessions.is_issued(s(i))));
        assert!(!Sessions::new(0).is_issued(s(1)));
    }
}
