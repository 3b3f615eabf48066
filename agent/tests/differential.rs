//! Differential tests: wherever Tollgate reads a field of a request body and the provider reads
//! the same field, both must read the same value, or Tollgate must refuse the body. The
//! provider's reader is serde_json (like Python's `json`, which vLLM and the OpenAI stack use:
//! a later duplicate key wins). Bodies are generated as raw JSON text, so they contain what
//! serialisers never produce: duplicate keys, escaped key names, nulls, odd number forms.

use proptest::prelude::*;
use serde_json::Value;
use tollgate::api::Api;
use tollgate::phase::forward::rewrite_body;
use tollgate::phase::inspect::{inspect_body, InspectError};

/// Keys as written in the body, with the name a JSON reader sees after unescaping.
const KEYS: &[(&str, &str)] = &[
    ("model", "model"),
    ("mod\\u0065l", "model"),
    ("stream", "stream"),
    ("str\\u0065am", "stream"),
    ("stream_options", "stream_options"),
    ("max_tokens", "max_tokens"),
    ("max_completion_tokens", "max_completion_tokens"),
    ("n", "n"),
    ("messages", "messages"),
    ("temperature", "temperature"),
    ("metadata", "metadata"),
];

/// Fields Tollgate reads (each may appear once).
const READ: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "messages",
    "temperature",
];

fn value_for(key: &str) -> BoxedStrategy<String> {
    let common = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("\"smol\"".to_string()),
        Just("\"sm\\u006fl\"".to_string()),
        Just("\"a\\\"b\\\\c\"".to_string()),
        Just("\"gpt-4-\\u00e9\"".to_string()),
        Just("1".to_string()),
        Just("1.0".to_string()),
        Just("1e2".to_string()),
        Just("-0".to_string()),
        Just("18446744073709551616".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    match key {
        "stream_options" => prop_oneof![
            Just("{\"include_usage\":true}".to_string()),
            Just("{\"include_usage\":false}".to_string()),
            Just("{\"include_usage\":false,\"x\":1}".to_string()),
            Just("{\"include_usage\":null}".to_string()),
            Just("{\"x\":[1,{\"y\":null}]}".to_string()),
            common,
        ]
        .boxed(),
        "messages" => prop_oneof![
            Just("[{\"role\":\"user\",\"content\":\"hi \\\"there\\\" \\u263a\"}]".to_string()),
            Just(
                "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}]}]"
                    .to_string()
            ),
            common,
        ]
        .boxed(),
        _ => common.boxed(),
    }
}

/// A body: some of the keys, in any order, possibly repeated, with whitespace around.
fn body() -> impl Strategy<Value = (String, Vec<&'static str>)> {
    prop::collection::vec(
        (0..KEYS.len()).prop_flat_map(|i| (Just(i), value_for(KEYS[i].1))),
        0..7,
    )
    .prop_flat_map(|members| {
        let ws = prop::sample::select(vec!["", " ", "\n", "\t "]);
        (Just(members), ws)
    })
    .prop_map(|(members, ws)| {
        let mut text = format!("{ws}{{");
        let mut names = Vec::new();
        for (n, (i, value)) in members.iter().enumerate() {
            if n > 0 {
                text.push(',');
            }
            text.push_str(&format!("{ws}\"{}\"{ws}:{ws}{value}", KEYS[*i].0));
            names.push(KEYS[*i].1);
        }
        text.push_str(&format!("{ws}}}{ws}"));
        (text, names)
    })
}

fn has_duplicate_read_key(names: &[&str]) -> bool {
    READ.iter()
        .any(|k| names.iter().filter(|n| *n == k).count() > 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn tollgate_and_the_provider_read_the_same_fields((text, names) in body()) {
        let provider: Result<Value, _> = serde_json::from_str(&text);
        match inspect_body(text.as_bytes()) {
            Err(InspectError::Syntax { .. }) => prop_assert!(provider.is_err(), "{text}"),
            Err(InspectError::Duplicate(_)) => prop_assert!(has_duplicate_read_key(&names), "{text}"),
            Err(_) => {}
            Ok(ins) => {
                prop_assert!(!has_duplicate_read_key(&names), "accepted a duplicate: {text}");
                let v = provider.map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                prop_assert_eq!(v["model"].as_str(), Some(ins.model.as_str()), "{}", text);
                prop_assert_eq!(v["stream"].as_bool().unwrap_or(false), ins.stream, "{}", text);
                let max = v["max_tokens"].as_u64().or(v["max_completion_tokens"].as_u64());
                if ins.max_output_tokens.is_some() {
                    prop_assert_eq!(max, ins.max_output_tokens, "{}", text);
                }
                // The exact cache stores only what the provider will answer repeatably.
                prop_assert_eq!(ins.deterministic, v["temperature"].as_f64() == Some(0.0), "{}", text);
                // What the provider receives: our model, usage asked for on streams, the rest
                // unchanged.
                let (out, _) = rewrite_body(Api::ChatCompletions, text.as_bytes(), &ins, "up-model");
                let sent: Value = serde_json::from_slice(&out)
                    .map_err(|e| TestCaseError::fail(format!("{text} -> {}: {e}", String::from_utf8_lossy(&out))))?;
                prop_assert_eq!(&sent["model"], "up-model");
                if ins.stream {
                    prop_assert_eq!(&sent["stream_options"]["include_usage"], true, "{}", text);
                }
                for (k, original) in v.as_object().into_iter().flatten() {
                    if k != "model" && k != "stream_options" {
                        prop_assert_eq!(&sent[k], original, "{} changed in {}", k, text);
                    }
                }
            }
        }
    }
}
