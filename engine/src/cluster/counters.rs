//! Shared counters in Redis, for limits that must hold across nodes (tenant rate limits,
//! concurrency): every operation is one atomic Lua script, so concurrent nodes never
//! lose an increment or let two callers through on the last slot.
//!
//! * [`Counters::incr_with_ttl`]: add to a counter that expires `ttl` after its first
//!   increment (the building block of a fixed window);
//! * [`Counters::fixed_window`] / [`Counters::sliding_window`]: a limiter decision
//!   (`allowed`, the count, and when to retry);
//! * [`Counters::acquire_slot`] / [`Counters::release_slot`]: a bounded concurrency count,
//!   with a TTL so slots held by a node that died are freed eventually.
//!
//! Keys are under the deployment prefix; callers scope them by tenant
//! ([`Counters::tenant_key`]) so one tenant's traffic never counts against another.

use std::time::Duration;

use bb8_redis::redis;

use super::redis::{RedisFailure, RedisLink};

const INCR_WITH_TTL: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {n, redis.call('PTTL', KEYS[1])}
";

/// Counts only admitted calls: a refused one does not extend the punishment.
const FIXED_WINDOW: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
if n >= tonumber(ARGV[1]) and ttl > 0 then
  return {0, n, ttl}
end
n = redis.call('INCR', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {1, n, ttl}
";

/// A log of admitted calls in a sorted set scored by Redis' own clock (one clock for every
/// node, so skew between nodes does not matter).
const SLIDING_WINDOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, n + 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, n, tonumber(oldest[2]) + window - now}
";

const ACQUIRE_SLOT: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  return {0, n}
end
n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, n}
";

const SET_IF_ABSENT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

const RELEASE_SLOT: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n <= 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
return redis.call('DECR', KEYS[1])
";

/// A limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Calls counted in the window, this one included if it was allowed.
    pub count: u64,
    /// When refused: how long until a call may succeed. Zero when allowed.
    pub retry_after: Duration,
}

/// Atomic counters under one key prefix. Cheap to clone.
#[derive(Clone)]
pub struct Counters {
    redis: RedisLink,
    prefix: String,
}

impl Counters {
    pub fn new(redis: RedisLink, prefix: impl Into<String>) -> Self {
        Self { redis, prefix: prefix.into() }
    }

    /// `{prefix}{kind}:{tenant_id}:{name}`: a counter only one tenant's traffic touches.
    pub fn tenant_key(&self, kind: &str, tenant_id: &str, name: &str) -> String {
        format!("{}{kind}:{tenant_id}:{name}", self.prefix)
    }

    /// Adds `by`; the counter expires `ttl` after it was created. Returns the new value and
    /// the time left before it resets.
    pub async fn incr_with_ttl(
        &self,
        key: &str,
        by: i64,
        ttl: Duration,
    ) -> Result<(i64, Duration), RedisFailure> {
        let (n, ttl_left): (i64, i64) =
            self.eval(INCR_WITH_TTL, key, &[by.to_string(), millis(ttl).to_string()]).await?;
        Ok((n, Duration::from_millis(ttl_left.max(0) as u64)))
    }

    /// At most `limit` calls per fixed `window` (the window starts at the first call).
    pub async fn fixed_window(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
    ) -> Result<Decision, RedisFailure> {
        let (allowed, count, ttl): (i64, i64, i64) =
            self.eval(FIXED_WINDOW, key, &[limit.to_string(), millis(window).to_string()]).await?;
        Ok(decision(allowed, count, ttl))
    }

    /// At most `limit` calls in any `window`-long interval.
    pub async fn sliding_window(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
    ) -> Result<Decision, RedisFailure> {
        let member = uuid::Uuid::new_v4().to_string();
        let args = [limit.to_string(), millis(window).to_string(), member];
        let (allowed, count, wait): (i64, i64, i64) = self.eval(SLIDING_WINDOW, key, &args).await?;
        Ok(decision(allowed, count, wait))
    }

    /// Takes one of `limit` slots; the count expires `ttl` after the last acquire, so slots
    /// of a node that died without releasing come back.
    pub async fn acquire_slot(
        &self,
        key: &str,
        limit: u64,
        ttl: Duration,
    ) -> Result<bool, RedisFailure> {
        let (allowed, _count): (i64, i64) =
            self.eval(ACQUIRE_SLOT, key, &[limit.to_string(), millis(ttl).to_string()]).await?;
        Ok(allowed == 1)
    }

    /// Creates the counter at `value` unless it exists (seeding from a durable source).
    /// Returns whether it was created.
    pub async fn set_if_absent(
        &self,
        key: &str,
        value: u64,
        ttl: Duration,
    ) -> Result<bool, RedisFailure> {
        let created: i64 =
            self.eval(SET_IF_ABSENT, key, &[value.to_string(), millis(ttl).to_string()]).await?;
        Ok(created == 1)
    }

    /// Gives a slot back; returns the slots still taken.
    pub async fn release_slot(&self, key: &str) -> Result<u64, RedisFailure> {
        let left: i64 = self.eval(RELEASE_SLOT, key, &[]).await?;
        Ok(left.max(0) as u64)
    }

    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &str,
        key: &str,
        args: &[String],
    ) -> Result<T, RedisFailure> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(1).arg(key);
        for arg in args {
            cmd.arg(arg);
        }
        self.redis.query(&cmd).await
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

fn decision(allowed: i64, count: i64, wait_ms: i64) -> Decision {
    let allowed = allowed == 1;
    Decision {
        allowed,
        count: count.max(0) as u64,
        retry_after: if allowed {
            Duration::ZERO
        } else {
            Duration::from_millis(wait_ms.max(1) as u64)
        },
    }
}
