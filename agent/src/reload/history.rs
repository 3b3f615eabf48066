//! Every configuration the agent applied, as numbered versions in `data_dir/config-history/`:
//! `NNNNNN.yaml` is the file byte for byte, `NNNNNN.json` says when, why (the trigger) and its
//! SHA-256. `tollgate config history | diff | rollback` read them without a running agent.
//! Control plane only.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One applied configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Version {
    pub number: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// When it was applied, milliseconds since the Unix epoch.
    pub applied_ms: i64,
    /// What applied it: `start`, `sighup`, `file-watch`, `admin`.
    pub trigger: String,
    /// The snapshot generation it became.
    pub generation: u64,
}

/// The history directory of a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("config-history")
}

/// SHA-256 of `bytes`, hex.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every version recorded under `data_dir`, oldest first.
pub fn list(data_dir: &Path) -> std::io::Result<Vec<Version>> {
    let dir = dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read(&path)?;
            match serde_json::from_slice::<Version>(&text) {
                Ok(v) => out.push(v),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable config history entry")
                }
            }
        }
    }
    out.sort_by_key(|v| v.number);
    Ok(out)
}

/// The file content of version `number`.
pub fn content(data_dir: &Path, number: u64) -> std::io::Result<Vec<u8>> {
    std::fs::read(dir(data_dir).join(format!("{number:06}.yaml")))
}

/// Records `text` as the next version. The content is written before its metadata, each via a
/// temporary file and a rename, so a listed version always has its content.
pub fn record(
    data_dir: &Path,
    text: &[u8],
    trigger: &str,
    generation: u64,
) -> std::io::Result<Version> {
    let dir = dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let number = list(data_dir)?.last().map_or(1, |v| v.number + 1);
    let version = Version {
        number,
        sha256: sha256(text),
        applied_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        trigger: trigger.to_string(),
        generation,
    };
    let write = |name: String, bytes: &[u8]| -> std::io::Result<()> {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(name))
    };
    write(format!("{number:06}.yaml"), text)?;
    write(
        format!("{number:06}.json"),
        &serde_json::to_vec_pretty(&version).map_err(std::io::Error::other)?,
    )?;
    Ok(version)
}

/// A unified diff between two versions' contents.
pub fn diff(a: &[u8], b: &[u8], a_name: &str, b_name: &str) -> String {
    let a = String::from_utf8_lossy(a);
    let b = String::from_utf8_lossy(b);
    similar::TextDiff::from_lines(a.as_ref(), b.as_ref())
        .unified_diff()
        .header(a_name, b_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_and_read_back_byte_for_byte() {
        let data = std::env::temp_dir().join(format!("tollgate-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        assert!(list(&data).unwrap().is_empty());
        let one = b"listen: 127.0.0.1:4000\n# \xc3\xa9\n".to_vec();
        let two = b"listen: 127.0.0.1:4001\n".to_vec();
        let v1 = record(&data, &one, "start", 1).unwrap();
        let v2 = record(&data, &two, "sighup", 2).unwrap();
        assert_eq!((v1.number, v2.number), (1, 2));
        assert_eq!(list(&data).unwrap(), vec![v1.clone(), v2]);
        assert_eq!(content(&data, 1).unwrap(), one);
        assert_eq!(v1.sha256, sha256(&one));
        assert_eq!(v1.sha256.len(), 64);
        let d = diff(&one, &two, "1", "2");
        assert!(
            d.contains("-listen: 127.0.0.1:4000") && d.contains("+listen: 127.0.0.1:4001"),
            "{d}"
        );
        let _ = std::fs::remove_dir_all(&data);
    }
}
