//! `multipart/form-data` (RFC 7578), as the OpenAI SDKs upload files: a small parser over the
//! whole, already bounded body (`limits.max_body_bytes`), borrowing part contents. Written
//! here rather than taken from `multer`, which is built on async streams; it must never panic
//! on any input (fuzzed: `fuzz/fuzz_targets/multipart.rs`). Runs on the batch thread.

use memchr::memmem;

/// Parts accepted in one body (the upload has two: `purpose` and `file`).
pub const MAX_PARTS: usize = 16;
/// Bytes of one part's header block at most.
pub const MAX_PART_HEAD: usize = 8 * 1024;

/// One field of the form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("Content-Type must be multipart/form-data with a boundary")]
    NoBoundary,
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    #[error("more than {MAX_PARTS} parts")]
    TooManyParts,
}

/// The boundary of a `multipart/form-data; boundary=...` content type (1 to 70 characters).
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    for p in params {
        let (k, v) = p.trim().split_once('=')?;
        if k.trim().eq_ignore_ascii_case("boundary") {
            let v = unquote(v.trim());
            return (1..=70).contains(&v.len()).then_some(v);
        }
    }
    None
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Splits `body` into its parts.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, MultipartError> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // The body's first delimiter (a preamble before it is ignored).
    let first = memmem::find(body, delim).ok_or(MultipartError::Malformed("no boundary"))?;
    let mut pos = first + delim.len();
    let next_delim = {
        let mut d = Vec::with_capacity(delim.len() + 2);
        d.extend_from_slice(b"\r\n");
        d.extend_from_slice(delim);
        d
    };
    let finder = memmem::Finder::new(&next_delim);
    let mut parts = Vec::new();
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let rest = rest.strip_prefix(b"\r\n").ok_or(MultipartError::Malformed(
            "a boundary line must end with CRLF",
        ))?;
        pos += 2;
        if parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        let head_len = memmem::find(&rest[..rest.len().min(MAX_PART_HEAD + 4)], b"\r\n\r\n")
            .ok_or(MultipartError::Malformed("a part's headers do not end"))?;
        let head = &rest[..head_len];
        let data_start = pos + head_len + 4;
        let data_rest = body.get(data_start..).unwrap_or_default();
        let end = finder.find(data_rest).ok_or(MultipartError::Malformed(
            "a part does not end with the boundary",
        ))?;
        let (name, filename) = disposition(head)?;
        parts.push(Part {
            name,
            filename,
            data: &data_rest[..end],
        });
        pos = data_start + end + next_delim.len();
    }
}

/// `name` and `filename` of a part's `Content-Disposition: form-data` header.
fn disposition(head: &[u8]) -> Result<(String, Option<String>), MultipartError> {
    let head = std::str::from_utf8(head)
        .map_err(|_| MultipartError::Malformed("part headers are not UTF-8"))?;
    for line in head.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            return Err(MultipartError::Malformed("a part header without a colon"));
        };
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let mut params = v.split(';');
        if !params
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("form-data"))
        {
            return Err(MultipartError::Malformed(
                "Content-Disposition must be form-data",
            ));
        }
        let mut name = None;
        let mut filename = None;
        for p in params {
            let Some((k, v)) = p.trim().split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = Some(unquote(v.trim()).to_string()),
                "filename" => filename = Some(unquote(v.trim()).to_string()),
                _ => {}
            }
        }
        let name = name.ok_or(MultipartError::Malformed("a part without a name"))?;
        return Ok((name, filename));
    }
    Err(MultipartError::Malformed(
        "a part without Content-Disposition",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What httpx (the OpenAI SDK's client) sends for `files.create(file=..., purpose="batch")`.
    const SDK: &[u8] = b"--abc123\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--abc123\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{\"a\":1}\r\n{\"b\":2}\r\n\r\n--abc123--\r\n";

    #[test]
    fn sdk_upload() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc123"),
            Some("abc123")
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"abc123\""),
            Some("abc123")
        );
        assert_eq!(boundary("application/json"), None);
        let parts = parse(SDK, "abc123").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"batch");
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\r\n{\"b\":2}\r\n");
    }

    #[test]
    fn broken_bodies_are_errors() {
        for n in 0..SDK.len() - 14 {
            // Every truncation before the closing delimiter fails cleanly.
            assert!(parse(&SDK[..n], "abc123").is_err(), "{n}");
        }
        assert!(parse(SDK, "other").is_err());
        let many =
            "--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n".repeat(MAX_PARTS + 1);
        assert_eq!(
            parse(format!("{many}--b--").as_bytes(), "b"),
            Err(MultipartError::TooManyParts)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The fuzz entry point on mutated and cut SDK uploads: never a panic, parts inside
        /// the body (a stand-in between `cargo xtask fuzz` runs).
        #[test]
        fn mutated_uploads_never_panic(
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..400,
        ) {
            let mut data = b"abc123\n".to_vec();
            data.extend_from_slice(SDK);
            for (at, b) in flips {
                let i = at % data.len();
                data[i] = b;
            }
            data.truncate(data.len() - cut % data.len());
            crate::fuzzing::batch_upload(&data);
        }
    }
}
