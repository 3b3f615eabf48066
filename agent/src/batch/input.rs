//! A batch input file: JSONL, one request per line, checked when it is uploaded (400 naming
//! the line) and read again when a job starts or resumes. Not on the hot path.

use std::collections::HashSet;

use crate::error::{ErrorKind, GateError};

/// Longest `custom_id` accepted, in bytes.
pub const MAX_CUSTOM_ID: usize = 512;

/// One request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct InputLine {
    pub custom_id: String,
    pub url: String,
    /// The request body, serialised again (with `stream` off: a batch line is not streamed).
    pub body: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct RawLine {
    custom_id: Option<serde_json::Value>,
    method: Option<serde_json::Value>,
    url: Option<serde_json::Value>,
    body: Option<serde_json::Value>,
}

fn bad(line: usize, message: impl std::fmt::Display) -> GateError {
    GateError::new(
        ErrorKind::InvalidRequest {
            param: Some("file"),
        },
        format!("Invalid batch input file, line {line}: {message}"),
    )
}

/// Parses and checks a whole input file. Blank lines are skipped; line numbers start at 1.
pub fn parse(bytes: &[u8]) -> Result<Vec<InputLine>, GateError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if out.len() == super::MAX_LINES {
            return Err(bad(
                n,
                format!("a batch holds at most {} requests", super::MAX_LINES),
            ));
        }
        if crate::json::depth_exceeds(raw, crate::json::DEFAULT_MAX_DEPTH).is_some() {
            return Err(bad(
                n,
                format!(
                    "JSON nested deeper than {} levels",
                    crate::json::DEFAULT_MAX_DEPTH
                ),
            ));
        }
        let line: RawLine =
            serde_json::from_slice(raw).map_err(|e| bad(n, format!("not a JSON object ({e})")))?;
        let custom_id = match line.custom_id {
            Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_CUSTOM_ID => s,
            Some(serde_json::Value::String(_)) => {
                return Err(bad(
                    n,
                    format!("`custom_id` must be 1 to {MAX_CUSTOM_ID} bytes"),
                ))
            }
            _ => return Err(bad(n, "`custom_id` (a string) is required")),
        };
        if !seen.insert(custom_id.clone()) {
            return Err(bad(
                n,
                format!("`custom_id` {custom_id:?} appears more than once; each must be unique"),
            ));
        }
        match line.method {
            Some(serde_json::Value::String(m)) if m == "POST" => {}
            _ => return Err(bad(n, "`method` must be \"POST\"")),
        }
        let url = match line.url {
            Some(serde_json::Value::String(u)) if super::ENDPOINTS.contains(&u.as_str()) => u,
            _ => {
                return Err(bad(
                    n,
                    format!("`url` must be one of {}", super::ENDPOINTS.join(", ")),
                ))
            }
        };
        let mut body = match line.body {
            Some(serde_json::Value::Object(o)) => o,
            _ => return Err(bad(n, "`body` (a JSON object) is required")),
        };
        if !matches!(body.get("model"), Some(serde_json::Value::String(_))) {
            return Err(bad(n, "`body.model` (a string) is required"));
        }
        if body.contains_key("stream") {
            body.insert("stream".into(), serde_json::Value::Bool(false));
        }
        body.remove("stream_options");
        let body = serde_json::to_vec(&body).map_err(|e| bad(n, e))?;
        out.push(InputLine {
            custom_id,
            url,
            body,
        });
    }
    if out.is_empty() {
        return Err(bad(1, "the file holds no requests"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}"#;

    fn err(input: &str) -> String {
        match parse(input.as_bytes()) {
            Ok(v) => panic!("accepted: {v:?}"),
            Err(e) => {
                assert_eq!(e.status(), 400);
                assert_eq!(e.to_response(crate::api::Wire::OpenAi).status, 400);
                e.message
            }
        }
    }

    #[test]
    fn valid_lines_parse_and_streams_are_turned_off() {
        let two = format!(
            "{OK}\n\n{}\r\n",
            r#"{"custom_id":"b","method":"POST","url":"/v1/embeddings","body":{"model":"e","input":"x","stream":true}}"#
        );
        let lines = parse(two.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].custom_id, "a");
        assert_eq!(lines[1].url, "/v1/embeddings");
        let body: serde_json::Value =
            serde_json::from_slice(&lines[1].body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body["stream"], false);
        assert_eq!(body["input"], "x");
    }

    #[test]
    fn each_problem_names_its_line() {
        let dup = format!("{OK}\n{OK}\n");
        let m = err(&dup);
        assert!(m.contains("line 2") && m.contains("unique"), "{m}");
        let m = err(&format!("{OK}\nnot json\n"));
        assert!(m.contains("line 2") && m.contains("JSON"), "{m}");
        let m = err(&OK.replace("\"POST\"", "\"GET\""));
        assert!(m.contains("line 1") && m.contains("method"), "{m}");
        let m = err(&OK.replace("/v1/chat/completions", "/v1/images"));
        assert!(m.contains("url"), "{m}");
        let m = err(&OK.replace(r#""custom_id":"a","#, ""));
        assert!(m.contains("custom_id"), "{m}");
        let m = err(&OK.replace(r#""model":"m","#, ""));
        assert!(m.contains("body.model"), "{m}");
        let m = err(r#"{"custom_id":"a","method":"POST","url":"/v1/completions","body":[1]}"#);
        assert!(m.contains("`body`"), "{m}");
        let m = err("\n\n");
        assert!(m.contains("no requests"), "{m}");
        let deep = format!(
            r#"{{"custom_id":"a","method":"POST","url":"/v1/completions","body":{{"model":"m","x":{}}}}}"#,
            "[".repeat(5000)
        );
        let m = err(&deep);
        assert!(m.contains("nested"), "{m}");
    }

    #[test]
    fn too_many_lines_is_refused() {
        let mut s = String::new();
        for i in 0..=crate::batch::MAX_LINES {
            s.push_str(&OK.replace("\"a\"", &format!("\"{i}\"")));
            s.push('\n');
        }
        let m = err(&s);
        assert!(m.contains("at most 50000"), "{m}");
    }
}
