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

impl Glob {
    /// The literal text before the first `*`.
    fn prefix(&self) -> &str {
        &self.parts[0]
    }

    /// The literal text after the last `*`.
    fn suffix(&self) -> &str {
        self.parts.last().expect("split yields one part")
    }
}

/// Many patterns, matched at a cost that does not grow with their number.
///
/// Each pattern is indexed by its longest literal end: the text before its first `*` in
/// a trie walked forward over the name, or the text after its last `*` in a trie walked
/// backward. A name's walk visits only the patterns whose indexed end it starts (or
/// ends) with, so 1,000 `vendor_*` patterns cost a walk of the name plus the one or two
/// that share its prefix. Patterns with neither end (`*`, `*x*`) are few by nature and
/// are checked one by one. Among the patterns that match, the lowest index wins: the
/// caller orders them by precedence.
#[derive(Debug, Clone, Default)]
pub(crate) struct GlobSet {
    globs: Vec<Glob>,
    forward: Trie,
    backward: Trie,
    /// Patterns with no literal at either end.
    unanchored: Vec<u32>,
}

/// A byte trie whose nodes list the patterns indexed at them.
#[derive(Debug, Clone, Default)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Children by byte, sorted.
    children: Vec<(u8, u32)>,
    /// Patterns whose indexed text ends here.
    globs: Vec<u32>,
    /// When this node has one child: the bytes of the chain of single children that
    /// follows, up to the first node with patterns or another number of children
    /// (`run_end`). A walk compares them in one go instead of visiting each node.
    run: Box<[u8]>,
    run_end: u32,
}

impl Node {
    /// The child for `byte`: most nodes have one child or a few, which a scan finds
    /// sooner than a binary search.
    #[inline]
    fn child(&self, byte: u8) -> Option<u32> {
        if self.children.len() <= 16 {
            return self
                .children
                .iter()
                .find(|&&(b, _)| b == byte)
                .map(|&(_, next)| next);
        }
        let i = self
            .children
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()?;
        Some(self.children[i].1)
    }
}

impl Trie {
    fn insert(&mut self, text: impl Iterator<Item = u8>, glob: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut at = 0usize;
        for byte in text {
            let children = &self.nodes[at].children;
            at = match children.binary_search_by_key(&byte, |&(b, _)| b) {
                Ok(i) => children[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes[at].children.insert(i, (byte, next as u32));
                    self.nodes.push(Node::default());
                    next
                }
            };
        }
        self.nodes[at].globs.push(glob);
    }

    /// Records every node's run of single children (see [`Node::run`]), once all
    /// patterns are in.
    fn compress(&mut self) {
        for i in 0..self.nodes.len() {
            let mut run = Vec::new();
            let mut at = i;
            while let [(byte, next)] = self.nodes[at].children[..] {
                run.push(byte);
                at = next as usize;
                if !self.nodes[at].globs.is_empty() {
                    break;
                }
            }
            self.nodes[i].run = run.into();
            self.nodes[i].run_end = u32::try_from(at).expect("fewer than 2^32 nodes");
        }
    }

    /// Calls `visit` with every pattern indexed at a node along `text`'s path. The
    /// nodes inside a run have no patterns, so a run is matched whole or the walk ends.
    fn walk(&self, mut text: impl Iterator<Item = u8>, mut visit: impl FnMut(u32)) {
        let Some(root) = self.nodes.first() else {
            return;
        };
        root.globs.iter().for_each(|&g| visit(g));
        let mut at = root;
        loop {
            let next = if at.run.is_empty() {
                let Some(next) = text.next().and_then(|byte| at.child(byte)) else {
                    return;
                };
                next
            } else {
                if !at.run.iter().all(|&byte| text.next() == Some(byte)) {
                    return;
                }
                at.run_end
            };
            at = &self.nodes[next as usize];
            at.globs.iter().for_each(|&g| visit(g));
        }
    }
}

impl GlobSet {
    /// The set of `globs`, whose order is their precedence (first wins).
    pub fn new(globs: Vec<Glob>) -> GlobSet {
        let mut set = GlobSet {
            globs: Vec::new(),
            forward: Trie::default(),
            backward: Trie::default(),
            unanchored: Vec::new(),
        };
        for (i, glob) in globs.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 patterns");
            let (prefix, suffix) = (glob.prefix(), glob.suffix());
            if prefix.is_empty() && suffix.is_empty() {
                set.unanchored.push(i);
            } else if prefix.len() >= suffix.len() {
                set.forward.insert(prefix.bytes(), i);
            } else {
                set.backward.insert(suffix.bytes().rev(), i);
            }
        }
        set.forward.compress();
        set.backward.compress();
        set.globs = globs;
        set
    }

    pub fn len(&self) -> usize {
        self.globs.len()
    }

    /// The index of the first pattern (in precedence order) that matches `name`.
    pub fn first_match(&self, name: &str) -> Option<usize> {
        let mut best: Option<u32> = None;
        let mut check = |i: u32| {
            if best.is_none_or(|b| i < b) && self.globs[i as usize].is_match(name) {
                best = Some(i);
            }
        };
        self.forward.walk(name.bytes(), &mut check);
        self.backward.walk(name.bytes().rev(), &mut check);
        self.unanchored.iter().for_each(|&i| check(i));
        best.map(|i| i as usize)
    }

    /// Whether any pattern matches `name`.
    pub fn is_match(&self, name: &str) -> bool {
        self.first_match(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::{Glob, GlobSet};

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

    fn set(patterns: &[&str]) -> GlobSet {
        GlobSet::new(patterns.iter().map(|p| Glob::new(p).unwrap()).collect())
    }

    #[test]
    fn the_set_finds_the_first_matching_pattern_like_a_scan() {
        let patterns = [
            "binance_us_*",
            "binance_*",
            "*_key",
            "*_listen_*",
            "a*b*c",
            "*",
            "*get*",
            "x*",
            "*x",
            "bin*key",
        ];
        let names = [
            "binance_us_close_listen_key",
            "binance_get",
            "close_listen_key",
            "abc",
            "",
            "x",
            "get",
            "bin",
            "binkey",
            "axxbyyc",
            "zzz_listen_zzz",
            "xylophone",
        ];
        // Every order of precedence agrees with a plain scan for a few rotations.
        for rotation in 0..patterns.len() {
            let mut order: Vec<&str> = patterns.to_vec();
            order.rotate_left(rotation);
            let globs: Vec<Glob> = order.iter().map(|p| Glob::new(p).unwrap()).collect();
            let set = GlobSet::new(globs.clone());
            for name in names {
                let scan = globs.iter().position(|g| g.is_match(name));
                assert_eq!(set.first_match(name), scan, "{name:?} under {order:?}");
            }
        }
    }

    #[test]
    fn a_thousand_prefixes_visit_only_their_own_branch() {
        let patterns: Vec<String> = (0..1000).map(|i| format!("vendor{i:04}_*")).collect();
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let set = set(&refs);
        assert_eq!(set.first_match("vendor0420_get_price"), Some(420));
        assert_eq!(set.first_match("vendor9999_get_price"), None);
        assert!(!set.is_match("other"));
        assert!(set.unanchored.is_empty());
    }

    proptest::proptest! {
        /// The set agrees with a scan in precedence order, for any patterns and name.
        #[test]
        fn the_set_agrees_with_a_scan(
            patterns in proptest::collection::vec("[ab*]{0,5}", 1..12),
            name in "[ab]{0,7}",
        ) {
            let globs: Vec<Glob> = patterns.iter().filter_map(|p| Glob::new(p)).collect();
            let scan = globs.iter().position(|g| g.is_match(&name));
            proptest::prop_assert_eq!(GlobSet::new(globs).first_match(&name), scan);
        }
    }
}
