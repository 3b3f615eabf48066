//! Report rows as an aligned text table, CSV or JSON: the one renderer of every `tollgate
//! report` and of the FOCUS CSV's fields.

use super::query::Format;

/// `rows` as JSON (their own serialisation), or their `cells` under `headers` as CSV or a table.
pub fn render<T: serde::Serialize>(
    format: Format,
    rows: &[T],
    headers: &[&str],
    cells: &[Vec<String>],
) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into()),
        Format::Csv => csv(headers, cells),
        Format::Table => table(headers, cells),
    }
}

/// A CSV field, quoted when it must be.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `headers` then `rows`, comma-separated.
pub fn csv(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = headers.join(",");
    out.push('\n');
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| field(c)).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// A header line, a rule, and the rows: the first column left-aligned, the others right.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = format!(
            "{:<w$}",
            cols.first().map_or("", |c| c.as_str()),
            w = widths[0]
        );
        for (c, w) in cols.iter().zip(&widths).skip(1) {
            s.push_str(&format!("  {c:>w$}", w = *w));
        }
        s.push('\n');
        s
    };
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = line(&head);
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1)));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_quotes_what_it_must_and_tables_align() {
        let rows = vec![
            vec!["a,b".to_string(), "1".into()],
            vec!["c".into(), "22".into()],
        ];
        assert_eq!(super::csv(&["k", "n"], &rows), "k,n\n\"a,b\",1\nc,22\n");
        assert_eq!(
            super::table(&["k", "n"], &rows),
            "k     n\n-------\na,b   1\nc    22\n"
        );
    }
}
