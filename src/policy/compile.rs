//! Validation and compilation: [`Document`] → [`Policy`] (stage 2 of 2).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use super::condition::{Condition, Op};
use super::document::{
    ApprovalDoc, ClauseDoc, DefaultAction, Document, LimitDoc, RuleDoc, ScopeDoc, WhenDoc,
};
use super::glob::{Glob, GlobSet};
use super::path::{ArgPath, ArgPlan};
use super::window::Window;
use super::{
    ApprovalRule, Clause, CounterDef, Limit, LimitMeta, Names, Policy, PolicyWarning, Rule, Scope,
    ToolRule,
};
use crate::error::{PolicyError, pointer, push_token};
use crate::value::Decimal;

/// Parses the document, naming the JSON Pointer and position of any error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, PolicyError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let doc = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let mut at = String::new();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    push_token(&mut at, &index.to_string())
                }
                serde_path_to_error::Segment::Map { key } => push_token(&mut at, key),
                serde_path_to_error::Segment::Enum { variant } => push_token(&mut at, variant),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        PolicyError::from_json(at, err.inner())
    })?;
    de.end()
        .map_err(|e| PolicyError::from_json(String::new(), &e))?;
    Ok(doc)
}

/// Parses a policy document; when it does not fit the format, every mistake found
/// (each tool's rule checked on its own, and the rest of the document) comes in one
/// error: the first with its line, the others after it.
pub(super) fn parse_document(text: &str) -> Result<Document, PolicyError> {
    let first = match parse::<Document>(text) {
        Ok(doc) => return Ok(doc),
        Err(first) => first,
    };
    if first.kind() == crate::error::PolicyErrorKind::Syntax {
        return Err(first);
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Err(first);
    };
    let mut others = Vec::new();
    let mut top = value.clone();
    if let Some(object) = top.as_object_mut() {
        object.insert("tools".to_owned(), serde_json::json!({}));
    }
    others.extend(parse_value::<Document>(top, "").err());
    if let Some(serde_json::Value::Object(tools)) = value.get("tools") {
        for (key, rule) in tools {
            let at = pointer("/tools", &[key]);
            others.extend(parse_value::<RuleDoc>(rule.clone(), &at).err());
        }
    }
    others.retain(|other| other.pointer() != first.pointer());
    others.insert(0, first);
    Err(PolicyError::all(others).expect("the first error is there"))
}

/// `value` as a `T`, errors located under `base`.
fn parse_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    base: &str,
) -> Result<T, PolicyError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let mut at = base.to_owned();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    push_token(&mut at, &index.to_string())
                }
                serde_path_to_error::Segment::Map { key } => push_token(&mut at, key),
                serde_path_to_error::Segment::Enum { variant } => push_token(&mut at, variant),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        PolicyError::from_json(at, err.inner())
    })
}

/// Validates a document and builds the compiled policy.
pub(super) fn compile(doc: Document) -> Result<Policy, PolicyError> {
    if doc.version != "1" {
        return Err(PolicyError::invalid(
            "/version",
            format!(
                "unsupported version {:?}: only \"1\" is supported",
                doc.version
            ),
        ));
    }
    let mut counters = Counters::default();

    let mut names = Names::default();
    let mut hidden_patterns = Vec::new();
    let hide_list = doc.hide.clone();
    // Every mistake is collected, so one run reports them all.
    let mut errors = Vec::new();
    for (i, name) in doc.hide.iter().enumerate() {
        if name.is_empty() {
            errors.push(PolicyError::invalid(
                pointer("/hide", &[&i.to_string()]),
                "a hidden tool name must not be empty",
            ));
            continue;
        }
        match Glob::new(name) {
            Some(glob) => hidden_patterns.push(glob),
            None => names.entry(name.as_str().into()).or_default().hidden = true,
        }
    }

    let hidden_count = names.values().filter(|n| n.hidden).count() + hidden_patterns.len();
    let all_tools = match doc
        .all_tools
        .map(|rule| compile_rule(rule, "/all_tools", &mut counters))
        .transpose()
    {
        Ok(rule) => rule,
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let mut unlisted_plan = ArgPlan::empty();
    if let Some(rule) = &all_tools {
        add_paths(&mut unlisted_plan, rule);
    }

    let mut tools = Vec::with_capacity(doc.tools.0.len());
    let mut patterns = Vec::new();
    for (key, rule_doc) in doc.tools.0 {
        let at = pointer("/tools", &[&key]);
        if key.is_empty() {
            errors.push(PolicyError::invalid(at, "a tool name must not be empty"));
            continue;
        }
        let rule = match compile_rule(rule_doc, &at, &mut counters) {
            Ok(rule) => rule,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        let mut plan = unlisted_plan.clone();
        add_paths(&mut plan, &rule);
        let index = tools.len();
        match Glob::new(&key) {
            Some(glob) => patterns.push((glob, index)),
            None => names.entry(key.as_str().into()).or_default().rule = Some(index),
        }
        tools.push(ToolRule {
            key: key.into(),
            rule,
            plan,
        });
    }
    if let Some(error) = PolicyError::all(errors) {
        return Err(error);
    }
    let hidden_patterns = GlobSet::new(hidden_patterns);
    let mut warnings = hidden_rules(&tools, &hide_list, &names, &hidden_patterns);
    patterns.sort_by(|(a, ai), (b, bi)| {
        b.literal_len()
            .cmp(&a.literal_len())
            .then_with(|| tools[*ai].key.cmp(&tools[*bi].key))
    });
    let (globs, pattern_rules): (Vec<Glob>, Vec<usize>) = patterns.into_iter().unzip();
    let patterns = GlobSet::new(globs);
    warnings.extend(shadowed_patterns(&tools, &patterns, &pattern_rules));
    let rules = all_tools.iter().chain(tools.iter().map(|t| &t.rule));
    for rule in rules {
        warnings.extend(impossible_limits(rule, &counters.defs));
    }

    let asks_approval = all_tools.iter().any(|rule| rule.approval.is_some())
        || tools.iter().any(|tool| tool.rule.approval.is_some());
    Ok(Policy {
        asks_approval,
        default_allow: matches!(doc.default, DefaultAction::Allow),
        names,
        hidden_patterns,
        hidden_count,
        all_tools,
        patterns,
        pattern_rules,
        tools,
        unlisted_plan,
        counters: counters.defs,
        warnings,
        hide: hide_list.into_iter().map(Into::into).collect(),
        fingerprint: Box::from(""),
    })
}

/// Pattern rules that can never apply: every name they match is matched first by a
/// pattern of higher precedence. For `*`-only globs, `q` matches every name `p` matches
/// exactly when `q` matches `p`'s own text with each `*` standing for a character no
/// literal has (only a `*` of `q` can absorb it).
fn shadowed_patterns(
    tools: &[ToolRule],
    patterns: &GlobSet,
    rules: &[usize],
) -> Vec<PolicyWarning> {
    let mut warnings = Vec::new();
    for (at, index) in rules.iter().enumerate() {
        let key = &tools[*index].key;
        let generic: String = key.replace('*', "\u{0}");
        // A pattern always matches its own generic text, so the first match is `at`
        // itself unless one of higher precedence matches too.
        if let Some(first) = patterns.first_match(&generic).filter(|&first| first < at) {
            warnings.push(PolicyWarning {
                pointer: pointer("/tools", &[key]),
                message: format!(
                    "this rule never applies: every tool `{key}` matches is matched first by `{}`, which has more literal characters (or sorts first)",
                    tools[rules[first]].key
                ),
            });
        }
    }
    warnings
}

/// Limits no call can pass: a `require` item makes every call it lets through cost
/// more than the limit's `max` (`increment_from` on the same argument).
fn impossible_limits(rule: &Rule, counters: &[CounterDef]) -> Vec<PolicyWarning> {
    let mut warnings = Vec::new();
    for limit in &rule.limits {
        let Some(cost) = &limit.increment_from else {
            continue;
        };
        let max = Decimal::from(u64::from(counters[limit.counter].max().get()));
        for clause in &rule.require {
            let floor = clause.conditions.iter().find_map(|c| {
                if c.path.as_str() != cost.as_str() {
                    return None;
                }
                match &c.op {
                    Op::Gt(v) if *v >= max => Some(format!("above {v}")),
                    Op::Gte(v) if *v > max => Some(format!("at least {v}")),
                    _ => None,
                }
            });
            if let Some(floor) = floor {
                warnings.push(PolicyWarning {
                    pointer: limit.meta.pointer.to_string(),
                    message: format!(
                        "this limit never lets a call through: {} requires `{}` {floor}, which is the call's cost, and the limit's max is {max}",
                        clause.pointer,
                        cost.as_str()
                    ),
                });
                break;
            }
        }
    }
    warnings
}

/// Rules that can never apply because their tool is hidden: a hidden tool is refused
/// as unknown before its rule is read.
fn hidden_rules(
    tools: &[ToolRule],
    hide: &[String],
    names: &Names,
    hidden_patterns: &GlobSet,
) -> Vec<PolicyWarning> {
    let hidden_by = |key: &str| -> Option<String> {
        let exact = names.get(key).is_some_and(|n| n.hidden);
        let by = |i: usize| format!("/hide/{i}");
        match Glob::new(key) {
            // A pattern key: dead only when its whole pattern is hidden.
            Some(_) => hide.iter().position(|h| h == key || h == "*").map(by),
            None if exact => hide.iter().position(|h| h == key).map(by),
            None => hidden_patterns
                .is_match(key)
                .then(|| {
                    hide.iter()
                        .position(|h| Glob::new(h).is_some_and(|g| g.is_match(key)))
                        .map(by)
                })
                .flatten(),
        }
    };
    tools
        .iter()
        .filter_map(|tool| {
            let by = hidden_by(&tool.key)?;
            Some(PolicyWarning {
                pointer: pointer("/tools", &[&tool.key]),
                message: format!(
                    "this rule never applies: `{}` is hidden by {by}, and a hidden tool is refused as unknown before its rule is read",
                    tool.key
                ),
            })
        })
        .collect()
}

fn add_paths(plan: &mut ArgPlan, rule: &Rule) {
    let when = rule.approval.iter().flat_map(|approval| &approval.when);
    for clause in rule.deny_if.iter().chain(&rule.require).chain(when) {
        for condition in &clause.conditions {
            plan.add(&condition.path);
        }
    }
    for limit in &rule.limits {
        if let Some(path) = &limit.increment_from {
            plan.add(path);
        }
    }
}

fn compile_rule(doc: RuleDoc, at: &str, counters: &mut Counters) -> Result<Rule, PolicyError> {
    let clauses = |docs: Vec<ClauseDoc>, field: &str| -> Result<Vec<Clause>, PolicyError> {
        docs.into_iter()
            .enumerate()
            .map(|(i, clause)| compile_clause(clause, &pointer(at, &[field, &i.to_string()])))
            .collect()
    };
    let deny_if = clauses(doc.deny_if, "deny_if")?;
    let require = clauses(doc.require, "require")?;
    let limits = doc
        .limits
        .into_iter()
        .enumerate()
        .map(|(i, limit)| compile_limit(limit, &pointer(at, &["limits", &i.to_string()]), counters))
        .collect::<Result<_, _>>()?;
    let approval = doc
        .require_approval
        .map(|approval| compile_approval(approval, &pointer(at, &["require_approval"])))
        .transpose()?;
    Ok(Rule {
        deny_if,
        require,
        limits,
        approval,
    })
}

/// How long an approval is waited for, and usable, when the rule does not say.
const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(600);

fn compile_approval(doc: ApprovalDoc, at: &str) -> Result<ApprovalRule, PolicyError> {
    let when = match doc.when {
        None => Vec::new(),
        Some(items) if items.is_empty() => {
            return Err(PolicyError::invalid(
                pointer(at, &["when"]),
                "`when` lists no item, so no call would ever need approval; list at least one, or leave `when` out so that every call needs approval",
            ));
        }
        Some(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, WhenDoc { conditions })| {
                let clause = ClauseDoc {
                    conditions,
                    on_deny: None,
                };
                compile_clause(clause, &pointer(at, &["when", &i.to_string()]))
            })
            .collect::<Result<_, _>>()?,
    };
    let timeout = match &doc.timeout {
        None => DEFAULT_APPROVAL_TIMEOUT,
        Some(value) => Window::parse(value)
            .map(|window| Duration::from_secs(window.seconds))
            .map_err(|m| PolicyError::invalid(pointer(at, &["timeout"]), m))?,
    };
    if doc.reason.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return Err(PolicyError::invalid(
            pointer(at, &["reason"]),
            "the reason must not be empty: it is what the person asked to approve reads",
        ));
    }
    Ok(ApprovalRule {
        pointer: at.into(),
        when,
        timeout,
        reason: doc.reason.map(Into::into),
        in_client: doc.ask_in_client.unwrap_or(true),
    })
}

fn compile_clause(doc: ClauseDoc, at: &str) -> Result<Clause, PolicyError> {
    let conditions = doc
        .conditions
        .into_iter()
        .enumerate()
        .map(|(i, condition)| {
            Condition::compile(condition).map_err(|(field, message)| {
                PolicyError::invalid(pointer(at, &["conditions", &i.to_string(), field]), message)
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Clause {
        pointer: at.into(),
        conditions,
        on_deny: doc.on_deny.map(Into::into),
    })
}

fn compile_limit(doc: LimitDoc, at: &str, counters: &mut Counters) -> Result<Limit, PolicyError> {
    let field = |name: &str| pointer(at, &[name]);
    if doc.counter.is_empty() {
        return Err(PolicyError::invalid(
            field("counter"),
            "a counter name must not be empty",
        ));
    }
    let window =
        Window::parse(&doc.window).map_err(|m| PolicyError::invalid(field("window"), m))?;
    let max = u32::try_from(doc.max)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            PolicyError::invalid(
                field("max"),
                format!(
                    "max must be a whole number from 1 to {}, not {}",
                    u32::MAX,
                    doc.max
                ),
            )
        })?;
    if u128::from(window.seconds) * 1_000_000_000 < u128::from(max.get()) {
        return Err(PolicyError::invalid(
            field("max"),
            format!("max {max} is more than one call per nanosecond over the window"),
        ));
    }
    let scope = match doc.scope.unwrap_or(ScopeDoc::Grant) {
        ScopeDoc::Grant => Scope::Grant,
        ScopeDoc::Session => Scope::Session,
        ScopeDoc::Global => Scope::Global,
    };
    let increment_from = doc
        .increment_from
        .as_deref()
        .map(ArgPath::parse)
        .transpose()
        .map_err(|m| PolicyError::invalid(field("increment_from"), m))?;
    let def = CounterDef::new(&doc.counter, window, max, scope);
    let meta = LimitMeta {
        pointer: at.into(),
        on_deny: doc.on_deny.map(Into::into),
        describe: def.describe().into(),
    };
    let counter = counters.intern(def, at)?;
    Ok(Limit {
        counter,
        increment_from,
        meta: std::sync::Arc::new(meta),
    })
}

/// Counter definitions by name: one shared budget per name.
#[derive(Default)]
struct Counters {
    defs: Vec<CounterDef>,
    first_seen: Vec<String>,
    by_name: HashMap<String, usize>,
}

impl Counters {
    fn intern(&mut self, def: CounterDef, at: &str) -> Result<usize, PolicyError> {
        if let Some(&index) = self.by_name.get(&*def.name) {
            let first = &self.defs[index];
            if *first != def {
                let show = |d: &CounterDef| format!("{} per {}", d.describe(), d.scope.as_str());
                return Err(PolicyError::invalid(
                    at,
                    format!(
                        "counter `{}` is defined as {} here but as {} at {}; one counter is one budget, so its window, max and scope must agree",
                        def.name,
                        show(&def),
                        show(first),
                        self.first_seen[index]
                    ),
                ));
            }
            return Ok(index);
        }
        let index = self.defs.len();
        self.by_name.insert(def.name.to_string(), index);
        self.defs.push(def);
        self.first_seen.push(at.to_owned());
        Ok(index)
    }
}
