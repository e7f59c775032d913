//! Rate limits, quotas and login brute-force protection, on fixed one-window counters.
//!
//! One primitive serves all of them: [`Counters::hit`] adds to a named counter that lives
//! for one window and says what it reached and when it resets. In memory by default; with
//! Redis configured the counters are shared by every node ([`RedisCounters`], one Lua script
//! so the increment and the expiry are atomic), so a tenant's limit is the cluster's limit.
//!
//! * requests/minute per tenant, per user and per API key — checked on every authenticated
//!   request (REST and WebSocket upgrade);
//! * tokens/minute per tenant — [`TokenQuota`], the conversation actors' `TurnPolicy`: a turn
//!   is refused while the tenant's window is spent, and finished turns add their usage;
//! * login failures per account and per client IP — too many lock the login for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::conversation::{PolicyRefusal, TurnPolicy};
use actors::ports::llm::Usage;
use futures_util::future::BoxFuture;

/// What a counter reached, and how long until its window resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub value: u64,
    pub resets_in: Duration,
}

/// Windowed counters (per process, or shared through Redis).
pub trait Counters: Send + Sync + 'static {
    /// Adds `by` (0 just reads) to `key`, starting a window of `window` if none is running.
    fn hit(
        &self,
        key: &str,
        by: u64,
        window: Duration,
    ) -> BoxFuture<'static, anyhow::Result<Count>>;

    /// Forgets `key` (a successful login clears its failures).
    fn clear(&self, key: &str) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// Counters in this process.
#[derive(Default)]
pub struct MemoryCounters {
    windows: Mutex<HashMap<String, (Instant, Duration, u64)>>,
}

impl MemoryCounters {
    pub fn hit_now(&self, key: &str, by: u64, window: Duration) -> Count {
        let now = Instant::now();
        let mut windows = match self.windows.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if windows.len() > 100_000 {
            // Bounded: drop every expired window before growing further.
            windows.retain(|_, (start, len, _)| now.duration_since(*start) < *len);
        }
        let entry = windows.entry(key.to_owned()).or_insert((now, window, 0));
        if now.duration_since(entry.0) >= entry.1 {
            *entry = (now, window, 0);
        }
        entry.2 += by;
        Count { value: entry.2, resets_in: entry.1.saturating_sub(now.duration_since(entry.0)) }
    }
}

impl Counters for MemoryCounters {
    fn hit(
        &self,
        key: &str,
        by: u64,
        window: Duration,
    ) -> BoxFuture<'static, anyhow::Result<Count>> {
        let count = self.hit_now(key, by, window);
        Box::pin(async move { Ok(count) })
    }

    fn clear(&self, key: &str) -> BoxFuture<'static, anyhow::Result<()>> {
        if let Ok(mut windows) = self.windows.lock() {
            windows.remove(key);
        }
        Box::pin(async { Ok(()) })
    }
}

/// Counters shared by every node through Redis.
pub struct RedisCounters {
    pool: bb8_redis::bb8::Pool<bb8_redis::RedisConnectionManager>,
    prefix: String,
}

/// `INCRBY` then set the expiry only when the window starts: atomic, one round trip.
const HIT_SCRIPT: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {v, ttl}
";

impl RedisCounters {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<RedisCounters> {
        let manager = bb8_redis::RedisConnectionManager::new(url)
            .map_err(|e| anyhow::anyhow!("invalid Redis URL for rate limits: {e}"))?;
        let pool = bb8_redis::bb8::Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(2))
            .build(manager)
            .await
            .map_err(|e| anyhow::anyhow!("failed to connect to Redis for rate limits: {e}"))?;
        Ok(RedisCounters { pool, prefix: prefix.to_owned() })
    }
}

impl Counters for RedisCounters {
    fn hit(
        &self,
        key: &str,
        by: u64,
        window: Duration,
    ) -> BoxFuture<'static, anyhow::Result<Count>> {
        let pool = self.pool.clone();
        let key = format!("{}rl:{key}", self.prefix);
        let window_ms = window.as_millis().max(1) as u64;
        Box::pin(async move {
            let mut conn =
                pool.get().await.map_err(|e| anyhow::anyhow!("Redis unavailable: {e}"))?;
            let (value, ttl): (u64, i64) = bb8_redis::redis::cmd("EVAL")
                .arg(HIT_SCRIPT)
                .arg(1)
                .arg(&key)
                .arg(by)
                .arg(window_ms)
                .query_async(&mut *conn)
                .await
                .map_err(|e| anyhow::anyhow!("rate-limit script failed: {e}"))?;
            Ok(Count { value, resets_in: Duration::from_millis(ttl.max(0) as u64) })
        })
    }

    fn clear(&self, key: &str) -> BoxFuture<'static, anyhow::Result<()>> {
        let pool = self.pool.clone();
        let key = format!("{}rl:{key}", self.prefix);
        Box::pin(async move {
            let mut conn =
                pool.get().await.map_err(|e| anyhow::anyhow!("Redis unavailable: {e}"))?;
            let _: () = bb8_redis::redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut *conn)
                .await
                .map_err(|e| anyhow::anyhow!("Redis DEL failed: {e}"))?;
            Ok(())
        })
    }
}

pub const MINUTE: Duration = Duration::from_secs(60);

/// Tokens per minute per tenant, as the conversation actors' turn policy.
///
/// The policy hook is synchronous (it runs inside the actor), so the window lives in this
/// process; with Redis, usage is also added to the shared counter and the shared value is
/// folded back in, so every node converges on the cluster-wide figure within a turn.
pub struct TokenQuota {
    local: Arc<MemoryCounters>,
    default_limit: u64,
    overrides: Mutex<HashMap<String, u64>>,
    shared: Option<Arc<dyn Counters>>,
}

impl TokenQuota {
    pub fn new(default_limit: u64, shared: Option<Arc<dyn Counters>>) -> Self {
        TokenQuota {
            local: Arc::new(MemoryCounters::default()),
            default_limit,
            overrides: Mutex::new(HashMap::new()),
            shared,
        }
    }

    /// A tenant's own limit (0 = unlimited), replacing the default.
    pub fn set_tenant_limit(&self, tenant_id: &str, limit: Option<u64>) {
        if let Ok(mut overrides) = self.overrides.lock() {
            match limit {
                Some(limit) => overrides.insert(tenant_id.to_owned(), limit),
                None => overrides.remove(tenant_id),
            };
        }
    }

    fn limit(&self, tenant_id: &str) -> u64 {
        self.overrides
            .lock()
            .ok()
            .and_then(|o| o.get(tenant_id).copied())
            .unwrap_or(self.default_limit)
    }

    /// Tokens used in the tenant's current window and when it resets.
    pub fn used(&self, tenant_id: &str) -> Count {
        self.local.hit_now(&format!("tpm:{tenant_id}"), 0, MINUTE)
    }
}

impl TurnPolicy for TokenQuota {
    fn admit(&self, tenant_id: &str, _conversation_id: &str) -> Result<(), PolicyRefusal> {
        let limit = self.limit(tenant_id);
        if limit == 0 {
            return Ok(());
        }
        let used = self.used(tenant_id);
        if used.value >= limit {
            let secs = used.resets_in.as_secs() + 1;
            return Err(PolicyRefusal {
                code: "rate_limited",
                message: format!(
                    "the tenant used its {limit} tokens for this minute; try again in {secs} s"
                ),
            });
        }
        Ok(())
    }

    fn turn_finished(&self, tenant_id: &str, _conversation_id: &str, usage: &Usage) {
        let tokens = usage.input_tokens + usage.output_tokens;
        let key = format!("tpm:{tenant_id}");
        let local = self.local.hit_now(&key, tokens, MINUTE);
        if let Some(shared) = &self.shared {
            let future = shared.hit(&key, tokens, MINUTE);
            let local_value = local.value;
            let quota_key = key.clone();
            // Fold the cluster-wide figure back in without blocking the actor.
            let this = self.local.clone();
            tokio::spawn(async move {
                if let Ok(count) = future.await
                    && count.value > local_value
                {
                    this.hit_now(&quota_key, count.value - local_value, MINUTE);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_windows_count_and_reset() {
        let counters = MemoryCounters::default();
        assert_eq!(counters.hit_now("a", 1, MINUTE).value, 1);
        assert_eq!(counters.hit_now("a", 2, MINUTE).value, 3);
        assert_eq!(counters.hit_now("b", 1, MINUTE).value, 1);
        assert_eq!(counters.hit_now("c", 1, Duration::ZERO).value, 1);
        assert_eq!(counters.hit_now("c", 1, Duration::ZERO).value, 1, "an elapsed window restarts");
    }

    #[test]
    fn token_quota_refuses_once_the_window_is_spent() {
        let quota = TokenQuota::new(100, None);
        quota.admit("t1", "c").unwrap();
        quota.turn_finished("t1", "c", &Usage { input_tokens: 60, output_tokens: 40 });
        let refusal = quota.admit("t1", "c").unwrap_err();
        assert_eq!(refusal.code, "rate_limited");
        quota.admit("t2", "c").unwrap();
        quota.set_tenant_limit("t1", Some(0));
        quota.admit("t1", "c").unwrap();
    }
}
