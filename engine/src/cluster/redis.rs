//! The node's Redis connections: a bb8 pool of multiplexed connections for commands, with
//! health tracking and reconnection.
//!
//! Every command goes through [`RedisLink::query`], which bounds it with a deadline and
//! marks the connection broken on an I/O error so bb8 replaces it; a background task pings
//! Redis every `health_interval` and flips [`RedisLink::is_up`], which `/readyz` reports and
//! the rest of the cluster code uses to choose degraded (local-only) behaviour. Nothing here
//! blocks startup: the pool is built unchecked, so a node starts while Redis is down and
//! connects once it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bb8_redis::bb8;
use bb8_redis::redis::{self, FromRedisValue, RedisError, aio::MultiplexedConnection};

/// Why a Redis call failed. Never carries the URL (it may hold a password).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFailure {
    #[error("redis is unreachable: {0}")]
    Down(String),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis refused the command: {0}")]
    Refused(String),
}

/// A pooled connection that remembers it saw an I/O error, so bb8 drops it.
pub struct PooledConn {
    inner: MultiplexedConnection,
    broken: bool,
}

/// bb8 manager: like `bb8_redis::RedisConnectionManager`, but a connection that failed is
/// reported broken (the stock one never is, so a dead socket would be handed out forever
/// unless every checkout paid a PING).
#[derive(Clone)]
struct Manager {
    client: redis::Client,
    connect_timeout: Duration,
}

impl bb8::ManageConnection for Manager {
    type Connection = PooledConn;
    type Error = RedisError;

    async fn connect(&self) -> Result<PooledConn, RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout));
        let inner = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        Ok(PooledConn { inner, broken: false })
    }

    async fn is_valid(&self, conn: &mut PooledConn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut PooledConn) -> bool {
        conn.broken
    }
}

/// The node's command connection to Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    pool: bb8::Pool<Manager>,
    up: AtomicBool,
    timeout: Duration,
}

impl RedisLink {
    /// Builds the pool without connecting (the health task connects). Fails only on a
    /// malformed URL; the error never echoes the URL.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<RedisLink> {
        let client = redis::Client::open(url).map_err(|e| {
            anyhow::anyhow!("redis.url / REDIS_URL is not a valid Redis URL ({})", e.kind_name())
        })?;
        let manager = Manager { client: client.clone(), connect_timeout: timeout };
        let pool = bb8::Pool::builder()
            .max_size(8)
            .test_on_check_out(false)
            .connection_timeout(timeout)
            .retry_connection(false)
            .build_unchecked(manager);
        Ok(RedisLink {
            inner: Arc::new(Inner { client, pool, up: AtomicBool::new(false), timeout }),
        })
    }

    /// Whether the last command or health check reached Redis.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_up(&self, up: bool) {
        let was = self.inner.up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("redis is reachable: cross-node delivery is on");
            } else {
                tracing::warn!(
                    "redis is unreachable: serving from local state only (degraded) until it is back"
                );
            }
        }
    }

    /// The client, for dedicated pub/sub connections.
    pub(crate) fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Runs one command (or pipeline, via [`RedisLink::pipe`]) with the deadline.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisFailure> {
        let timeout = self.inner.timeout;
        let run = async {
            let mut conn = self.inner.pool.get().await.map_err(|e| match e {
                bb8::RunError::User(e) => RedisFailure::Down(e.kind_name().to_owned()),
                bb8::RunError::TimedOut => RedisFailure::Timeout(timeout),
            })?;
            let result = cmd.query_async::<T>(&mut conn.inner).await;
            self.classify(&mut conn, result)
        };
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(RedisFailure::Timeout(timeout)),
        };
        if matches!(result, Err(RedisFailure::Down(_) | RedisFailure::Timeout(_))) {
            self.set_up(false);
        }
        result
    }

    /// Runs a pipeline with the deadline.
    pub async fn pipe<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, RedisFailure> {
        let timeout = self.inner.timeout;
        let run = async {
            let mut conn = self.inner.pool.get().await.map_err(|e| match e {
                bb8::RunError::User(e) => RedisFailure::Down(e.kind_name().to_owned()),
                bb8::RunError::TimedOut => RedisFailure::Timeout(timeout),
            })?;
            let result = pipe.query_async::<T>(&mut conn.inner).await;
            self.classify(&mut conn, result)
        };
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(RedisFailure::Timeout(timeout)),
        };
        if matches!(result, Err(RedisFailure::Down(_) | RedisFailure::Timeout(_))) {
            self.set_up(false);
        }
        result
    }

    fn classify<T>(
        &self,
        conn: &mut PooledConn,
        result: Result<T, RedisError>,
    ) -> Result<T, RedisFailure> {
        match result {
            Ok(value) => Ok(value),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                conn.broken = true;
                Err(RedisFailure::Down(e.kind_name().to_owned()))
            }
            Err(e) => Err(RedisFailure::Refused(e.kind_name().to_owned())),
        }
    }

    /// Pings Redis every `interval`, keeping [`RedisLink::is_up`] current. Runs until the
    /// process stops.
    pub(crate) async fn health_loop(self, interval: Duration) {
        loop {
            let up = self.query::<String>(&redis::cmd("PING")).await.is_ok();
            self.set_up(up);
            tokio::time::sleep(interval).await;
        }
    }
}

/// A short, secret-free name for a Redis error kind.
trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for RedisError {
    fn kind_name(&self) -> &'static str {
        if self.is_timeout() {
            "timeout"
        } else if self.is_connection_dropped() {
            "connection dropped"
        } else if self.is_io_error() {
            "connection failed"
        } else {
            "command error"
        }
    }
}
