//! The optional deadline for reading a request body (feature `tokio`).

use std::task::Context;
use std::time::Duration;

/// When the body must have arrived; nothing when no timeout is set.
#[derive(Default)]
pub(crate) struct Deadline {
    #[cfg(feature = "tokio")]
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    /// A deadline `timeout` from now; none for `None`. Setting one needs the timer of a
    /// tokio runtime.
    pub fn after(timeout: Option<Duration>) -> Deadline {
        #[cfg(feature = "tokio")]
        {
            Deadline {
                sleep: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            }
        }
        #[cfg(not(feature = "tokio"))]
        {
            let _ = timeout;
            Deadline {}
        }
    }

    /// True once the deadline has passed; otherwise wakes `cx` when it does.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        #[cfg(feature = "tokio")]
        if let Some(sleep) = &mut self.sleep {
            return sleep.as_mut().poll(cx).is_ready();
        }
        let _ = cx;
        false
    }
}

#[cfg(feature = "tokio")]
use std::future::Future as _;
