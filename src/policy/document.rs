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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Policy"))]
#[cfg_attr(
    feature = "schema",
    schemars(
        title = "tower-mcp-policy policy document",
        description = "A PolicyLayer policy: which MCP tools an agent may call, on what conditions, how often."
    )
)]
#[serde(deny_unknown_fields)]
pub(crate) struct Document {
    /// The JSON Schema the document follows, for editors (`policy.schema.json`); ignored.
    #[serde(rename = "$schema", default)]
    #[allow(dead_code)]
    pub schema: Option<String>,
    /// The format's version: `"1"`.
    #[cfg_attr(feature = "schema", schemars(extend("const" = "1")))]
    pub version: String,
    /// What happens to a tool with no rule under `tools`.
    pub default: DefaultAction,
    /// Tools (names, or patterns with `*`) that agents never see: absent from
    /// `tools/list`, and answered as unknown when called.
    #[serde(default)]
    pub hide: Vec<String>,
    /// A rule every allowed call must also pass.
    #[serde(default)]
    pub all_tools: Option<RuleDoc>,
    /// Rules by tool name, or by pattern with `*` (the most specific pattern wins). A
    /// tool with a rule is allowed when the rule passes. Keys must be unique.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "std::collections::BTreeMap<String, RuleDoc>")
    )]
    pub tools: UniqueMap<RuleDoc>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub(crate) enum DefaultAction {
    Allow,
    Deny,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Rule"))]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDoc {
    /// Items that must all hold, or the call is denied.
    #[serde(default)]
    pub require: Vec<ClauseDoc>,
    /// Items any of which denies the call when it holds.
    #[serde(default)]
    pub deny_if: Vec<ClauseDoc>,
    /// Rate limits: every one must have room, or the call is denied.
    #[serde(default)]
    pub limits: Vec<LimitDoc>,
    /// A person must approve the call (every call, or those `when` matches) before it
    /// runs. Asked only of a call the rest of the rule would let run.
    #[serde(default)]
    pub require_approval: Option<ApprovalDoc>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Approval"))]
#[serde(deny_unknown_fields)]
pub(crate) struct ApprovalDoc {
    /// Items any of which makes the call need approval when it holds (absent: every
    /// call needs it). A condition that cannot be evaluated makes the item hold (fail
    /// closed).
    #[serde(default)]
    pub when: Option<Vec<WhenDoc>>,
    /// How long a request waits for a person, and how long an approval stays usable:
    /// seconds, or `"90s"`, `"10m"`, `"2h"`, `"1d"` (default `"10m"`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "window_schema"))]
    pub timeout: Option<Value>,
    /// What the person who approves reads: why this call needs a person.
    #[serde(default)]
    pub reason: Option<String>,
    /// Whether the client's own user may approve, when the client can ask them
    /// (elicitation; default `true`). `false`: only an operator, through the approvals
    /// API, page or webhook, whatever the client can do.
    #[serde(default)]
    pub ask_in_client: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "When"))]
#[serde(deny_unknown_fields)]
pub(crate) struct WhenDoc {
    /// Conditions that hold together (AND).
    pub conditions: Vec<ConditionDoc>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Clause"))]
#[serde(deny_unknown_fields)]
pub(crate) struct ClauseDoc {
    /// Conditions that hold together (AND). A condition that cannot be evaluated
    /// makes the item deny (fail closed).
    pub conditions: Vec<ConditionDoc>,
    /// The message the agent reads when this item denies a call.
    #[serde(default)]
    pub on_deny: Option<String>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Condition"))]
#[cfg_attr(feature = "schema", schemars(extend("allOf" = [
    { "if": { "properties": { "op": { "enum": ["lt", "lte", "gt", "gte"] } } },
      "then": { "properties": { "value": { "type": "number" } } } },
    { "if": { "properties": { "op": { "enum": ["in", "not_in"] } } },
      "then": { "properties": { "value": { "type": "array" } } } },
    { "if": { "properties": { "op": { "const": "exists" } } },
      "then": { "properties": { "value": { "type": "boolean" } } } },
    { "if": { "properties": { "op": { "const": "regex" } } },
      "then": { "properties": { "value": { "type": "string" } } } }
])))]
#[serde(deny_unknown_fields)]
pub(crate) struct ConditionDoc {
    /// Where in the call: `args`, `args.amount`, `args.items.0.price`.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^args(\.[^.]+)*$")))]
    pub path: String,
    /// The operator.
    pub op: OpDoc,
    /// The operand (kept as written, so numbers are compared exactly). Its type
    /// depends on `op`: a number for `lt`/`lte`/`gt`/`gte`, an array for
    /// `in`/`not_in`, a boolean for `exists`, a string for `regex`.
    #[cfg_attr(feature = "schema", schemars(with = "serde_json::Value"))]
    pub value: Box<RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Operator"))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Limit"))]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitDoc {
    /// The counter's name. Limits naming the same counter share one budget (and must
    /// agree on window, max and scope).
    pub counter: String,
    /// `second`, `minute`, `hour`, `day`, a number of seconds, or `"90s"`, `"15m"`,
    /// `"2h"`, `"1d"`. (Kept as raw JSON: the compiler gives a better message than an
    /// untagged enum would.)
    #[cfg_attr(feature = "schema", schemars(schema_with = "window_schema"))]
    pub window: Value,
    /// Calls (or cost units) per window, which is also the largest burst.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 4_294_967_295u64)))]
    pub max: u64,
    /// Whose calls count together (default `grant`).
    #[serde(default)]
    pub scope: Option<ScopeDoc>,
    /// Charge the value of this argument (rounded up) instead of 1: `args.quantity`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^args(\.[^.]+)*$")))]
    pub increment_from: Option<String>,
    /// The message the agent reads when this limit denies a call.
    #[serde(default)]
    pub on_deny: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Scope"))]
#[serde(rename_all = "lowercase")]
pub(crate) enum ScopeDoc {
    Grant,
    Session,
    Global,
}

/// The schema of a limit's `window`.
#[cfg(feature = "schema")]
fn window_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "oneOf": [
            { "type": "integer", "minimum": 1, "description": "seconds" },
            { "type": "string", "pattern": "^(second|minute|hour|day|[0-9]*[1-9][0-9]*[smhd])$" }
        ]
    })
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
