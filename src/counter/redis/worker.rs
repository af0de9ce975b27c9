//! The task that sends the queued requests to Redis, many in one script call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ErrorKind, Script, ServerErrorKind};
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};

use super::conn::Shared;
use super::wire::{Answer, Mode, parse_reply, script_call};
use crate::counter::{Charge, StoreError};

/// At most this many requests wait for Redis; past that, calls fail fast.
pub(super) const QUEUE: usize = 16_384;
/// At most this many scheduler rounds for more requests to join a script call.
const YIELDS: usize = 8;
/// At most this many requests go to Redis in one script call.
const MAX_BATCH: usize = 256;

/// The charges (or refunds) of one request, and where its answer goes.
pub(super) struct Job {
    pub charges: SmallVec<[Charge; 4]>,
    pub mode: Mode,
    pub now: Option<Duration>,
    /// The request waiting for the answer; `None` for a refund, which nobody waits for.
    pub waiter: Option<Waiter>,
}

/// Where a request's answer goes, and by when it is due.
pub(super) struct Waiter {
    pub reply: oneshot::Sender<Result<Answer, StoreError>>,
    pub due: Instant,
}

/// Sends the queued requests to Redis, one script call at a time, each carrying all the
/// requests that asked meanwhile: under load, one round trip serves many requests, and
/// Redis runs fewer, larger calls (each call has a fixed cost there, about five
/// requests' worth). The requests of one call share its clock: a request charged at a
/// given time (tests only) goes with those at the same time.
pub(super) async fn work(mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>, deadline: Duration) {
    let script = Script::new(include_str!("gcra.lua"));
    // A request taken from the queue that did not share the last call's clock.
    let mut next: Option<Job> = None;
    // The requests of the next call (one vector for every call).
    let mut batch: Vec<Job> = Vec::new();
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        batch.push(first);
        // Let the requests that are running now queue their charges too, for as long as
        // more keep coming (a few scheduler rounds at most): one script call for all of
        // them costs Redis and this process far less. Alone, a request waits one round.
        for _ in 0..YIELDS {
            let before = batch.len();
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH && next.is_none() {
                match jobs.try_recv() {
                    Ok(job) if job.now == batch[0].now => batch.push(job),
                    Ok(job) => next = Some(job),
                    Err(_) => break,
                }
            }
            if batch.len() == before || batch.len() == MAX_BATCH || next.is_some() {
                break;
            }
        }
        // A request that went away is not charged; one whose deadline passed while it
        // waited behind slow calls is answered now, uncharged.
        let now = Instant::now();
        batch.retain_mut(|job| match &job.waiter {
            None => true,
            Some(waiter) if waiter.reply.is_closed() => false,
            Some(waiter) if waiter.due <= now => {
                if let Some(waiter) = job.waiter.take() {
                    let _ = waiter.reply.send(Err(late(deadline)));
                }
                false
            }
            Some(_) => true,
        });
        if !batch.is_empty() {
            send(&mut batch, &shared, &script, deadline).await;
        }
    }
}

/// One script call for `batch`, and every request's answer; leaves `batch` empty.
async fn send(batch: &mut Vec<Job>, shared: &Arc<Shared>, script: &Script, deadline: Duration) {
    let mut connection = shared.connection.clone();
    let due = batch
        .iter()
        .filter_map(|job| job.waiter.as_ref().map(|waiter| waiter.due))
        .min();
    let groups = batch.iter().map(|job| (&job.charges[..], job.mode));
    let now = batch.first().and_then(|job| job.now);
    let call = script_call(groups, now, &shared.prefix, script);
    // Answered by the earliest deadline in the batch (refunds alone: by the
    // connection's response timeout, which is the deadline too).
    let call = async {
        match call.query_async::<String>(&mut connection).await {
            // Redis lost its scripts (a restart, `SCRIPT FLUSH`): load it, call again.
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(&mut connection).await?;
                call.query_async::<String>(&mut connection).await
            }
            answer => answer,
        }
    };
    let answers = match due {
        Some(due) => tokio::time::timeout_at(due.into(), call).await,
        None => Ok(call.await),
    };
    let slow = answers.is_err();
    let answers = match answers {
        Ok(Ok(answers)) => Ok(answers),
        Ok(Err(err)) => Err(StoreError::new(err)),
        Err(_) => Err(late(deadline)),
    };
    match answers {
        Ok(reply) => {
            if shared.breaker().succeeded() {
                shared.reseed();
            }
            match parse_reply(&reply, batch.len()) {
                Ok(answers) => {
                    for (job, answer) in batch.drain(..).zip(answers) {
                        if let Some(waiter) = job.waiter {
                            let _ = waiter.reply.send(Ok(answer));
                        }
                    }
                }
                Err(error) => {
                    for waiter in batch.drain(..).filter_map(|job| job.waiter) {
                        let _ = waiter.reply.send(Err(error.clone()));
                    }
                }
            }
        }
        Err(error) => {
            match slow {
                true => shared.breaker().slow(),
                false => shared.breaker().failed(),
            }
            for job in batch.drain(..) {
                match job.waiter {
                    Some(waiter) => {
                        let _ = waiter.reply.send(Err(error.clone()));
                    }
                    None => shared.report(StoreError::new(format!("refund not applied: {error}"))),
                }
            }
        }
    }
}

pub(super) fn queue_error(error: &mpsc::error::TrySendError<Job>) -> String {
    match error {
        mpsc::error::TrySendError::Full(_) => {
            format!("more than {QUEUE} requests are waiting for Redis")
        }
        mpsc::error::TrySendError::Closed(_) => {
            "the Redis worker has stopped (the tokio runtime it was connected on shut down)"
                .to_owned()
        }
    }
}

pub(super) fn late(deadline: Duration) -> StoreError {
    StoreError::new(format!("Redis did not answer within {deadline:?}"))
}
