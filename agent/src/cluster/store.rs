//! The cluster's shared state in Redis, and the only code that talks to it. Every shared budget
//! unit (tokens or micro-USD) of every window is one hash,
//! `tollgate:lease:{<budget id>}:<unit>:<window>`:
//!
//! - `total` — everything leased to any agent in the window (never above the limit, except for
//!   spend an agent reports beyond its leases: see `force`);
//! - `node:<name>` — what this agent holds, so a restarted agent takes back its own leases
//!   instead of losing them.
//!
//! Each change is one Lua script, so concurrent agents never both take the last of a budget.
//! Hashes expire a day after their window ends.

use redis::Script;

use super::conn::RedisConn;

/// Takes up to `want` of what is left under `limit` (or exactly `want` when `force`: spend
/// already made); adds it to the total and to the node's share; returns what was taken.
const TAKE: &str = r"
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
local want = tonumber(ARGV[3])
local take = want
if ARGV[5] == '0' then
  take = math.min(want, tonumber(ARGV[2]) - total)
end
if take <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'total', take)
redis.call('HINCRBY', KEYS[1], 'node:' .. ARGV[1], take)
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return take
";

/// Gives back up to `amount` of the node's share; returns what was given back.
const GIVE_BACK: &str = r"
local mine = tonumber(redis.call('HGET', KEYS[1], 'node:' .. ARGV[1]) or '0')
local back = math.min(tonumber(ARGV[2]), mine)
if back <= 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'total', -back)
redis.call('HINCRBY', KEYS[1], 'node:' .. ARGV[1], -back)
return back
";

/// Records this node's spend of a budget unit; returns every node's spend summed.
const REPORT_USED: &str = r"
redis.call('HSET', KEYS[1], 'used:' .. ARGV[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
local sum = 0
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 5) == 'used:' then sum = sum + tonumber(all[i + 1]) end
end
return sum
";

/// Records this node's demand for a rate limit; returns every node's `demand|at` pairs.
const DEMAND: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], 60000)
return redis.call('HGETALL', KEYS[1])
";

/// Why a Redis call failed (the cluster thread treats any of them as "Redis is away").
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct StoreError(#[from] redis::RedisError);

/// One connection and the scripts, on the cluster thread.
pub struct Store {
    conn: RedisConn,
    take: Script,
    give_back: Script,
    report_used: Script,
    demand: Script,
    node: String,
    /// Redis commands sent (for `tollgate_cluster_redis_ops_total`).
    pub ops: u64,
}

/// The hash of one budget unit in one window.
pub fn lease_key(budget_id: &str, unit: &str, window: u64) -> String {
    // The braces make the budget the hash tag: all of a budget's windows map to one Redis
    // Cluster slot, and different budgets spread over the slots.
    format!("tollgate:lease:{{{budget_id}}}:{unit}:{window}")
}

impl Store {
    pub fn connect(
        settings: &crate::config::cluster::ClusterSettings,
        timeout: std::time::Duration,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            conn: super::conn::connect(settings, timeout)?,
            take: Script::new(TAKE),
            give_back: Script::new(GIVE_BACK),
            report_used: Script::new(REPORT_USED),
            demand: Script::new(DEMAND),
            node: settings.node.clone(),
            ops: 0,
        })
    }

    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.ops += 1;
        redis::cmd("PING").query::<String>(&mut *self.conn)?;
        Ok(())
    }

    /// Leases up to `want` under `limit`; `force` records spend already made (no limit).
    pub fn take(
        &mut self,
        key: &str,
        limit: u64,
        want: u64,
        expire_at_ms: i64,
        force: bool,
    ) -> Result<u64, StoreError> {
        self.ops += 1;
        let n: i64 = self
            .take
            .key(key)
            .arg(&self.node)
            .arg(limit.min(i64::MAX as u64))
            .arg(want.min(i64::MAX as u64))
            .arg(expire_at_ms)
            .arg(if force { "1" } else { "0" })
            .invoke(&mut *self.conn)?;
        Ok(n.max(0) as u64)
    }

    /// Gives back up to `amount` of this node's leases.
    pub fn give_back(&mut self, key: &str, amount: u64) -> Result<u64, StoreError> {
        self.ops += 1;
        let n: i64 = self
            .give_back
            .key(key)
            .arg(&self.node)
            .arg(amount.min(i64::MAX as u64))
            .invoke(&mut *self.conn)?;
        Ok(n.max(0) as u64)
    }

    /// What this node holds (after a restart) and what the cluster has leased in all.
    pub fn held(&mut self, key: &str) -> Result<(u64, u64), StoreError> {
        self.ops += 1;
        let (mine, total): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(key)
            .arg(format!("node:{}", self.node))
            .arg("total")
            .query(&mut *self.conn)?;
        Ok((
            mine.unwrap_or(0).max(0) as u64,
            total.unwrap_or(0).max(0) as u64,
        ))
    }
}

impl Store {
    /// Records what this agent has spent of a budget unit and returns what every agent has
    /// (the sum of the `used:<node>` fields). One round trip.
    pub fn report_used(
        &mut self,
        key: &str,
        used: u64,
        expire_at_ms: i64,
    ) -> Result<u64, StoreError> {
        self.ops += 1;
        let sum: i64 = self
            .report_used
            .key(key)
            .arg(&self.node)
            .arg(used.min(i64::MAX as u64))
            .arg(expire_at_ms)
            .invoke(&mut *self.conn)?;
        Ok(sum.max(0) as u64)
    }
}

/// Demand reports older than this are from agents that stopped or lost Redis.
pub const DEMAND_STALE_MS: i64 = 5_000;

impl Store {
    /// Reports this agent's demand (units a second) for one rate limit and reads every agent's:
    /// `(node, demand, reported at)`. One round trip.
    pub fn demand(
        &mut self,
        key: &str,
        demand: f64,
        now_ms: i64,
    ) -> Result<Vec<(String, f64, i64)>, StoreError> {
        self.ops += 1;
        let all: std::collections::HashMap<String, String> = self
            .demand
            .key(key)
            .arg(&self.node)
            .arg(format!("{demand}|{now_ms}"))
            .invoke(&mut *self.conn)?;
        Ok(all
            .into_iter()
            .filter_map(|(node, v)| {
                let (d, at) = v.split_once('|')?;
                Some((node, d.parse().ok()?, at.parse().ok()?))
            })
            .collect())
    }
}
