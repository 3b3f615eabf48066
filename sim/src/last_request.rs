//! The most recent POST, as received, for `GET /sim/last-request`.
//!
//! End-to-end tests read it to check what the gateway actually forwarded: the rewritten model
//! name, the provider credentials in place of the client's key, injected `stream_options`. Header
//! names are lower-case; repeated headers are joined with `, `. Costs one copy of the headers per
//! POST (the body is shared, not copied).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::http::request::Parts;
use serde::ser::{Serialize, SerializeMap, Serializer};

#[derive(Default)]
pub struct LastRequest {
    slot: Mutex<Option<Arc<Recorded>>>,
}

struct Recorded {
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl LastRequest {
    pub fn record(&self, parts: &Parts, body: &Bytes) {
        let mut headers: Vec<(String, String)> = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            match headers.iter_mut().find(|(n, _)| n == name.as_str()) {
                Some((_, joined)) => {
                    joined.push_str(", ");
                    joined.push_str(&value);
                }
                None => headers.push((name.as_str().to_owned(), value.into_owned())),
            }
        }
        let recorded = Arc::new(Recorded {
            path: parts.uri.path().to_owned(),
            headers,
            body: body.clone(),
        });
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(recorded);
    }

    /// `{"headers":{..},"body":"..","path":".."}`, or `None` before the first POST.
    pub fn to_json(&self) -> Option<Vec<u8>> {
        let recorded = self
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(crate::body::to_json(&View(&recorded)))
    }
}

struct View<'a>(&'a Recorded);

impl Serialize for View<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Headers<'a>(&'a [(String, String)]);
        impl Serialize for Headers<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("headers", &Headers(&self.0.headers))?;
        map.serialize_entry("body", &String::from_utf8_lossy(&self.0.body))?;
        map.serialize_entry("path", &self.0.path)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_headers_body_and_path() {
        let last = LastRequest::default();
        assert!(last.to_json().is_none());
        let request = hyper::Request::post("/v1/chat/completions?x=1")
            .header("Authorization", "Bearer sk-upstream")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        last.record(&parts, &Bytes::from_static(br#"{"model":"m"}"#));
        let v: serde_json::Value = serde_json::from_slice(&last.to_json().unwrap()).unwrap();
        assert_eq!(v["headers"]["authorization"], "Bearer sk-upstream");
        assert_eq!(v["headers"]["x-multi"], "a, b");
        assert_eq!(v["body"], r#"{"model":"m"}"#);
        assert_eq!(v["path"], "/v1/chat/completions");
    }
}
