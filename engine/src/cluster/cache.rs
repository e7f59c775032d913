//! Exact-response cache keys in Redis: get / set with a TTL, shared by every node.
//!
//! Values are opaque bytes (the caller serialises); keys are built by
//! [`TtlCache::tenant_key`] so one tenant's entries can never answer another's request.
//! A Redis failure is a miss on read and a skipped write: the cache is an optimisation,
//! never a reason to fail a request.

use std::time::Duration;

use bb8_redis::redis;

use super::redis::{RedisFailure, RedisLink};

/// A TTL key-value cache under one prefix. Cheap to clone.
#[derive(Clone)]
pub struct TtlCache {
    redis: RedisLink,
    prefix: String,
}

impl TtlCache {
    pub fn new(redis: RedisLink, prefix: impl Into<String>) -> Self {
        Self { redis, prefix: prefix.into() }
    }

    /// `{prefix}cache:{tenant_id}:{digest}`.
    pub fn tenant_key(&self, tenant_id: &str, digest: &str) -> String {
        format!("{}cache:{tenant_id}:{digest}", self.prefix)
    }

    /// The value, or `None` on a miss (or when Redis is unreachable).
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.try_get(key).await.ok().flatten()
    }

    pub async fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, RedisFailure> {
        self.redis.query(redis::cmd("GET").arg(key)).await
    }

    /// Stores `value` for `ttl`; `only_if_absent` keeps the first writer's value.
    /// Returns whether it was written.
    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        only_if_absent: bool,
    ) -> Result<bool, RedisFailure> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg((ttl.as_millis() as u64).max(1));
        if only_if_absent {
            cmd.arg("NX");
        }
        let reply: Option<String> = self.redis.query(&cmd).await?;
        Ok(reply.is_some())
    }

    pub async fn delete(&self, key: &str) -> Result<bool, RedisFailure> {
        let n: i64 = self.redis.query(redis::cmd("DEL").arg(key)).await?;
        Ok(n > 0)
    }

    /// Time left before `key` expires; `None` if it does not exist.
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>, RedisFailure> {
        let ms: i64 = self.redis.query(redis::cmd("PTTL").arg(key)).await?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }
}
