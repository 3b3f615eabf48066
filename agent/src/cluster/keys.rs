//! Cluster mode, keys on every node: virtual keys created, changed, rotated or revoked on any
//! agent (its admin API, which `tollgate keys` uses) reach every agent of the cluster within
//! about a second, through Redis. Also publishes this agent's usage totals (`usage.rs`).
//!
//! **Layout.** One Redis hash holds every key record, `tollgate:{keys}` field `<key id>` → the
//! JSON of [`SharedKey`]: the record with its SHA-256 hash in hex, never the secret (shown
//! once, by the agent that made it). `tollgate:{keys}:rank` holds each record's [`rank`], and
//! `tollgate:{keys}:version` is incremented by every write that changed something. The braces
//! put every `tollgate:{keys}...` key in one Redis Cluster slot, so the write script may touch
//! all of them.
//!
//! **Conflicts.** Last writer wins by `updated_ms`, except that a revocation is final: the
//! rank orders revoked after live, then by `updated_ms`, then by hash and spec (so two agents
//! always pick the same record). Redis only takes a record that outranks the one it has (a Lua
//! script), and an agent only takes from Redis a record that outranks its own. Records are
//! replaced whole: a rotation on one agent and an update of the same key on another within
//! the same second leave whichever came later, hash included.
//!
//! **The sync thread** (`tollgate-cluster-sync`, never the request path): every second a `GET`
//! of the version; when it moved, or when this agent's own keys changed
//! (`Governor::local_changes`, looked at every 100 ms), or on (re)connecting, a full merge:
//! records only local or newer locally are pushed, records newer in Redis are written into the
//! local store (so a restart without Redis still knows them) and the key table is rebuilt.
//! While Redis is away, admin changes are made locally as on a lone agent and pushed by the
//! merge when it returns (a Redis restarted empty is refilled by every agent the same way).
//! Revoked keys stay in Redis as tombstones, so an agent that was away learns of revocations.
//!
//! **Exceptions** are shared the same way, by a uid given at grant: `tollgate:{keys}:exceptions`
//! field `<uid>` → [`SharedException`] (rank in `tollgate:{keys}:exceptions:rank`). A grant never
//! changes; a withdrawal (or expiry) outranks it and is final. Each agent still expires
//! exceptions on its own clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Script;

use super::conn::RedisConn;
use serde::{Deserialize, Serialize};

use crate::config::cluster::ClusterSettings;
use crate::governance::keys::{KeyRecord, KeySpec};
use crate::governance::store::{Exception, Store as LocalStore};
use crate::governance::Governor;
use crate::shared::Shared;

/// Hash of the key records by id.
pub const KEYS: &str = "tollgate:{keys}";
/// Hash of each record's rank by id (what the write script compares).
pub const RANKS: &str = "tollgate:{keys}:rank";
/// Incremented by every write that changed a record.
pub const VERSION: &str = "tollgate:{keys}:version";
/// Hash of the exceptions by uid (live or withdrawn).
pub const EXCEPTIONS: &str = "tollgate:{keys}:exceptions";
/// Hash of each exception's rank by uid: `0` live, `1` withdrawn (final).
pub const EXCEPTION_RANKS: &str = "tollgate:{keys}:exceptions:rank";

/// How often the version is read.
const POLL: Duration = Duration::from_secs(1);
/// How often the thread wakes (local changes, stop).
const STEP: Duration = Duration::from_millis(100);
const RECONNECT: Duration = Duration::from_secs(1);
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// How often usage totals are published.
const USAGE_EVERY: Duration = Duration::from_secs(3);

/// Writes the records that outrank what Redis holds; returns the version after the writes.
/// KEYS: records, ranks, version. ARGV: (id, json, rank) triples.
const PUT: &str = r"
local changed = 0
for i = 1, #ARGV, 3 do
  local old = redis.call('HGET', KEYS[2], ARGV[i])
  if (not old) or ARGV[i + 2] > old then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    changed = changed + 1
  end
end
if changed > 0 then return redis.call('INCR', KEYS[3]) end
return tonumber(redis.call('GET', KEYS[3]) or '0')
";

/// A key record and the SHA-256 of its secret, as the local store keeps them.
pub type KeyRow = (KeyRecord, [u8; 32]);

/// A key record as Redis holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedKey {
    pub id: String,
    pub prefix: String,
    /// SHA-256 of the secret, 64 hex digits.
    pub hash: String,
    pub spec: KeySpec,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
    /// The agent that wrote it (for operators reading Redis).
    #[serde(default)]
    pub origin: String,
}

impl SharedKey {
    pub fn from_local(rec: &KeyRecord, hash: &[u8; 32], origin: &str) -> SharedKey {
        SharedKey {
            id: rec.id.clone(),
            prefix: rec.prefix.clone(),
            hash: hash.iter().map(|b| format!("{b:02x}")).collect(),
            spec: rec.spec.clone(),
            created_ms: rec.created_ms,
            updated_ms: rec.updated_ms,
            revoked_ms: rec.revoked_ms,
            origin: origin.to_string(),
        }
    }

    /// The record and hash for the local store; `None` when the hash is not 64 hex digits.
    pub fn to_local(&self) -> Option<KeyRow> {
        let hex = self.hash.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).ok()?;
            hash[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some((
            KeyRecord {
                id: self.id.clone(),
                prefix: self.prefix.clone(),
                spec: self.spec.clone(),
                created_ms: self.created_ms,
                updated_ms: self.updated_ms,
                revoked_ms: self.revoked_ms,
            },
            hash,
        ))
    }
}

/// The order in which versions of one key replace each other: revoked after live (revocation
/// is final), then the later `updated_ms`, then hash and spec (any fixed order, so every agent
/// and Redis agree). Compared as strings, here and in the Lua script.
pub fn rank(rec: &KeyRecord, hash: &[u8; 32]) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}|{:020}|{hex}|{}",
        u8::from(rec.revoked_ms.is_some()),
        rec.updated_ms.max(0),
        serde_json::to_string(&rec.spec).unwrap_or_default()
    )
}

/// Whether `a` replaces `b` (two versions of one key).
pub fn wins(a: &KeyRow, b: &KeyRow) -> bool {
    rank(&a.0, &a.1) > rank(&b.0, &b.1)
}

/// What a merge does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Newer in Redis (or only there): written into the local store.
    pub pull: Vec<KeyRow>,
    /// Newer here (or only here): pushed to Redis.
    pub push: Vec<KeyRow>,
}

/// Compares the local store with Redis, key by key.
pub fn plan(local: Vec<KeyRow>, remote: Vec<KeyRow>) -> Plan {
    let mut remote: std::collections::HashMap<String, KeyRow> =
        remote.into_iter().map(|r| (r.0.id.clone(), r)).collect();
    let mut out = Plan::default();
    for l in local {
        match remote.remove(&l.0.id) {
            None => out.push.push(l),
            Some(r) if wins(&r, &l) => out.pull.push(r),
            Some(r) if wins(&l, &r) => out.push.push(l),
            Some(_) => {}
        }
    }
    let mut rest: Vec<_> = remote.into_values().collect();
    rest.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    out.pull.extend(rest);
    out
}

/// An exception as Redis holds it: granted (`exception`) and perhaps withdrawn since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedException {
    pub uid: String,
    /// Absent for a withdrawal announced by an agent that no longer had the grant itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception: Option<Exception>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_ms: Option<i64>,
}

impl SharedException {
    fn rank(&self) -> &'static str {
        if self.withdrawn_ms.is_some() {
            "1"
        } else {
            "0"
        }
    }
}

/// What a merge does with exceptions (granted once, never changed, withdrawn for good).
#[derive(Debug, Default, PartialEq)]
pub struct ExceptionPlan {
    /// Granted elsewhere, in force: stored here.
    pub take: Vec<Exception>,
    /// Withdrawn elsewhere: removed here (uids).
    pub withdraw: Vec<String>,
    /// Granted or withdrawn here: written to Redis.
    pub push: Vec<SharedException>,
}

/// Compares local exceptions (and those withdrawn or expired here) with Redis.
pub fn plan_exceptions(
    local: Vec<Exception>,
    withdrawn: Vec<(String, i64)>,
    remote: Vec<SharedException>,
    now_ms: i64,
) -> ExceptionPlan {
    let remote: std::collections::HashMap<String, SharedException> =
        remote.into_iter().map(|r| (r.uid.clone(), r)).collect();
    let mut known = std::collections::HashSet::new();
    let mut out = ExceptionPlan::default();
    for x in local {
        let Some(uid) = x.uid.clone() else { continue };
        known.insert(uid.clone());
        match remote.get(&uid) {
            None => out.push.push(SharedException {
                uid,
                exception: Some(Exception { id: 0, ..x }),
                withdrawn_ms: None,
            }),
            Some(r) if r.withdrawn_ms.is_some() => out.withdraw.push(uid),
            Some(_) => {}
        }
    }
    for (uid, ms) in withdrawn {
        known.insert(uid.clone());
        match remote.get(&uid) {
            Some(r) if r.withdrawn_ms.is_some() => {}
            r => out.push.push(SharedException {
                exception: r.and_then(|r| r.exception.clone()),
                uid,
                withdrawn_ms: Some(ms),
            }),
        }
    }
    let mut rest: Vec<&SharedException> = remote
        .values()
        .filter(|r| !known.contains(&r.uid))
        .collect();
    rest.sort_by(|a, b| a.uid.cmp(&b.uid));
    for r in rest {
        if let (None, Some(x)) = (r.withdrawn_ms, &r.exception) {
            if x.expires_ms > now_ms {
                out.take.push(Exception {
                    id: 0,
                    uid: Some(r.uid.clone()),
                    ..x.clone()
                });
            }
        }
    }
    out
}

/// Everything Redis holds for the keys, read at once.
pub struct Remote {
    pub version: i64,
    pub keys: Vec<KeyRow>,
    pub exceptions: Vec<SharedException>,
}

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("local store: {0}")]
    Local(#[from] rusqlite::Error),
}

/// The Redis side of the key records.
pub struct KeyStore {
    conn: RedisConn,
    put: Script,
}

impl KeyStore {
    pub fn connect(
        settings: &crate::config::cluster::ClusterSettings,
        timeout: Duration,
    ) -> redis::RedisResult<KeyStore> {
        Ok(KeyStore {
            conn: super::conn::connect(settings, timeout)?,
            put: Script::new(PUT),
        })
    }

    /// The version (0 before any key was written).
    pub fn version(&mut self) -> redis::RedisResult<i64> {
        let v: Option<i64> = redis::cmd("GET").arg(VERSION).query(&mut *self.conn)?;
        Ok(v.unwrap_or(0))
    }

    /// The version, every key record and every exception, read together; records that do
    /// not parse are skipped.
    pub fn load(&mut self) -> redis::RedisResult<Remote> {
        type All = Vec<(String, String)>;
        // One command at a time (a Redis Cluster refuses pipelines), the version first: a write
        // that lands between these reads moves the version past the one returned, so the next
        // poll merges again.
        let v: Option<i64> = redis::cmd("GET").arg(VERSION).query(&mut *self.conn)?;
        let keys: All = redis::cmd("HGETALL").arg(KEYS).query(&mut *self.conn)?;
        let exceptions: All = redis::cmd("HGETALL")
            .arg(EXCEPTIONS)
            .query(&mut *self.conn)?;
        let mut out = Remote {
            version: v.unwrap_or(0),
            keys: Vec::with_capacity(keys.len()),
            exceptions: Vec::with_capacity(exceptions.len()),
        };
        for (id, json) in keys {
            match serde_json::from_str::<SharedKey>(&json)
                .ok()
                .and_then(|k| k.to_local())
            {
                Some(r) if r.0.id == id => out.keys.push(r),
                _ => {
                    tracing::warn!(key = %id, "cluster: a key record in Redis could not be read; skipped")
                }
            }
        }
        for (uid, json) in exceptions {
            match serde_json::from_str::<SharedException>(&json) {
                Ok(x) if x.uid == uid => out.exceptions.push(x),
                _ => {
                    tracing::warn!(exception = %uid, "cluster: an exception in Redis could not be read; skipped")
                }
            }
        }
        Ok(out)
    }

    /// Writes the exceptions that outrank Redis's (a withdrawal outranks the grant).
    pub fn push_exceptions(&mut self, xs: &[SharedException]) -> redis::RedisResult<i64> {
        let mut inv = self.put.key(EXCEPTIONS);
        inv.key(EXCEPTION_RANKS).key(VERSION);
        for x in xs {
            let json = serde_json::to_string(x).unwrap_or_default();
            inv.arg(&x.uid).arg(json).arg(x.rank());
        }
        inv.invoke(&mut *self.conn)
    }

    /// Writes the records that outrank Redis's; returns the version after.
    pub fn push(&mut self, recs: &[KeyRow], node: &str) -> redis::RedisResult<i64> {
        let mut inv = self.put.key(KEYS);
        inv.key(RANKS).key(VERSION);
        for (rec, hash) in recs {
            let json =
                serde_json::to_string(&SharedKey::from_local(rec, hash, node)).unwrap_or_default();
            inv.arg(&rec.id).arg(json).arg(rank(rec, hash));
        }
        inv.invoke(&mut *self.conn)
    }

    pub fn conn(&mut self) -> &mut dyn redis::ConnectionLike {
        &mut *self.conn
    }
}

/// One full merge; returns the Redis version it started from (a push moves the version on,
/// so the next poll merges once more and picks up anything written meanwhile).
fn merge(
    redis: &mut KeyStore,
    local: &LocalStore,
    gov: &Governor,
    node: &str,
) -> Result<i64, SyncError> {
    let remote = redis.load()?;
    let plan = plan(local.keys_with_hashes()?, remote.keys);
    for (rec, hash) in &plan.pull {
        local.put_key(rec, hash)?;
    }
    let xs = plan_exceptions(
        local.exceptions()?,
        local.withdrawn_exceptions()?,
        remote.exceptions,
        crate::governance::window::now_ms(),
    );
    for x in &xs.take {
        local.insert_exception(x)?;
    }
    if !xs.withdraw.is_empty() {
        for x in local.exceptions()? {
            if x.uid.as_ref().is_some_and(|u| xs.withdraw.contains(u)) {
                local.remove_exception(x.id)?;
            }
        }
    }
    if !plan.pull.is_empty() || !xs.take.is_empty() || !xs.withdraw.is_empty() {
        tracing::info!(
            node,
            keys = plan.pull.len(),
            exceptions_granted = xs.take.len(),
            exceptions_withdrawn = xs.withdraw.len(),
            "cluster: changes from other agents applied"
        );
        gov.reload_from(local)?;
    }
    if !plan.push.is_empty() {
        redis.push(&plan.push, node)?;
    }
    if !xs.push.is_empty() {
        redis.push_exceptions(&xs.push)?;
    }
    Ok(remote.version)
}

/// The running sync thread.
pub struct SyncThread {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl SyncThread {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// Starts the sync thread when `cluster:` is configured.
pub fn start(shared: &Arc<Shared>) -> std::io::Result<Option<SyncThread>> {
    let Some(settings) = shared.snapshot.load().cfg.cluster.clone() else {
        return Ok(None);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (shared, flag) = (shared.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("tollgate-cluster-sync".into())
        .spawn(move || run(&shared, &settings, &flag))?;
    Ok(Some(SyncThread { stop, thread }))
}

fn run(shared: &Shared, settings: &ClusterSettings, stop: &AtomicBool) {
    let gov = shared.governor.clone();
    let local = match LocalStore::open(gov.data_dir()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cluster: the governance store could not be opened; keys are not shared");
            return;
        }
    };
    let node = settings.node.as_str();
    let mut redis: Option<KeyStore> = None;
    let mut next_connect = Instant::now();
    let mut warned = false;
    // `None`: merge at the next chance (start, reconnect).
    let mut seen_version: Option<i64> = None;
    let mut seen_changes = 0u64;
    let mut next_poll = Instant::now();
    let mut next_usage = Instant::now();
    // This agent's running totals, published every USAGE_EVERY (all of them again after a reconnect).
    let mut usage = super::usage::UsageState::default();
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if redis.is_none() && now >= next_connect {
            match KeyStore::connect(settings, REDIS_TIMEOUT) {
                Ok(r) => {
                    redis = Some(r);
                    usage.dirty = true;
                    seen_version = None;
                    warned = false;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(node, "cluster: key sync cannot reach Redis: {e}; key changes stay local until it returns");
                        warned = true;
                    }
                    next_connect = now + RECONNECT;
                }
            }
        }
        if let Some(r) = redis.as_mut() {
            let result = (|| -> Result<(), SyncError> {
                let changes = gov.local_changes.load(Ordering::Acquire);
                let poll = now >= next_poll;
                if poll || changes != seen_changes || seen_version.is_none() {
                    let moved = if poll {
                        next_poll = now + POLL;
                        seen_version != Some(r.version()?)
                    } else {
                        false
                    };
                    if moved || changes != seen_changes || seen_version.is_none() {
                        // Read before the merge: a change made during it triggers another.
                        seen_changes = changes;
                        seen_version = Some(merge(r, &local, &gov, node)?);
                    }
                }
                if now >= next_usage {
                    next_usage = now + USAGE_EVERY;
                    super::usage::publish(r.conn(), node, gov.data_dir(), &mut usage)?;
                }
                Ok(())
            })();
            if let Err(e) = result {
                tracing::warn!(node, "cluster: key sync failed: {e}; retrying");
                redis = None;
                seen_version = None;
                usage.dirty = true;
                next_connect = Instant::now() + RECONNECT;
            }
        }
        std::thread::sleep(STEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, updated_ms: i64, revoked: bool, team: &str) -> KeyRow {
        (
            KeyRecord {
                id: id.into(),
                prefix: "tg-abcdefgh".into(),
                spec: KeySpec {
                    team: Some(team.into()),
                    enabled: true,
                    ..KeySpec::default()
                },
                created_ms: 1,
                updated_ms,
                revoked_ms: revoked.then_some(updated_ms),
            },
            [0xab; 32],
        )
    }

    #[test]
    fn a_shared_key_round_trips_through_json_with_its_hash_and_never_a_secret() {
        let (r, mut h) = rec("k_1", 5, false, "search");
        h[0] = 0x01;
        h[31] = 0xfe;
        let shared = SharedKey::from_local(&r, &h, "gpu-1");
        let json = serde_json::to_string(&shared).unwrap();
        assert!(json.contains("\"hash\":\"01abab"), "{json}");
        assert!(json.contains("\"team\":\"search\""), "{json}");
        assert!(!json.contains("revoked_ms"), "{json}");
        let back: SharedKey = serde_json::from_str(&json).unwrap();
        assert_eq!(back, shared);
        assert_eq!(back.to_local(), Some((r, h)));
        let bad = SharedKey {
            hash: "zz".repeat(32),
            ..back.clone()
        };
        assert_eq!(bad.to_local(), None);
        let short = SharedKey {
            hash: "ab".into(),
            ..back
        };
        assert_eq!(short.to_local(), None);
    }

    #[test]
    fn the_later_update_wins_and_a_revocation_is_final() {
        let old = rec("k", 10, false, "a");
        let new = rec("k", 20, false, "b");
        assert!(wins(&new, &old));
        assert!(!wins(&old, &new));
        assert!(!wins(&old, &old), "a record does not replace itself");
        // A revocation beats a later update made elsewhere.
        let revoked = rec("k", 15, true, "a");
        let later = rec("k", 99, false, "c");
        assert!(wins(&revoked, &later));
        assert!(!wins(&later, &revoked));
        // Same time: one fixed order, whichever side compares.
        let (x, y) = (rec("k", 10, false, "x"), rec("k", 10, false, "y"));
        assert!(wins(&x, &y) != wins(&y, &x));
        // Ranks compare like the numbers they hold.
        assert!(
            rank(&rec("k", 9, false, "a").0, &[0; 32])
                < rank(&rec("k", 10, false, "a").0, &[0; 32])
        );
    }

    fn exception(uid: &str, expires_ms: i64) -> Exception {
        Exception {
            id: 7,
            subject_kind: crate::governance::store::SubjectKind::Team,
            subject: "search".into(),
            model: None,
            extra_tokens: Some(100),
            extra_usd: None,
            justification: "launch".into(),
            approver: "cto".into(),
            created_ms: 1,
            expires_ms,
            uid: Some(uid.into()),
        }
    }

    #[test]
    fn exceptions_are_taken_once_and_a_withdrawal_is_final() {
        let live = |uid: &str, exp| SharedException {
            uid: uid.into(),
            exception: Some(exception(uid, exp)),
            withdrawn_ms: None,
        };
        let gone = |uid: &str| SharedException {
            withdrawn_ms: Some(50),
            ..live(uid, 1000)
        };
        let p = plan_exceptions(
            vec![
                exception("here", 1000),
                exception("withdrawn-there", 1000),
                exception("both", 1000),
            ],
            vec![("withdrawn-here".into(), 40), ("expired-here".into(), 41)],
            vec![
                live("there", 1000),
                live("there-expired", 10),
                gone("withdrawn-there"),
                live("both", 1000),
                live("withdrawn-here", 1000),
                gone("gone-everywhere"),
            ],
            100,
        );
        assert_eq!(p.take.len(), 1, "{p:?}");
        assert_eq!((p.take[0].uid.as_deref(), p.take[0].id), (Some("there"), 0));
        assert_eq!(p.withdraw, ["withdrawn-there"]);
        let mut pushed: Vec<(&str, Option<i64>, bool)> = p
            .push
            .iter()
            .map(|x| (x.uid.as_str(), x.withdrawn_ms, x.exception.is_some()))
            .collect();
        pushed.sort();
        assert_eq!(
            pushed,
            [
                ("expired-here", Some(41), false),
                ("here", None, true),
                ("withdrawn-here", Some(40), true),
            ]
        );
        // The withdrawal outranks the grant in Redis too.
        assert!(gone("x").rank() > live("x", 1).rank());
        let json = serde_json::to_string(&p.push[0]).unwrap();
        let back: SharedException = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p.push[0]);
    }

    #[test]
    fn a_merge_pushes_what_is_newer_here_and_pulls_what_is_newer_there() {
        let local = vec![
            rec("only-here", 1, false, "a"),
            rec("newer-here", 30, false, "a"),
            rec("newer-there", 10, false, "a"),
            rec("same", 5, false, "a"),
            rec("revoked-here", 5, true, "a"),
        ];
        let remote = vec![
            rec("only-there", 1, false, "b"),
            rec("newer-here", 20, false, "b"),
            rec("newer-there", 40, false, "b"),
            rec("same", 5, false, "a"),
            rec("revoked-here", 50, false, "b"),
        ];
        let p = plan(local, remote);
        let ids = |v: &[KeyRow]| {
            let mut ids: Vec<String> = v.iter().map(|r| r.0.id.clone()).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&p.push), ["newer-here", "only-here", "revoked-here"]);
        assert_eq!(ids(&p.pull), ["newer-there", "only-there"]);
        let pulled = p.pull.iter().find(|r| r.0.id == "newer-there").unwrap();
        assert_eq!(pulled.0.updated_ms, 40);
    }
}
