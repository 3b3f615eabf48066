//! Validators for credentials. Each starts from a literal the Aho-Corasick prefilter found
//! (`AKIA`, `ghp_`, `-----BEGIN`, a key word such as `password`, ...) and checks the shape that
//! follows. The prefilter patterns live here too, so adding a kind of secret touches one file.
//! Key words are matched case-sensitively in their common spellings (`password`, `Password`,
//! `PASSWORD`): an ASCII-case-insensitive automaton loses the SIMD (Teddy) prefilter.

use std::ops::Range;

use super::class::{Class, ClassSet};
use super::text::{
    classes, entropy, escaped_letter, is_alnum, is_b64, is_b64url, left_bound, preceded_by_ci,
    run_len,
};

/// What a prefilter literal starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Trigger {
    Aws,
    GcpApi,
    Github,
    GithubPat,
    SlackXox,
    SlackApp,
    SlackHook,
    /// `sk-`: OpenAI or, after `sk-ant-`, Anthropic.
    SkDash,
    Stripe,
    Pem,
    Jwt,
    Azure,
    /// `scheme://user:password@host`: the password.
    UrlCreds,
    /// `Authorization: Basic <base64 user:password>`.
    BasicAuth,
    /// A key word for high-entropy secrets (and AWS secret keys); the literal is the word from
    /// its second letter on, and `lead` is the first letter, checked without case.
    Keyword {
        lead: u8,
    },
}

/// The prefilter literals and which classes each can produce.
pub(crate) fn triggers(enabled: ClassSet) -> Vec<(&'static str, Trigger)> {
    use Trigger::*;
    let on = |c: Class| enabled.contains(&c);
    let mut v = Vec::new();
    if on(Class::AwsKey) {
        v.extend([("AKIA", Aws), ("ASIA", Aws)]);
    }
    if on(Class::GcpKey) {
        v.push(("AIza", GcpApi));
    }
    if on(Class::GithubToken) {
        v.extend([
            ("ghp_", Github),
            ("gho_", Github),
            ("ghu_", Github),
            ("ghs_", Github),
            ("ghr_", Github),
            ("github_pat_", GithubPat),
        ]);
    }
    if on(Class::SlackToken) {
        v.extend([
            ("xox", SlackXox),
            ("xapp-", SlackApp),
            ("hooks.slack.com", SlackHook),
        ]);
    }
    if on(Class::OpenaiKey) || on(Class::AnthropicKey) {
        v.push(("sk-", SkDash));
    }
    if on(Class::StripeKey) {
        v.extend([("sk_", Stripe), ("rk_", Stripe)]);
    }
    if on(Class::PrivateKey) || on(Class::GcpKey) {
        v.push(("-----BEGIN", Pem));
    }
    if on(Class::Jwt) {
        v.push(("eyJ", Jwt));
    }
    if on(Class::AzureKey) {
        v.extend([("AccountKey=", Azure), ("SharedAccessKey=", Azure)]);
    }
    if on(Class::Secret) {
        v.extend([("://", UrlCreds), ("Basic ", BasicAuth)]);
    }
    if on(Class::Secret) || on(Class::AwsKey) {
        for (word, lead) in [
            ("assword", b'p'),
            ("ASSWORD", b'p'),
            ("asswd", b'p'),
            ("ASSWD", b'p'),
            ("ecret", b's'),
            ("ECRET", b's'),
            ("oken", b't'),
            ("OKEN", b't'),
            ("pi_key", b'a'),
            ("PI_KEY", b'a'),
            ("pikey", b'a'),
            ("piKey", b'a'),
            ("PIKEY", b'a'),
            ("pi-key", b'a'),
            ("PI-KEY", b'a'),
        ] {
            v.push((word, Keyword { lead }));
        }
    }
    v
}

fn at(text: &[u8], i: usize) -> u8 {
    text.get(i).copied().unwrap_or(0)
}

/// Mixed case and digits: what a random key body has and a slug or a word does not.
fn looks_random(body: &[u8]) -> bool {
    let (lo, up, dg, _) = classes(body);
    lo && up && dg
}

/// Validates the secret that the literal at `s..e` may start; pushes `(class, range)`.
pub(crate) fn check(
    trig: Trigger,
    text: &[u8],
    s: usize,
    e: usize,
    enabled: ClassSet,
    out: &mut Vec<(Class, Range<usize>)>,
) {
    let mut push = |c: Class, r: Range<usize>| {
        if enabled.contains(&c) {
            out.push((c, r));
        }
    };
    let ab = |n: usize, f: fn(u8) -> bool| !f(at(text, n));
    match trig {
        Trigger::Aws => {
            let n = run_len(text, e, 17, |b| {
                b.is_ascii_uppercase() || b.is_ascii_digit()
            });
            if left_bound(text, s) && n == 16 && !is_alnum(at(text, e + n)) {
                push(Class::AwsKey, s..e + n);
            }
        }
        Trigger::GcpApi => {
            let n = run_len(text, e, 36, is_b64url);
            if left_bound(text, s) && n == 35 {
                push(Class::GcpKey, s..e + n);
            }
        }
        Trigger::Github => {
            let n = run_len(text, e, 256, is_alnum);
            if left_bound(text, s) && (30..256).contains(&n) && ab(e + n, is_b64url) {
                push(Class::GithubToken, s..e + n);
            }
        }
        Trigger::GithubPat => {
            let n = run_len(text, e, 256, |b| is_alnum(b) || b == b'_');
            if left_bound(text, s) && (40..256).contains(&n) {
                push(Class::GithubToken, s..e + n);
            }
        }
        Trigger::SlackXox => {
            if !b"bpars".contains(&at(text, e)) || at(text, e + 1) != b'-' {
                return;
            }
            let n = run_len(text, e + 2, 256, |b| is_alnum(b) || b == b'-');
            let body = &text[e + 2..e + 2 + n];
            if left_bound(text, s) && n >= 10 && body.iter().any(u8::is_ascii_digit) {
                push(Class::SlackToken, s..e + 2 + n);
            }
        }
        Trigger::SlackApp => {
            let n = run_len(text, e, 256, |b| is_alnum(b) || b == b'-');
            if left_bound(text, s) && n >= 20 {
                push(Class::SlackToken, s..e + n);
            }
        }
        Trigger::SlackHook => slack_hook(text, s, e, &mut push),
        Trigger::SkDash => {
            if !left_bound(text, s) {
                return;
            }
            if text[e..].starts_with(b"ant-") {
                let n = run_len(text, e + 4, 512, is_b64url);
                if n >= 32 && looks_random(&text[e + 4..e + 4 + n]) {
                    push(Class::AnthropicKey, s..e + 4 + n);
                }
                return;
            }
            let n = run_len(text, e, 512, is_b64url);
            if n >= 20 && looks_random(&text[e..e + n]) && ab(e + n, is_alnum) {
                push(Class::OpenaiKey, s..e + n);
            }
        }
        Trigger::Stripe => {
            let rest = &text[e..];
            let k = if rest.starts_with(b"live_") || rest.starts_with(b"test_") {
                5
            } else {
                return;
            };
            let n = run_len(text, e + k, 256, is_alnum);
            if left_bound(text, s) && n >= 20 && ab(e + k + n, is_b64url) {
                push(Class::StripeKey, s..e + k + n);
            }
        }
        Trigger::Pem => {
            if let Some((end, gcp)) = pem(text, s, e) {
                push(
                    if gcp {
                        Class::GcpKey
                    } else {
                        Class::PrivateKey
                    },
                    s..end,
                );
            }
        }
        Trigger::Jwt => {
            if s > 0 && is_b64url(text[s - 1]) && !escaped_letter(text, s - 1) {
                return;
            }
            let h = run_len(text, s, 4096, is_b64url);
            let p0 = s + h + 1;
            if h < 10 || at(text, s + h) != b'.' || !text[p0..].starts_with(b"eyJ") {
                return;
            }
            let p = run_len(text, p0, 65536, is_b64url);
            if p < 10 || at(text, p0 + p) != b'.' {
                return;
            }
            let sig = run_len(text, p0 + p + 1, 4096, is_b64url);
            push(Class::Jwt, s..p0 + p + 1 + sig);
        }
        Trigger::Azure => {
            let n = run_len(text, e, 512, is_b64);
            let pad = run_len(text, e + n, 2, |b| b == b'=');
            if n >= 40 && looks_random(&text[e..e + n]) {
                push(Class::AzureKey, e..e + n + pad);
            }
        }
        Trigger::UrlCreds => {
            if let Some(r) = url_password(text, e) {
                push(Class::Secret, r);
            }
        }
        Trigger::BasicAuth => {
            let from = s.saturating_sub(24);
            let header = text[from..s]
                .windows(13)
                .any(|w| w.eq_ignore_ascii_case(b"authorization"));
            let n = run_len(text, e, 1024, is_b64);
            let pad = run_len(text, e + n, 2, |b| b == b'=');
            if header && n >= 8 && !is_alnum(at(text, e + n + pad)) {
                push(Class::Secret, e..e + n + pad);
            }
        }
        Trigger::Keyword { lead } => {
            if s == 0 || !text[s - 1].eq_ignore_ascii_case(&lead) {
                return;
            }
            keyword_secret(text, s - 1, e, &mut push);
        }
    }
}

/// The password of `user:password@` right after `://` at `e`. Template values (`${PASS}`,
/// `<password>`, `****`) and very short ones are left alone.
fn url_password(text: &[u8], e: usize) -> Option<Range<usize>> {
    let userinfo = |b: u8| is_alnum(b) || b"._~%!$&'*+,;=:-".contains(&b);
    let n = run_len(text, e, 256, userinfo);
    if at(text, e + n) != b'@' {
        return None;
    }
    let colon = text[e..e + n].iter().position(|&b| b == b':')?;
    let pw = e + colon + 1..e + n;
    let v = &text[pw.clone()];
    let template = v.first().is_some_and(|b| b"$<{*".contains(b))
        || v.iter().all(|&b| b == b'*' || b == b'x' || b == b'X');
    (v.len() >= 6 && !template).then_some(pw)
}

/// `https://hooks.slack.com/services/T.../B.../...` (also `/workflows/`, `/triggers/`).
fn slack_hook(text: &[u8], s: usize, e: usize, push: &mut impl FnMut(Class, Range<usize>)) {
    let rest = &text[e..];
    let k = [&b"/services/"[..], b"/workflows/", b"/triggers/"]
        .iter()
        .find(|p| rest.starts_with(p))
        .map(|p| p.len());
    let Some(k) = k else { return };
    let n = run_len(text, e + k, 256, |b| is_alnum(b) || b == b'/' || b == b'_');
    let path = &text[e + k..e + k + n];
    if n < 20 || path.iter().filter(|&&b| b == b'/').count() < 2 {
        return;
    }
    let start = if preceded_by_ci(text, s, b"https://") {
        s - 8
    } else if preceded_by_ci(text, s, b"http://") {
        s - 7
    } else {
        s
    };
    push(Class::SlackToken, start..e + k + n);
}

/// A PEM private key from `-----BEGIN` at `s`: through its `-----END ... PRIVATE KEY-----`, or,
/// when cut off, through the last base64 line. Line breaks may be real or JSON-escaped (`\n`,
/// and `\\n` for a service-account file pasted into a prompt). `true` when the key is the
/// `private_key` of a GCP service-account JSON.
fn pem(text: &[u8], s: usize, e: usize) -> Option<(usize, bool)> {
    let mut i = e;
    if at(text, i) != b' ' {
        return None;
    }
    i += 1;
    let label = run_len(text, i, 40, |b| b.is_ascii_uppercase() || b == b' ');
    let label_s = &text[i..i + label];
    if !(label_s.ends_with(b"PRIVATE KEY") || label_s.ends_with(b"PRIVATE KEY BLOCK")) {
        return None;
    }
    i += label;
    if !text[i..].starts_with(b"-----") {
        return None;
    }
    i += 5;
    let mut last = i;
    // Body: base64 lines, `Key: value` headers of legacy encrypted keys, separators.
    loop {
        let sep = pem_sep(text, i);
        i += sep;
        if text[i..].starts_with(b"-----END ") {
            let l = run_len(text, i + 9, 40, |b| b.is_ascii_uppercase() || b == b' ');
            let j = i + 9 + l;
            if text[j..].starts_with(b"-----") {
                last = j + 5;
            }
            break;
        }
        let n = run_len(text, i, 4096, |b| is_b64(b) || b == b'=');
        if n == 0 {
            let h = run_len(text, i, 128, |b| {
                is_alnum(b) || matches!(b, b'-' | b':' | b',' | b' ')
            });
            if h == 0 || !text[i..i + h].contains(&b':') {
                break;
            }
            i += h;
            last = i;
            continue;
        }
        i += n;
        last = i;
    }
    let gcp = {
        let from = s.saturating_sub(24);
        let window = &text[from..s];
        window.windows(11).any(|w| w == b"private_key")
    };
    Some((last, gcp))
}

/// Length of a line-break run at `i`: real whitespace or JSON escapes of it (`\n`, `\\n`).
fn pem_sep(text: &[u8], i: usize) -> usize {
    let mut j = i;
    loop {
        match at(text, j) {
            b'\n' | b'\r' | b' ' | b'\t' => j += 1,
            b'\\' => {
                let k = run_len(text, j, 8, |b| b == b'\\');
                if matches!(at(text, j + k), b'n' | b'r' | b't') {
                    j += k + 1;
                } else {
                    return j - i;
                }
            }
            _ => return j - i,
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    is_alnum(b) || b"+/=_-.~!@#$%^&*?|".contains(&b)
}

/// The secret after a key word spanning `ks..ke`: skip the rest of the identifier
/// (`password_hash`, `tokenizer`), then separators (`"`, `:`, `=`, spaces, escapes, "is"), then
/// take one token. It counts as a secret when it is at least 16 bytes, mixes letters and
/// digits, has at least 3.0 bits of Shannon entropy per byte and is not a call
/// (`Tokenizer.from_pretrained(`).
/// A 40-byte base64 token after an AWS word is an AWS secret access key instead.
fn keyword_secret(text: &[u8], ks: usize, ke: usize, push: &mut impl FnMut(Class, Range<usize>)) {
    let ident = run_len(text, ke, 32, |b| is_alnum(b) || b == b'_' || b == b'-');
    let ident_end = ke + ident;
    let mut i = ident_end;
    let limit = i + 16;
    let mut saw_sep = false;
    while i < limit {
        match at(text, i) {
            b' ' | b'\t' | b'"' | b'\'' | b'`' | b':' | b'=' | b'>' => i += 1,
            b'\\' if matches!(at(text, i + 1), b'n' | b't' | b'r' | b'"' | b'\\') => i += 2,
            b'i' | b'I'
                if at(text, i + 1).eq_ignore_ascii_case(&b's') && at(text, i + 2) == b' ' =>
            {
                i += 3
            }
            _ => break,
        }
        saw_sep = true;
    }
    if !saw_sep {
        return;
    }
    let n = run_len(text, i, 256, is_token_byte);
    let tok = &text[i..i + n];
    if n < 16 || n == 256 || matches!(at(text, i + n), b'(' | b'[') {
        return;
    }
    let aws_word = {
        let from = ks.saturating_sub(16);
        let ctx = &text[from..ident_end];
        ctx.windows(3).any(|w| w.eq_ignore_ascii_case(b"aws"))
            || ctx.windows(6).any(|w| w.eq_ignore_ascii_case(b"access"))
    };
    if n == 40 && aws_word && tok.iter().all(|&b| is_b64(b)) && looks_random(tok) {
        push(Class::AwsKey, i..i + n);
        return;
    }
    let (lo, up, dg, _) = classes(tok);
    if (lo || up) && dg && entropy(tok) >= 3.0 {
        push(Class::Secret, i..i + n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<(Class, &str)> {
        let ac =
            aho_corasick::AhoCorasick::new(triggers(ClassSet::all()).iter().map(|t| t.0)).unwrap();
        let trig = triggers(ClassSet::all());
        let mut out = Vec::new();
        for m in ac.find_iter(text) {
            check(
                trig[m.pattern().as_usize()].1,
                text.as_bytes(),
                m.start(),
                m.end(),
                ClassSet::all(),
                &mut out,
            );
        }
        out.into_iter().map(|(c, r)| (c, &text[r])).collect()
    }

    #[test]
    fn key_shapes() {
        let aws = "AKIAIOSFODNN7EXAMPLE";
        assert_eq!(run(&format!("id {aws} x")), vec![(Class::AwsKey, aws)]);
        assert_eq!(run("AKIAIOSFODNN7EXAMPLEX"), vec![]);
        let gh = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
        assert_eq!(run(gh), vec![(Class::GithubToken, gh)]);
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(run(jwt)[0], (Class::Jwt, jwt));
        assert_eq!(run("risk-assessment-and-mitigation-plan"), vec![]);
        assert_eq!(run("sk-learn"), vec![]);
    }

    #[test]
    fn keyword_secrets() {
        assert_eq!(
            run(r#"password: "Xk9#mP2$vL7qR4wZ""#),
            vec![(Class::Secret, "Xk9#mP2$vL7qR4wZ")]
        );
        assert_eq!(run("password: correcthorsebatterystaple"), vec![]);
        assert_eq!(run("tokenizer = AutoTokenizer2.from_pretrained(x)"), vec![]);
        let k = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert_eq!(
            run(&format!("aws_secret_access_key = {k}")),
            vec![(Class::AwsKey, k)]
        );
    }

    #[test]
    fn pem_in_json_escapes() {
        let t = r#"{\"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\nkqhkiG9w0B\\n-----END PRIVATE KEY-----\\n\"}"#;
        let got = run(t);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Class::GcpKey);
        assert!(got[0].1.ends_with("END PRIVATE KEY-----"));
    }
}
