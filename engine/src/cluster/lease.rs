//! Conversation ownership leases in Redis: `{prefix}conv:{id}:owner = node_id`, with a TTL.
//!
//! The node holding a conversation's lease runs its `ConversationActor` (the only one that
//! assigns seqs); the others proxy to it. Both scripts are atomic, so two nodes racing for a
//! free lease cannot both win, and a node can only extend or release a lease it holds.

use bb8_redis::redis;

use super::redis::{RedisFailure, RedisLink};

/// Takes the lease if free, extends it if ours; returns the holder afterwards.
const CLAIM: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return holder
";

/// Deletes the lease only if we hold it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Claims (or renews) the lease at `key` for `node_id`; returns the node holding it now.
pub async fn claim(
    redis: &RedisLink,
    key: &str,
    node_id: &str,
    ttl_ms: u64,
) -> Result<String, RedisFailure> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(CLAIM).arg(1).arg(key).arg(node_id).arg(ttl_ms);
    redis.query(&cmd).await
}

/// Releases the lease at `key` if `node_id` holds it.
pub async fn release(redis: &RedisLink, key: &str, node_id: &str) -> Result<bool, RedisFailure> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RELEASE).arg(1).arg(key).arg(node_id);
    let deleted: i64 = redis.query(&cmd).await?;
    Ok(deleted == 1)
}

/// The node holding the lease, if any.
pub async fn holder(redis: &RedisLink, key: &str) -> Result<Option<String>, RedisFailure> {
    redis.query(redis::cmd("GET").arg(key)).await
}

/// Whether `node_channel` has a subscriber, i.e. that node's process is alive and listening.
pub async fn node_listening(redis: &RedisLink, node_channel: &str) -> Result<bool, RedisFailure> {
    let counts: Vec<(String, i64)> =
        redis.query(redis::cmd("PUBSUB").arg("NUMSUB").arg(node_channel)).await?;
    Ok(counts.first().is_some_and(|(_, n)| *n > 0))
}
