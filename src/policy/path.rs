//! Argument paths (`args.a.0.b`) and the per-tool plan of which arguments to read.

use crate::value::ArgValue;

/// One step of an argument path: an object key, which also indexes arrays when numeric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub key: Box<str>,
    pub index: Option<usize>,
}

impl Segment {
    fn new(key: &str) -> Segment {
        let canonical = key == "0" || (!key.starts_with('0') && !key.is_empty());
        let index = if canonical && key.bytes().all(|b| b.is_ascii_digit()) {
            key.parse().ok()
        } else {
            None
        };
        Segment {
            key: key.into(),
            index,
        }
    }
}

/// A compiled `path` such as `args.amount`: where in a tool call's arguments to look.
#[derive(Debug, Clone)]
pub(crate) struct ArgPath {
    text: Box<str>,
    segments: Box<[Segment]>,
}

impl ArgPath {
    /// Parses `args`, `args.a`, `args.items.0.price`.
    pub fn parse(text: &str) -> Result<ArgPath, String> {
        let mut parts = text.split('.');
        if parts.next() != Some("args") {
            return Err(format!(
                "path `{text}` must start with `args` (for example `args.amount`)"
            ));
        }
        let mut segments = Vec::new();
        for part in parts {
            if part.is_empty() {
                return Err(format!("path `{text}` has an empty segment"));
            }
            segments.push(Segment::new(part));
        }
        Ok(ArgPath {
            text: text.into(),
            segments: segments.into(),
        })
    }

    /// The path as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The value at this path, or `None` when any step is absent (or `null` arguments).
    pub fn lookup<'v>(&self, args: Option<&'v ArgValue>) -> Option<&'v ArgValue> {
        let mut current = args?;
        for segment in self.segments.iter() {
            current = match current {
                ArgValue::Object(map) => map.get(&*segment.key)?,
                ArgValue::Array(items) => items.get(segment.index?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

/// The arguments a policy reads for one tool, as a trie over path segments.
///
/// The decoder walks a tool call's `arguments` with this plan: it keeps what the plan
/// names (checking those objects for duplicate keys) and only validates the rest.
///
/// See the example in the decoder's module docs (`src/jsonrpc/mod.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgPlan {
    root: PlanNode,
    empty: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PlanNode {
    /// The whole value at this node is read (an operator compares it as a whole).
    pub whole: bool,
    pub children: Vec<(Segment, PlanNode)>,
}

impl PlanNode {
    #[inline]
    pub fn child_for_key(&self, key: &str) -> Option<&PlanNode> {
        self.children
            .iter()
            .find(|(segment, _)| &*segment.key == key)
            .map(|(_, node)| node)
    }

    pub fn child_for_index(&self, index: usize) -> Option<&PlanNode> {
        self.children
            .iter()
            .find(|(segment, _)| segment.index == Some(index))
            .map(|(_, node)| node)
    }

    pub fn max_index(&self) -> Option<usize> {
        self.children.iter().filter_map(|(s, _)| s.index).max()
    }
}

impl ArgPlan {
    /// A plan that reads nothing.
    pub fn empty() -> ArgPlan {
        ArgPlan {
            root: PlanNode::default(),
            empty: true,
        }
    }

    /// A plan that reads every argument (used by tests and tools that need all of them).
    pub fn everything() -> ArgPlan {
        ArgPlan {
            root: PlanNode {
                whole: true,
                children: Vec::new(),
            },
            empty: false,
        }
    }

    pub(crate) fn add(&mut self, path: &ArgPath) {
        self.empty = false;
        let mut node = &mut self.root;
        for segment in path.segments() {
            if node.whole {
                return;
            }
            let position = node.children.iter().position(|(s, _)| s == segment);
            let position = match position {
                Some(p) => p,
                None => {
                    node.children.push((segment.clone(), PlanNode::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[position].1;
        }
        node.whole = true;
        node.children.clear();
    }

    /// True when the policy reads no argument of this tool.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    pub(crate) fn root(&self) -> &PlanNode {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_walk_objects_and_arrays() {
        let json = json!({"a": {"b": [10, {"c": "x"}]}, "0": "zero"});
        let args = ArgValue::from(&json);
        let p = |s: &str| ArgPath::parse(s).unwrap();
        assert_eq!(
            p("args.a.b.0").lookup(Some(&args)).map(ArgValue::to_json),
            Some(json!(10))
        );
        assert_eq!(
            p("args.a.b.1.c").lookup(Some(&args)).map(ArgValue::to_json),
            Some(json!("x"))
        );
        assert_eq!(
            p("args.0").lookup(Some(&args)).map(ArgValue::to_json),
            Some(json!("zero"))
        );
        assert_eq!(p("args").lookup(Some(&args)), Some(&args));
        assert_eq!(args, json);
        assert_eq!(p("args.a.b.2").lookup(Some(&args)), None);
        assert_eq!(p("args.a.b.x").lookup(Some(&args)), None);
        assert_eq!(p("args.a.b.0.deeper").lookup(Some(&args)), None);
        assert_eq!(p("args.a").lookup(None), None);
    }

    #[test]
    fn leading_zero_segments_are_keys_only() {
        let args = ArgValue::from(&json!({"items": ["a", "b"]}));
        assert_eq!(
            ArgPath::parse("args.items.01").unwrap().lookup(Some(&args)),
            None
        );
    }

    #[test]
    fn bad_paths_are_rejected() {
        assert!(
            ArgPath::parse("amount")
                .unwrap_err()
                .contains("must start with `args`")
        );
        assert!(
            ArgPath::parse("args..a")
                .unwrap_err()
                .contains("empty segment")
        );
        assert!(
            ArgPath::parse("args.")
                .unwrap_err()
                .contains("empty segment")
        );
    }

    #[test]
    fn plan_merges_paths_and_whole_values_absorb_children() {
        let mut plan = ArgPlan::empty();
        plan.add(&ArgPath::parse("args.a.b").unwrap());
        plan.add(&ArgPath::parse("args.a.c").unwrap());
        plan.add(&ArgPath::parse("args.d").unwrap());
        let a = plan.root().child_for_key("a").unwrap();
        assert!(!a.whole);
        assert_eq!(a.children.len(), 2);
        plan.add(&ArgPath::parse("args.a").unwrap());
        let a = plan.root().child_for_key("a").unwrap();
        assert!(a.whole && a.children.is_empty());
        plan.add(&ArgPath::parse("args.a.z").unwrap());
        assert!(plan.root().child_for_key("a").unwrap().children.is_empty());
    }
}
