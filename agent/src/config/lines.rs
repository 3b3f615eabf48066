//! Maps a field path (`providers[1].base_url`) to its line in the YAML source, so validation
//! errors can say where the problem is. Built once per load from yaml-rust2's marked events.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Path → 1-based line of the key (for mappings) or the item (for sequences).
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    pub fn build(src: &str) -> LineIndex {
        let mut rx = Receiver::default();
        let mut parser = Parser::new_from_str(src);
        // A syntax error is reported by serde_yaml with its own position; the index just stays partial.
        let _ = parser.load(&mut rx, false);
        LineIndex { lines: rx.lines }
    }

    /// Line of `path`, or of its closest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Receiver {
    /// The path of the value about to be read, and advances the parent's position.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Map { path, key } => key.take().map(|k| join(path, &k)),
            Frame::Seq { path, index } => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }

    /// True when the next scalar in the current mapping is a key.
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                if self.expecting_key() {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        let p = join(path, &value);
                        self.lines.insert(p, line);
                        *key = Some(value);
                    }
                } else if let Some(p) = self.next_value_path() {
                    self.lines.entry(p).or_insert(line);
                }
            }
            Event::MappingStart(..) => {
                let path = if self.stack.is_empty() {
                    String::new()
                } else {
                    self.next_value_path().unwrap_or_default()
                };
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.next_value_path().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_lines() {
        let src = "listen: 1.2.3.4:1\nproviders:\n  - name: a\n    kind: openai\n  - name: b\n    base_url: x\nmodels: []\n";
        let idx = LineIndex::build(src);
        assert_eq!(idx.line_of("listen"), Some(1));
        assert_eq!(idx.line_of("providers"), Some(2));
        assert_eq!(idx.line_of("providers[0].kind"), Some(4));
        assert_eq!(idx.line_of("providers[1].base_url"), Some(6));
        // A missing field falls back to its parent item.
        assert_eq!(idx.line_of("providers[1].kind"), Some(5));
        assert_eq!(idx.line_of("models"), Some(7));
    }
}
