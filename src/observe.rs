//! What the layer reports about its decisions.
//!
//! Log lines carry text that came from requests (tool names, keys, methods). Written
//! raw, a tool name holding `\n` or an ANSI escape could print a forged line below the
//! real one, or rewrite the terminal. [`Escaped`] writes such text with every control
//! character (and the Unicode line separators and bidirectional overrides that can
//! reorder a line) escaped, so one event is always one line and shows what was sent.

use std::fmt::{self, Write};

/// Displays `str` with control characters escaped (`\n`, `\u{1b}`, ...).
pub(crate) struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        fmt::Display::fmt(self, f)?;
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped() {
        let shown = Escaped("a\nb\r\tc\u{1b}[31md\u{7f}\u{9b}e\u{2028}f\u{202e}g").to_string();
        assert_eq!(
            shown,
            "a\\nb\\r\\tc\\u{1b}[31md\\u{7f}\\u{9b}e\\u{2028}f\\u{202e}g"
        );
        assert_eq!(Escaped("plain, ünïcödé ✓").to_string(), "plain, ünïcödé ✓");
    }
}
