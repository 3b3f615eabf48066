//! The ship cursor: the last rowid a sink committed, kept in `<data_dir>/ship/<sink>.cursor`
//! as one checksummed line, replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::ship::SinkKind;

/// The last shipped rowid of one sink, kept in `<data_dir>/ship/<sink>.cursor`.
#[derive(Debug)]
pub struct CursorFile {
    path: PathBuf,
}

/// A cursor file that is there but does not read back.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("reading the ship cursor {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the ship cursor {path} is not one Tollgate wrote ({why}); shipping is off until it is \
         fixed. Remove it to ship the whole ledger again (the store keeps one row per request \
         id, so nothing is duplicated)"
    )]
    Corrupt { path: String, why: String },
}

/// The file's one line: `tollgate-ship-cursor 1 <rowid> <crc32 of the text before it, hex>`.
const CURSOR_MAGIC: &str = "tollgate-ship-cursor 1";

impl CursorFile {
    pub fn new(data_dir: &Path, sink: SinkKind) -> CursorFile {
        CursorFile {
            path: data_dir
                .join("ship")
                .join(format!("{}.cursor", sink.name())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored rowid; 0 when there is no file yet (nothing shipped).
    pub fn load(&self) -> Result<i64, CursorError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(CursorError::Io {
                    path: self.path.display().to_string(),
                    source: e,
                })
            }
        };
        parse_cursor(&bytes).map_err(|why| CursorError::Corrupt {
            path: self.path.display().to_string(),
            why,
        })
    }

    /// Replaces the file with `rowid`: a temporary file, fsync, rename, fsync of the directory.
    pub fn store(&self, rowid: i64) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("cursor.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(format_cursor(rowid).as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

fn format_cursor(rowid: i64) -> String {
    let text = format!("{CURSOR_MAGIC} {rowid}");
    format!("{text} {:08x}\n", crc32fast::hash(text.as_bytes()))
}

fn parse_cursor(bytes: &[u8]) -> Result<i64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let line = text
        .strip_suffix('\n')
        .ok_or_else(|| format!("{} bytes without the final newline", bytes.len()))?;
    let (body, crc) = line
        .rsplit_once(' ')
        .ok_or_else(|| "no checksum".to_string())?;
    let rowid = body
        .strip_prefix(CURSOR_MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| format!("does not start with `{CURSOR_MAGIC}`"))?;
    let want = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum `{crc}`"))?;
    if crc32fast::hash(body.as_bytes()) != want {
        return Err("checksum mismatch".into());
    }
    rowid
        .parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| format!("bad rowid `{rowid}`"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ship::rows::tests::dir;

    #[test]
    fn the_cursor_round_trips_and_a_bad_file_is_refused() {
        let d = dir("cursor");
        let c = CursorFile::new(&d, SinkKind::Postgres);
        assert_eq!(c.path(), d.join("ship").join("postgres.cursor"));
        assert_eq!(c.load().unwrap(), 0, "no file: nothing shipped yet");
        c.store(12345).unwrap();
        assert_eq!(c.load().unwrap(), 12345);
        c.store(7).unwrap();
        assert_eq!(c.load().unwrap(), 7);
        assert!(!d.join("ship").join("postgres.cursor.tmp").exists());
        let good = std::fs::read(c.path()).unwrap();
        for (bytes, why) in [
            (good[..good.len() - 1].to_vec(), "final newline"),
            (good[..good.len() / 2].to_vec(), "final newline"),
            (b"12345\n".to_vec(), "no checksum"),
            (b"\x00\x00\x00\x00".to_vec(), "final newline"),
            (Vec::new(), "final newline"),
            (
                String::from_utf8(good.clone())
                    .unwrap()
                    .replace(" 7 ", " 8 ")
                    .into_bytes(),
                "checksum mismatch",
            ),
        ] {
            std::fs::write(c.path(), &bytes).unwrap();
            let e = c.load().unwrap_err().to_string();
            assert!(e.contains(why), "{why:?} missing from {e}");
            assert!(e.contains("Remove it"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
