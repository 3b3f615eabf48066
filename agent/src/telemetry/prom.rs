//! A small reader of the Prometheus text exposition format (version 0.0.4), enough to pull a
//! handful of gauges out of an inference engine's `/metrics`.
//!
//! Why our own: the replica scraper needs three or four numbers per replica, summed over label
//! sets; a full client library would be a large dependency for that. What it handles: `# HELP`,
//! `# TYPE` and other comments, blank lines, samples with or without labels, quoted label values
//! with escapes (`\"`, `\\`, `\n`) that may hold `}`, `,`, `#` or spaces, `NaN`, `+Inf`, `-Inf`,
//! and an optional timestamp. What it never does: allocate per sample (names and values are
//! borrowed), or fail on a line it does not understand (it is skipped; a replica's other metrics
//! must not hide the ones we want). Runs on the control-plane telemetry thread only.

/// One sample: the metric name, its raw label block (without braces) and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: &'a str,
    pub value: f64,
}

/// The samples of `text`, in order; lines that are not samples are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(parse_line)
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Parses one sample line; `None` for comments, blank lines and anything malformed.
fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let bytes = line.as_bytes();
    let name_end = bytes
        .iter()
        .position(|&c| !is_name_char(c))
        .unwrap_or(bytes.len());
    if name_end == 0 {
        return None;
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = "";
    if rest.starts_with('{') {
        let close = label_block_end(rest)?;
        labels = &rest[1..close];
        rest = &rest[close + 1..];
    }
    // Value, then an optional timestamp.
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next()?)?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Index of the `}` closing a label block that starts at `s[0] == '{'`, honouring quotes and
/// backslash escapes inside label values.
fn label_block_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.bytes().enumerate().skip(1) {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_quotes = false;
            }
        } else if c == b'"' {
            in_quotes = true;
        } else if c == b'}' {
            return Some(i);
        }
    }
    None
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// The value of label `key` in a label block, unescaped; `None` when absent.
pub fn label_value(labels: &str, key: &str) -> Option<String> {
    let mut rest = labels;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return None;
        }
        let eq = rest.find('=')?;
        let k = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in after.char_indices() {
            if escaped {
                value.push(if c == 'n' { '\n' } else { c });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        let end = end?;
        if k == key {
            return Some(value);
        }
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_labels_escapes_and_special_values() {
        let text = "# HELP x_total A help line with {braces} and \"quotes\".\n\
                    # TYPE x_total counter\n\
                    \n\
                    x_total 3\n\
                    x_total{a=\"1\",b=\"q\\\"}, #x\"} 4 1712345678000\n\
                    x_gauge{path=\"C:\\\\tmp\",nl=\"a\\nb\"} NaN\n\
                    x_inf +Inf\n\
                    x_neg{le=\"-Inf\"} -Inf\n\
                    this is not a sample\n\
                    {broken} 1\n\
                    unterminated{a=\"1} 2\n";
        let got: Vec<Sample> = samples(text).collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(
            got[0],
            Sample {
                name: "x_total",
                labels: "",
                value: 3.0
            }
        );
        assert_eq!(got[1].name, "x_total");
        assert_eq!(got[1].value, 4.0);
        assert_eq!(label_value(got[1].labels, "b").as_deref(), Some("q\"}, #x"));
        assert_eq!(label_value(got[1].labels, "a").as_deref(), Some("1"));
        assert_eq!(label_value(got[1].labels, "c"), None);
        assert!(got[2].value.is_nan());
        assert_eq!(
            label_value(got[2].labels, "path").as_deref(),
            Some("C:\\tmp")
        );
        assert_eq!(label_value(got[2].labels, "nl").as_deref(), Some("a\nb"));
        assert_eq!(got[3].value, f64::INFINITY);
        assert_eq!(got[4].value, f64::NEG_INFINITY);
    }
}
