//! The connection to Redis, shared by the requests and the worker, and the hashing
//! secret every replica reads from it.

use std::sync::{Arc, Mutex, PoisonError};

use redis::AsyncCommands;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::breaker::{Breaker, MAX_BACKOFF, MIN_BACKOFF};
use crate::counter::StoreError;

/// Where the store reports errors outside a charge.
pub(super) type Report = Arc<dyn Fn(&StoreError) + Send + Sync>;
use super::wire::{hex, unhex};

/// What the requests and the worker both use.
pub(crate) struct Shared {
    pub connection: ConnectionManager,
    pub prefix: Arc<str>,
    /// The hasher's key as stored in Redis (32 hex digits).
    pub secret: String,
    pub(super) breaker: Mutex<Breaker>,
    /// Where errors outside a charge go (see `CounterStore::report_errors_to`).
    pub report: Mutex<Option<Report>>,
}

impl Shared {
    /// Connects (Redis must be reachable now), and reads or creates the secret key
    /// that every replica hashes credentials with; the key is returned.
    pub async fn connect(
        url: &str,
        prefix: Arc<str>,
        deadline: Duration,
    ) -> Result<(Shared, [u8; 16]), redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(deadline.max(Duration::from_millis(250))))
            .set_response_timeout(Some(deadline))
            .set_min_delay(MIN_BACKOFF)
            .set_max_delay(MAX_BACKOFF);
        let mut connection = ConnectionManager::new_with_config(client, config).await?;
        let secret_key = format!("{prefix}scope-hasher-key");
        let fresh = hex(crate::scope::random_key());
        let _: Option<String> = redis::cmd("SET")
            .arg(&secret_key)
            .arg(&fresh)
            .arg("NX")
            .query_async(&mut connection)
            .await?;
        let secret: String = connection.get(&secret_key).await?;
        let key = unhex(&secret).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "the scope hasher key in Redis is not 32 hex digits",
                secret_key.clone(),
            ))
        })?;
        let shared = Shared {
            connection,
            prefix,
            secret,
            breaker: Mutex::new(Breaker::default()),
            report: Mutex::new(None),
        };
        Ok((shared, key))
    }

    /// Reports an error outside a charge: to the layer's observer once it is known,
    /// else as a tracing line.
    pub fn report(&self, error: StoreError) {
        let report = self
            .report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match report {
            Some(report) => report(&error),
            None => tracing::error!(target: "tower_mcp_policy", "counter store: {error}"),
        }
    }

    /// After an outage: Redis may have restarted empty, so the shared hashing secret
    /// is written back (`SET NX`) for replicas that start later; a different secret
    /// already there means replicas now count one caller in two buckets. Either
    /// trouble is reported.
    pub fn reseed(self: &Arc<Self>) {
        let mut connection = self.connection.clone();
        let key = format!("{}scope-hasher-key", self.prefix);
        let ours = self.secret.clone();
        let shared = self.clone();
        tokio::spawn(async move {
            let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(&ours)
                .arg("NX")
                .query_async(&mut connection)
                .await;
            let stored: redis::RedisResult<String> = connection.get(&key).await;
            match (set, stored) {
                (Ok(_), Ok(stored)) if stored == ours => {}
                (Ok(_), Ok(_)) => shared.report(StoreError::new(
                    "Redis holds another scope hasher key than this replica: replicas will count \
                     the same caller in different buckets until they restart",
                )),
                (Err(err), _) | (_, Err(err)) => shared.report(StoreError::new(format!(
                    "could not write the scope hasher key back to Redis: {err}"
                ))),
            }
        });
    }

    pub(super) fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
