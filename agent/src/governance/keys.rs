//! Virtual keys: `tg-` + 32 random bytes in base62. Only a SHA-256 hash and a display prefix
//! are stored (`store.rs`); the key itself is shown once, when created or rotated. The workers
//! look keys up in an immutable [`KeyTable`] swapped whole on every change, so a lookup is a
//! hash and one map probe, with the stored hash compared in constant time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::budget::BudgetState;
use super::gcra::Gcra;
use super::window::Window;
use crate::config::Glob;

pub const KEY_PREFIX: &str = "tg-";
/// Characters of a key shown in listings (`tg-` and 8 more).
const DISPLAY_CHARS: usize = 11;

/// What an administrator sets on a key (create and update).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Globs of the model names this key may use; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The budget's calendar window (default: month).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Milliseconds since the Unix epoch after which the key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Client networks the key may be used from; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<IpNet>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The default priority class of the key's requests (`x-tollgate-priority` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<crate::config::routing::PriorityClass>,
}

fn yes() -> bool {
    true
}

impl KeySpec {
    /// Problems an administrator must fix before the key is stored.
    pub fn check(&self) -> Result<(), String> {
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err("rpm and tpm must be at least 1 (leave them out for no limit)".into());
        }
        if self
            .budget_tokens
            .is_some_and(|t| t > super::budget::MAX_AMOUNT)
        {
            return Err(format!(
                "budget_tokens must be at most {}",
                super::budget::MAX_AMOUNT
            ));
        }
        if let Some(usd) = self.budget_usd {
            if !(usd.is_finite() && usd >= 0.0 && usd <= super::budget::MAX_AMOUNT as f64 / 1e6) {
                return Err("budget_usd must be between 0 and 1000000".into());
            }
        }
        if self.models.iter().any(|m| m.is_empty() || m.len() > 256) {
            return Err("models: each glob must be 1 to 256 characters".into());
        }
        Ok(())
    }
}

/// A stored key (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    /// The key's first characters, to recognise it in listings.
    pub prefix: String,
    #[serde(flatten)]
    pub spec: KeySpec,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<i64>,
}

/// A new random key and its hash.
pub struct NewKey {
    pub secret: String,
    pub hash: [u8; 32],
    pub prefix: String,
}

/// Generates a key from 32 bytes of OS randomness.
pub fn generate() -> std::io::Result<NewKey> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let secret = format!("{KEY_PREFIX}{}", base62(&bytes));
    Ok(NewKey {
        hash: hash(&secret),
        prefix: secret[..DISPLAY_CHARS].to_string(),
        secret,
    })
}

/// A random identifier for a new key (`k_` + 12 base62 characters), stable across rotations.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 9];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(format!("k_{}", base62(&bytes)))
}

/// A key's id in the `tg_key_usage` node counter map: FNV-1a 64 of its id (`k_...`), so node
/// tools can find a key's counters from the id the ledger and `tollgate keys list` show.
pub fn counter_id(key_id: &str) -> u64 {
    key_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Big-endian base62 of `bytes` (0-9, A-Z, a-z).
fn base62(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut num: Vec<u8> = bytes.to_vec();
    let mut out = Vec::new();
    while num.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        out.push(DIGITS[rem as usize]);
    }
    // Fixed width, so every key has the same length.
    let width = (bytes.len() as f64 * 8.0 / 62f64.log2()).ceil() as usize;
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Live counters of one key; kept across table rebuilds while its limits are unchanged.
#[derive(Debug, Default)]
pub struct KeyState {
    pub rpm: Option<Arc<Gcra>>,
    pub tpm: Option<Arc<Gcra>>,
    pub budget: Arc<BudgetState>,
}

impl KeyState {
    fn new(spec: &KeySpec, budget: Arc<BudgetState>) -> KeyState {
        let per_minute = |n: u64| Arc::new(Gcra::new(n, Duration::from_secs(60)));
        KeyState {
            rpm: spec.rpm.map(per_minute),
            tpm: spec.tpm.map(per_minute),
            budget,
        }
    }
}

/// A usable key, as the workers see it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    pub prefix: String,
    pub hash: [u8; 32],
    pub spec: KeySpec,
    pub models: Vec<Glob>,
    pub state: Arc<KeyState>,
    /// The key's own budget, as alerts and errors name it.
    pub budget_info: Arc<super::hold::BudgetInfo>,
}

impl KeyEntry {
    pub fn window(&self) -> Window {
        self.spec.window.unwrap_or(Window::Month)
    }

    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.spec.allowed_ips.is_empty() || self.spec.allowed_ips.iter().any(|n| n.contains(&ip))
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|g| g.matches(model))
    }
}

/// Every key that is not revoked, by hash. Immutable; swapped whole.
#[derive(Debug, Default)]
pub struct KeyTable {
    /// foldhash, not SipHash: the keys are SHA-256 digests, which no client can choose to
    /// collide, and the lookup runs on every governed request.
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>, foldhash::fast::RandomState>,
    /// The same entries by key id (the batch runner acts on behalf of a key it knows by id).
    by_id: HashMap<String, Arc<KeyEntry>>,
}

impl KeyTable {
    /// Builds a table from stored keys, keeping the counters of `previous` entries whose limits
    /// did not change (a key's spend in its window survives updates and rotation).
    pub fn build(rows: Vec<(KeyRecord, [u8; 32])>, previous: &KeyTable) -> KeyTable {
        let old: HashMap<&str, &Arc<KeyEntry>> = previous
            .by_hash
            .values()
            .map(|e| (e.id.as_str(), e))
            .collect();
        let mut by_hash = HashMap::default();
        let mut by_id = HashMap::new();
        for (rec, hash) in rows {
            if rec.revoked_ms.is_some() {
                continue;
            }
            let state = match old.get(rec.id.as_str()) {
                Some(e) if e.spec.rpm == rec.spec.rpm && e.spec.tpm == rec.spec.tpm => {
                    e.state.clone()
                }
                // New limits start fresh; the window's spend stays with the key.
                Some(e) => Arc::new(KeyState::new(&rec.spec, e.state.budget.clone())),
                None => Arc::new(KeyState::new(&rec.spec, Arc::default())),
            };
            let models = rec.spec.models.iter().map(|m| Glob::new(m)).collect();
            let budget_info = Arc::new(super::hold::BudgetInfo {
                name: format!("key={}", rec.id),
                scope: format!("key={}", rec.id),
                window: rec.spec.window.unwrap_or(Window::Month),
                alert_at: vec![0.8, 1.0],
                limit_tokens: rec.spec.budget_tokens,
                limit_micro_usd: rec.spec.budget_usd.map(|u| (u * 1e6).round() as u64),
            });
            let entry = Arc::new(KeyEntry {
                id: rec.id,
                prefix: rec.prefix,
                hash,
                spec: rec.spec,
                models,
                state,
                budget_info,
            });
            by_id.insert(entry.id.clone(), entry.clone());
            by_hash.insert(hash, entry);
        }
        KeyTable { by_hash, by_id }
    }

    /// The key with id `id` (`k_...`), if it exists and is not revoked.
    pub fn by_id(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.by_id.get(id)
    }

    /// The key `secret` names, if it is one of ours.
    pub fn lookup(&self, secret: &str) -> Option<&Arc<KeyEntry>> {
        let h = hash(secret);
        let entry = self.by_hash.get(&h)?;
        bool::from(entry.hash.ct_eq(&h)).then_some(entry)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.by_hash.values()
    }
}

/// Parses `30d`, `12h`, `45m`, `90s` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (num, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        "w" => n.checked_mul(7 * 86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_found_by_hash_only() {
        let a = generate().unwrap_or_else(|e| panic!("{e}"));
        let b = generate().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with("tg-"));
        assert_eq!(a.secret.len(), 3 + 43, "{}", a.secret);
        assert!(a.secret[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(a.prefix, &a.secret[..11]);
        let rec = KeyRecord {
            id: "k_1".into(),
            prefix: a.prefix.clone(),
            spec: KeySpec {
                team: Some("search".into()),
                enabled: true,
                ..KeySpec::default()
            },
            created_ms: 0,
            updated_ms: 0,
            revoked_ms: None,
        };
        let t = KeyTable::build(vec![(rec.clone(), a.hash)], &KeyTable::default());
        assert_eq!(t.lookup(&a.secret).map(|e| e.id.as_str()), Some("k_1"));
        assert!(t.lookup(&b.secret).is_none());
        assert!(t.lookup(&a.secret[..a.secret.len() - 1]).is_none());
        let revoked = KeyRecord {
            revoked_ms: Some(1),
            ..rec
        };
        assert!(KeyTable::build(vec![(revoked, a.hash)], &t).is_empty());
    }

    #[test]
    fn counter_ids_are_fnv1a_of_the_key_id() {
        // FNV-1a 64 reference values.
        assert_eq!(counter_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(counter_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(counter_id("k_1"), counter_id("k_2"));
    }

    #[test]
    fn counters_survive_a_rebuild_unless_limits_change() {
        let k = generate().unwrap_or_else(|e| panic!("{e}"));
        let rec = |rpm| KeyRecord {
            id: "k_1".into(),
            prefix: k.prefix.clone(),
            spec: KeySpec {
                rpm,
                enabled: true,
                ..KeySpec::default()
            },
            created_ms: 0,
            updated_ms: 0,
            revoked_ms: None,
        };
        let t1 = KeyTable::build(vec![(rec(Some(5)), k.hash)], &KeyTable::default());
        let t2 = KeyTable::build(vec![(rec(Some(5)), k.hash)], &t1);
        let s = |t: &KeyTable| t.lookup(&k.secret).map(|e| e.state.clone());
        assert!(Arc::ptr_eq(&s(&t1).unwrap(), &s(&t2).unwrap()));
        let t3 = KeyTable::build(vec![(rec(Some(6)), k.hash)], &t2);
        let (s2, s3) = (s(&t2).unwrap(), s(&t3).unwrap());
        assert!(!Arc::ptr_eq(&s2, &s3));
        assert!(
            Arc::ptr_eq(&s2.budget, &s3.budget),
            "the budget's spend is kept"
        );
    }

    #[test]
    fn ip_allowlists_and_model_globs() {
        let entry = KeyEntry {
            id: "k".into(),
            prefix: "tg-x".into(),
            hash: [0; 32],
            spec: KeySpec {
                allowed_ips: vec!["10.0.0.0/8".parse().unwrap()],
                ..KeySpec::default()
            },
            models: vec![Glob::new("gpt-4o*"), Glob::new("smol")],
            state: Arc::default(),
            budget_info: Arc::new(crate::governance::hold::BudgetInfo {
                name: "k".into(),
                scope: "key=k".into(),
                window: Window::Month,
                alert_at: Vec::new(),
                limit_tokens: None,
                limit_micro_usd: None,
            }),
        };
        assert!(entry.ip_allowed("10.1.2.3".parse().unwrap()));
        assert!(entry.ip_allowed("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!entry.ip_allowed("127.0.0.1".parse().unwrap()));
        assert!(entry.allows_model("gpt-4o-mini"));
        assert!(entry.allows_model("smol"));
        assert!(!entry.allows_model("smol2"));
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5y"), None);
    }
}
