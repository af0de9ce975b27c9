//! The serde model of a policy document, exactly as written (stage 1 of 2).
//!
//! Nothing here is validated beyond its JSON shape: [`super::compile`] turns a
//! [`Document`] into a [`super::Policy`], and only the compiled form ever sees a request.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Document {
    pub version: String,
    pub default: DefaultAction,
    #[serde(default)]
    pub hide: Vec<String>,
    #[serde(default)]
    pub all_tools: Option<RuleDoc>,
    #[serde(default)]
    pub tools: UniqueMap<RuleDoc>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DefaultAction {
    Allow,
    Deny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDoc {
    #[serde(default)]
    pub require: Vec<ClauseDoc>,
    #[serde(default)]
    pub deny_if: Vec<ClauseDoc>,
    #[serde(default)]
    pub limits: Vec<LimitDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClauseDoc {
    pub conditions: Vec<ConditionDoc>,
    #[serde(default)]
    pub on_deny: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConditionDoc {
    pub path: String,
    pub op: OpDoc,
    /// Kept as written, so numbers are compared exactly.
    pub value: Box<RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OpDoc {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    NotIn,
    Exists,
    Regex,
    Contains,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitDoc {
    pub counter: String,
    /// Kept as raw JSON: it is a keyword, a number of seconds or a `"90s"` string, and
    /// the compiler gives a better message than an untagged enum would.
    pub window: Value,
    pub max: u64,
    #[serde(default)]
    pub scope: Option<ScopeDoc>,
    #[serde(default)]
    pub increment_from: Option<String>,
    #[serde(default)]
    pub on_deny: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ScopeDoc {
    Grant,
    Session,
    Global,
}

/// A JSON object kept in document order that refuses duplicate keys.
///
/// `serde_json` would silently keep the last of two `"transfer"` rules; a policy must not
/// depend on which one a parser keeps.
#[derive(Debug)]
pub(crate) struct UniqueMap<V>(pub Vec<(String, V)>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UniqueMapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueMapVisitor<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
                    }
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(UniqueMap(entries))
            }
        }

        deserializer.deserialize_map(UniqueMapVisitor(PhantomData))
    }
}
