//! Tool-name patterns: `*` matches any run of characters, everything else is literal.

/// A compiled tool-name pattern such as `binance_*`.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    parts: Box<[Box<str>]>,
    literal_len: usize,
}

impl Glob {
    /// Returns `None` when `pattern` has no `*` (it is then an exact name).
    pub fn new(pattern: &str) -> Option<Glob> {
        if !pattern.contains('*') {
            return None;
        }
        let parts: Box<[Box<str>]> = pattern.split('*').map(Into::into).collect();
        let literal_len = parts.iter().map(|p| p.chars().count()).sum();
        Some(Glob { parts, literal_len })
    }

    /// How many literal (non-`*`) characters the pattern has: more is more specific.
    pub fn literal_len(&self) -> usize {
        self.literal_len
    }

    pub fn is_match(&self, name: &str) -> bool {
        let (first, rest) = self.parts.split_first().expect("split yields one part");
        let Some(mut remaining) = name.strip_prefix(&**first) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return remaining.is_empty();
        };
        for part in middle {
            match remaining.find(&**part) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(&**last)
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).unwrap().is_match(name)
    }

    #[test]
    fn star_matches_any_run() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("binance_*", "binance_us_close_listen_key"));
        assert!(m("binance_*", "binance_"));
        assert!(!m("binance_*", "binanc"));
        assert!(m("*_key", "close_listen_key"));
        assert!(!m("*_key", "close_listen_keys"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxcyyb"));
        assert!(m("a*a", "aa"));
        assert!(!m("a*a", "a"));
        assert!(m("*get*", "binance_get_price"));
    }

    #[test]
    fn literal_length_counts_characters() {
        assert_eq!(Glob::new("binance_*").unwrap().literal_len(), 8);
        assert_eq!(Glob::new("*").unwrap().literal_len(), 0);
        assert!(Glob::new("exact").is_none());
    }
}
