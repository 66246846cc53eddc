//! Showing values that came from partners (user ids, devices, justifications, roles,
//! organisations) on an operator's terminal: every character that could end a line, move the
//! cursor, start an escape sequence or reorder text is written as a visible `\u{…}` escape, and
//! a backslash as `\\`, so one field can never forge another line or rewrite the screen.

/// `text` with control, line-separator and bidirectional-formatting characters escaped.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Zero-width, line/paragraph separators and bidirectional overrides (Unicode Cf/Zl/Zp that
/// terminals render invisibly or use to reorder what follows).
fn is_invisible_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD | 0x061C | 0x180E | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0xFEFF
            | 0xFFF9..=0xFFFB
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_that_moves_the_terminal_survives() {
        let nasty = "dr\nfake line\r\x1b[2J\x1b]0;title\x07\u{9b}31m\u{202e}evil\u{2028}x\\n";
        let shown = escape_text(nasty);
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() || is_invisible_format(c)),
            "{shown:?}"
        );
        assert_eq!(
            shown,
            "dr\\nfake line\\r\\u{1b}[2J\\u{1b}]0;title\\u{7}\\u{9b}31m\\u{202e}evil\\u{2028}x\\\\n"
        );
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for text in [
            "555021935107",
            "R8000",
            "Dr Émile O'Brien",
            "tablet-7 {\"a\":1}",
        ] {
            assert_eq!(escape_text(text), text);
        }
    }
}
