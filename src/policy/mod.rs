//! Policies: the PolicyLayer document format, validated and compiled once.
//!
//! Loading has two stages with separate types, as in cedar: the serde model of the
//! document ([`document`]) is parsed first, then [`compile`] validates it and builds a
//! [`Policy`]: glob matchers, compiled regexes, argument plans and counter definitions.
//! Requests only ever see the compiled form.

mod compile;
pub(crate) use compile::parse;
pub(crate) mod condition;
pub(crate) mod document;
pub(crate) mod glob;
pub(crate) mod path;
pub(crate) mod window;

use std::collections::HashMap;

/// Exact names to what the policy says of them. A fixed map that requests only read, so
/// a fast hash will do: a name an agent makes up costs one probe however it hashes.
pub(crate) type Names = HashMap<Box<str>, Named, foldhash::fast::RandomState>;
use std::num::NonZeroU32;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::counter::{CounterId, Quota};
use crate::error::PolicyError;
use crate::scope::Scope;
use condition::Condition;
use glob::GlobSet;
use path::ArgPath;
pub use path::ArgPlan;
use window::Window;

/// A validated, compiled policy. Build one with [`Policy::from_file`] or [`str::parse`].
///
/// ```
/// use tower_mcp_policy::Policy;
///
/// let policy: Policy = r#"{ "version": "1", "default": "deny",
///     "hide": ["debug_*"],
///     "tools": { "get_price": {},
///                "transfer": { "limits": [{ "counter": "transfers", "window": "minute",
///                                           "max": 5, "scope": "grant" }] } } }"#.parse()?;
/// assert_eq!(policy.rule_key("transfer"), Some("transfer"));
/// assert!(policy.is_hidden("debug_dump"));
/// assert!(!policy.default_allows());
/// assert_eq!(policy.counters()[0].name(), "transfers");
/// assert!(policy.warnings().is_empty());
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug)]
pub struct Policy {
    default_allow: bool,
    /// Some rule has `require_approval`.
    pub(crate) asks_approval: bool,
    /// Exact names, hidden or governed by a rule: one hash per lookup.
    names: Names,
    hidden_patterns: GlobSet,
    /// How many `hide` entries there are (names and patterns).
    hidden_count: usize,
    all_tools: Option<Rule>,
    /// Sorted by precedence: most literal characters first, then by key.
    patterns: GlobSet,
    /// The rule (index into `tools`) of each pattern, in the same order.
    pattern_rules: Vec<usize>,
    pub(crate) tools: Vec<ToolRule>,
    /// What to read of the arguments of a tool that has no rule of its own (default allow).
    unlisted_plan: ArgPlan,
    counters: Vec<CounterDef>,
    warnings: Vec<PolicyWarning>,
    /// The `hide` entries as written, for explanations.
    pub(crate) hide: Box<[Box<str>]>,
    /// Sixteen hex digits identifying the document's text.
    fingerprint: Box<str>,
}

/// Something in a policy that loads but is probably a mistake; see [`Policy::warnings`].
///
/// ```
/// use tower_mcp_policy::Policy;
///
/// // A rule for a tool that the same policy hides can never apply.
/// let policy: Policy = r#"{ "version": "1", "default": "deny",
///     "hide": ["admin_*"], "tools": { "admin_reset": {} } }"#.parse()?;
/// let warning = &policy.warnings()[0];
/// assert_eq!(warning.pointer(), "/tools/admin_reset");
/// assert!(warning.message().contains("hidden"), "{warning}");
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyWarning {
    pub(crate) pointer: String,
    pub(crate) message: String,
}

impl PolicyWarning {
    /// Where: a JSON Pointer into the document (`/tools/delete_account`).
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// What is probably wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// `/tools/x: this rule never applies: ...`
impl std::fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

/// What the policy says about one exact tool name.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Named {
    hidden: bool,
    rule: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct ToolRule {
    pub key: Box<str>,
    pub rule: Rule,
    /// Arguments read by this rule and by `all_tools`.
    pub plan: ArgPlan,
}

/// The compiled body of a tool rule or of `all_tools`.
#[derive(Debug, Default)]
pub(crate) struct Rule {
    pub deny_if: Vec<Clause>,
    pub require: Vec<Clause>,
    pub limits: Vec<Limit>,
    pub approval: Option<ApprovalRule>,
}

/// A `require_approval` item: which calls need a person's approval, for how long it is
/// waited for and usable, and what the person reads.
#[derive(Debug)]
pub(crate) struct ApprovalRule {
    /// `/tools/transfer/require_approval`.
    pub pointer: Box<str>,
    /// Any item true (or that cannot be evaluated): approval needed. Empty: always.
    pub when: Vec<Clause>,
    pub timeout: std::time::Duration,
    pub reason: Option<Box<str>>,
    /// The client's own user may approve (`ask_in_client`, default true).
    pub in_client: bool,
}

/// One `deny_if` or `require` item.
#[derive(Debug)]
pub(crate) struct Clause {
    pub pointer: Box<str>,
    pub conditions: Vec<Condition>,
    pub on_deny: Option<Box<str>>,
}

/// One `limits` item, pointing at its (possibly shared) counter.
#[derive(Debug)]
pub(crate) struct Limit {
    pub counter: usize,
    pub increment_from: Option<ArgPath>,
    /// What a denial by this limit says, shared with pending charges so they need no
    /// borrow of the policy.
    pub meta: std::sync::Arc<LimitMeta>,
}

/// The text a denial by one limit is built from.
#[derive(Debug)]
pub(crate) struct LimitMeta {
    /// The limit's JSON Pointer, the denial's `rule`.
    pub pointer: Box<str>,
    pub on_deny: Option<Box<str>>,
    /// `30 per minute`.
    pub describe: Box<str>,
}

/// A named counter: `max` calls (or cost units) per `window`, per `scope`.
///
/// All limits that name the same counter share one budget.
///
/// ```
/// use std::time::Duration;
/// use tower_mcp_policy::{Policy, Scope};
///
/// let policy: Policy = r#"{ "version": "1", "default": "deny", "tools": {
///     "buy":  { "limits": [{ "counter": "orders", "window": "minute", "max": 30 }] },
///     "sell": { "limits": [{ "counter": "orders", "window": "minute", "max": 30 }] } } }"#
///     .parse()?;
/// let [orders] = policy.counters() else { panic!("one shared counter") };
/// assert_eq!((orders.name(), orders.window(), orders.max().get()), ("orders", Duration::from_secs(60), 30));
/// assert_eq!(orders.scope(), Scope::Grant);
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterDef {
    name: Box<str>,
    window: Window,
    max: NonZeroU32,
    scope: Scope,
    id: CounterId,
}

impl CounterDef {
    pub(crate) fn new(name: &str, window: Window, max: NonZeroU32, scope: Scope) -> CounterDef {
        let quota = Quota::new(max, Duration::from_secs(window.seconds));
        CounterDef {
            name: name.into(),
            window,
            max,
            scope,
            id: CounterId::new(name, quota, scope),
        }
    }

    /// The counter now belongs to the policy named `policy` in a set of grants.
    fn place_in(&mut self, policy: &str) {
        let quota = self.quota();
        self.id = CounterId::new(&self.name, quota, self.scope).in_policy(policy);
    }

    /// The counter's identity: the same name and definition give the same id in any
    /// version of any policy.
    pub fn id(&self) -> CounterId {
        self.id
    }

    /// What the counter allows.
    pub fn quota(&self) -> Quota {
        Quota::new(self.max, self.window())
    }

    /// The counter's name in the policy.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window.seconds)
    }

    /// The budget per window, which is also the largest burst.
    pub fn max(&self) -> NonZeroU32 {
        self.max
    }

    /// Whose calls share the budget.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// `"30 per minute"`.
    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.max, self.window.describe())
    }
}

/// `orders (30 per minute per grant)`.
impl std::fmt::Display for CounterDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} per {})",
            self.name,
            self.describe(),
            self.scope.as_str()
        )
    }
}

/// What the policy says about a tool name before any argument is read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resolved<'p> {
    Hidden,
    NotAllowed,
    Rules(Option<&'p ToolRule>),
}

impl Policy {
    /// Loads and compiles a policy file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| PolicyError::io(path, &e))?;
        Policy::from_file_bytes(path, bytes)
    }

    /// The policy in `bytes`, read from `path` (which errors name).
    pub(crate) fn from_file_bytes(path: &Path, bytes: Vec<u8>) -> Result<Policy, PolicyError> {
        let text = String::from_utf8(bytes).map_err(|e| {
            let error = std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error());
            PolicyError::io(path, &error)
        })?;
        text.parse::<Policy>().map_err(|e| e.in_file(path))
    }

    /// What the policy says about `tool`, before arguments.
    pub(crate) fn resolve(&self, tool: &str) -> Resolved<'_> {
        let named = self.names.get(tool).copied().unwrap_or_default();
        if named.hidden || self.hidden_patterns.is_match(tool) {
            return Resolved::Hidden;
        }
        let index = named.rule.or_else(|| {
            self.patterns
                .first_match(tool)
                .map(|at| self.pattern_rules[at])
        });
        match index {
            Some(i) => Resolved::Rules(Some(&self.tools[i])),
            None if self.default_allow => Resolved::Rules(None),
            None => Resolved::NotAllowed,
        }
    }

    /// The key under `tools` that governs `tool` (exact name or pattern), if any.
    pub fn rule_key(&self, tool: &str) -> Option<&str> {
        match self.resolve(tool) {
            Resolved::Rules(Some(rule)) => Some(&rule.key),
            _ => None,
        }
    }

    /// Which arguments of `tool` the policy reads. Empty for hidden or not-allowed tools.
    pub(crate) fn plan_for(&self, tool: &str) -> &ArgPlan {
        static EMPTY: std::sync::OnceLock<ArgPlan> = std::sync::OnceLock::new();
        match self.resolve(tool) {
            Resolved::Rules(Some(rule)) => &rule.plan,
            Resolved::Rules(None) => &self.unlisted_plan,
            _ => EMPTY.get_or_init(ArgPlan::empty),
        }
    }

    /// True when `tool` is hidden: absent from `tools/list` and unknown to calls.
    pub fn is_hidden(&self, tool: &str) -> bool {
        self.names.get(tool).is_some_and(|n| n.hidden) || self.hidden_patterns.is_match(tool)
    }

    /// True when a call to `tool` is refused whatever its arguments: hidden, or without
    /// a rule under `default: deny`.
    pub(crate) fn never_allows(&self, tool: &str) -> bool {
        !matches!(self.resolve(tool), Resolved::Rules(_))
    }

    /// True when the policy hides at least one name or pattern.
    pub fn hides_anything(&self) -> bool {
        self.hidden_count > 0
    }

    /// What in the document loads but is probably a mistake (a rule for a hidden tool,
    /// which can never apply). Empty for a clean policy.
    ///
    /// ```
    /// use tower_mcp_policy::Policy;
    ///
    /// let policy: Policy = r#"{"version":"1","default":"deny","hide":["drop_table"],
    ///     "tools":{"drop_table":{"limits":[{"counter":"c","window":"day","max":1}]}}}"#.parse()?;
    /// assert_eq!(policy.warnings()[0].pointer(), "/tools/drop_table");
    /// # Ok::<(), tower_mcp_policy::PolicyError>(())
    /// ```
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }

    /// True when tools with no rule of their own are allowed.
    pub fn default_allows(&self) -> bool {
        self.default_allow
    }

    /// The policy as the one named `name` in a set of grants: its counters are its own
    /// (see [`Grants`](crate::Grants)).
    pub(crate) fn named(mut self, name: &str) -> Policy {
        for counter in &mut self.counters {
            counter.place_in(name);
        }
        self
    }

    /// A policy that denies every call and hides nothing:
    /// `{"version":"1","default":"deny"}`.
    pub fn deny_all() -> Policy {
        r#"{"version":"1","default":"deny"}"#
            .parse()
            .expect("the deny-all policy is valid")
    }

    /// The counters the policy defines, in the order they first appear.
    pub fn counters(&self) -> &[CounterDef] {
        &self.counters
    }

    pub(crate) fn counter(&self, index: usize) -> &CounterDef {
        &self.counters[index]
    }

    pub(crate) fn all_tools(&self) -> Option<&Rule> {
        self.all_tools.as_ref()
    }

    /// Identifies the document this policy was loaded from: sixteen hex digits of a
    /// fixed-key SipHash of its text, the same in every process. Events and reloads
    /// name the policy version by it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A bounded name for `tool`, for metric labels: `tool` itself when the policy
    /// names it (under `tools` or `hide`), the pattern that governs it (`binance_*`),
    /// `hidden` for a tool hidden by a pattern, and `other` for any name the policy
    /// does not mention. However many names agents invent, the labels are the policy's.
    pub fn tool_label<'p>(&'p self, tool: &str) -> &'p str {
        if let Some((name, _)) = self.names.get_key_value(tool) {
            return name;
        }
        if self.hidden_patterns.is_match(tool) {
            return "hidden";
        }
        match self.patterns.first_match(tool) {
            Some(at) => &self.tools[self.pattern_rules[at]].key,
            None => "other",
        }
    }

    /// The JSON Schema (draft 2020-12) of a policy document (feature `schema`),
    /// generated from the model the loader reads, so it cannot drift from it. Point an
    /// editor at it (a copy is `policy.schema.json` in the repository) or validate
    /// documents in CI. It cannot say everything the loader checks (unique keys under
    /// `tools`, regexes that compile, limits sharing a counter agreeing), so load the
    /// document too: `mcp-policy check`.
    ///
    /// ```
    /// let schema = tower_mcp_policy::Policy::json_schema();
    /// assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    /// assert_eq!(schema["required"], serde_json::json!(["version", "default"]));
    /// ```
    #[cfg(feature = "schema")]
    #[cfg_attr(docsrs, doc(cfg(feature = "schema")))]
    pub fn json_schema() -> serde_json::Value {
        let schema = schemars::schema_for!(document::Document);
        serde_json::to_value(schema).expect("a schema is JSON")
    }

    /// One line describing the policy, for logs and start-up banners.
    pub fn summary(&self) -> String {
        let patterns = self.patterns.len();
        let rules = match self.tools.len() {
            1 => "1 tool rule".to_owned(),
            n => format!("{n} tool rules"),
        };
        let rules = if patterns > 0 {
            format!("{rules} ({patterns} by pattern)")
        } else {
            rules
        };
        let hidden = match self.hidden_count {
            0 => "nothing hidden".to_owned(),
            n => format!("{n} hidden"),
        };
        let counters = match self.counters.len() {
            0 => "no counters".to_owned(),
            _ => {
                let list: Vec<String> = self
                    .counters
                    .iter()
                    .map(|c| format!("{} {} per {}", c.name, c.describe(), c.scope.as_str()))
                    .collect();
                format!("counters: {}", list.join(", "))
            }
        };
        let default = if self.default_allow { "allow" } else { "deny" };
        let all = if self.all_tools.is_some() {
            "; all_tools rule"
        } else {
            ""
        };
        format!("default {default}; {rules}{all}; {hidden}; {counters}")
    }
}

/// Sixteen hex digits of SipHash-1-3, fixed keys, over `text`.
fn fingerprint(text: &str) -> Box<str> {
    use std::hash::Hasher;
    let mut h =
        siphasher::sip::SipHasher13::new_with_keys(0x706f_6c69_6379_2d66, 0x696e_6765_7270_7269);
    h.write(text.as_bytes());
    format!("{:016x}", h.finish()).into()
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Policy, PolicyError> {
        let mut policy = compile::compile(compile::parse_document(text)?)?;
        policy.fingerprint = fingerprint(text);
        Ok(policy)
    }
}
