//! Maps byte offsets in the config text to line numbers and dotted key paths, so that every
//! parse or validation error can say "line N, key `a.b`" (toml's own errors carry only a span).

use toml_edit::{ImDocument, Item, TableLike, Value};

/// 1-based line number of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The parsed document, kept only to find keys again; `None` when the text is not TOML at all
/// (the syntax error then carries its own line).
pub(crate) struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// The deepest key whose name or value covers `offset`.
    pub(crate) fn key_at(&self, offset: usize) -> Option<String> {
        let doc = self.doc.as_ref()?;
        let mut path = Vec::new();
        if find_in_table(doc.as_table(), offset, &mut path) {
            Some(path.join("."))
        } else {
            None
        }
    }

    /// The line where `path` (dotted) is written: its key, or for a table its header.
    pub(crate) fn line_of_key(&self, path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut table: &dyn TableLike = doc.as_table();
        let mut span = None;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (key, item) = table.get_key_value(part)?;
            span = key.span().or_else(|| item.span());
            if i + 1 < parts.len() {
                table = item.as_table_like()?;
            }
        }
        span.map(|s| line_of(self.text, s.start))
    }
}

fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn find_in_table(table: &dyn TableLike, offset: usize, path: &mut Vec<String>) -> bool {
    for (name, item) in table.iter() {
        path.push(name.to_string());
        if let Some((key, _)) = table.get_key_value(name) {
            if covers(key.span(), offset) {
                return true;
            }
        }
        let found = match item {
            Item::Table(t) => find_in_table(t, offset, path) || covers(t.span(), offset),
            Item::Value(v) => find_in_value(v, offset, path),
            Item::ArrayOfTables(a) => a.iter().any(|t| find_in_table(t, offset, path)),
            Item::None => false,
        };
        if found {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &Value, offset: usize, path: &mut Vec<String>) -> bool {
    if let Value::InlineTable(t) = value {
        if find_in_table(t, offset, path) {
            return true;
        }
    }
    covers(value.span(), offset)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_keys_and_lines() {
        let text = "a = 1\n[t]\nb = \"x\"\n[t.u]\nc = { d = 2 }\n";
        let loc = Locator::new(text);
        let at = |s: &str| text.find(s).unwrap();
        assert_eq!(loc.key_at(at("1")).as_deref(), Some("a"));
        assert_eq!(loc.key_at(at("\"x\"")).as_deref(), Some("t.b"));
        assert_eq!(loc.key_at(at("2")).as_deref(), Some("t.u.c.d"));
        assert_eq!(loc.line_of_key("t.b"), Some(3));
        assert_eq!(loc.line_of_key("t.u"), Some(4));
        assert_eq!(loc.line_of_key("t.u.c"), Some(5));
        assert_eq!(line_of(text, 0), 1);
    }
}
