//! How far Tollgate's two JSON readings are from the cost of validating the same bytes: run
//! under callgrind by `benches/scripts/reading_floor.sh`, which subtracts an empty run and
//! divides by the iterations. Instructions, not time: deterministic on a shared VM.
//!
//! The request is the load generator's 2 KB chat body (`tollgate-load --prompt-bytes 2048`);
//! the response is what `tollgate-sim --zero-delay` answers it with (517 bytes). Each mode
//! reads one of them `N` times:
//! - `inspect`, `usage`: the request phase's inspection and the response's usage read;
//! - `*_sonic`, `*_serde_json`: a validating pass that keeps nothing (`IgnoredAny`);
//! - `*_simd_json`: simd-json's tape (it parses in place, so it copies the body first);
//! - `request_utf8`: `std::str::from_utf8`, the least any validation reads.
//!
//! usage: reading_floor MODE N

use serde::de::IgnoredAny;
use tollgate::api::Api;

const RESPONSE: &str = r#"{"id":"chatcmpl-a52a34421e5313070005a27d","object":"chat.completion","created":1796337940,"model":"smol","choices":[{"index":0,"message":{"role":"assistant","content":" steady cache to steady while budget under replica traffic node before is to stream gateway decode","refusal":null},"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":16,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":null}"#;

fn read(mode: &str, request: &[u8], response: &[u8]) -> Option<usize> {
    Some(match mode {
        "none" => request.len() + response.len(),
        "inspect" => {
            tollgate::phase::inspect::inspect_body_with(request, 128)
                .ok()?
                .prompt_bytes
        }
        "usage" => {
            let (usage, _) =
                tollgate::metering::usage::plain_response_facts(Api::ChatCompletions, response);
            usage?.output_tokens as usize
        }
        "request_sonic" => usize::from(sonic_rs::from_slice::<IgnoredAny>(request).is_ok()),
        "response_sonic" => usize::from(sonic_rs::from_slice::<IgnoredAny>(response).is_ok()),
        "request_serde_json" => usize::from(serde_json::from_slice::<IgnoredAny>(request).is_ok()),
        "response_serde_json" => {
            usize::from(serde_json::from_slice::<IgnoredAny>(response).is_ok())
        }
        "request_simd_json" => usize::from(simd_json::to_tape(&mut request.to_vec()).is_ok()),
        "response_simd_json" => usize::from(simd_json::to_tape(&mut response.to_vec()).is_ok()),
        "request_utf8" => usize::from(std::str::from_utf8(request).is_ok()),
        _ => return None,
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(n)) = (
        args.next(),
        args.next().and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: reading_floor MODE N");
        std::process::exit(2);
    };
    let request = tollgate_benches::load::request::chat_body("smol", 16, false, 2048);
    let mut sum = 0usize;
    for _ in 0..n {
        let read = read(
            &mode,
            std::hint::black_box(&request),
            std::hint::black_box(RESPONSE.as_bytes()),
        );
        let Some(v) = read else {
            eprintln!("{mode}: unknown mode, or the body did not read");
            std::process::exit(2);
        };
        sum += v;
    }
    println!("{sum}");
}
