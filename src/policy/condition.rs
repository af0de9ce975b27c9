//! Argument conditions: the eleven operators and their three-valued evaluation.

use std::cmp::Ordering;

use regex::Regex;

use super::document::{ConditionDoc, OpDoc};
use super::path::ArgPath;
use crate::value::{ArgValue, Decimal};

/// A compiled condition: a path and an operator with its operand.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub path: ArgPath,
    pub op: Op,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Eq(ArgValue),
    Neq(ArgValue),
    Lt(Decimal),
    Lte(Decimal),
    Gt(Decimal),
    Gte(Decimal),
    In(Vec<ArgValue>),
    NotIn(Vec<ArgValue>),
    Exists(bool),
    Regex(Regex),
    Contains(ArgValue),
}

/// The outcome of one condition. `Unknown` means it could not be evaluated (a missing
/// argument, or one of a type the operator cannot compare) and carries the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Truth {
    True,
    False,
    Unknown(String),
}

impl Condition {
    /// Compiles `doc`; the error is `(field, message)` relative to the condition.
    pub fn compile(doc: ConditionDoc) -> Result<Condition, (&'static str, String)> {
        let path = ArgPath::parse(&doc.path).map_err(|m| ("path", m))?;
        let name = op_name(doc.op);
        // Read as written: a threshold of 0.1 is exactly 0.1.
        let value = ArgValue::parse_exact(doc.value.get()).map_err(|e| ("value", e.to_string()))?;
        let number = |v: &ArgValue| match v {
            ArgValue::Number(n) => Ok(n.clone()),
            other => Err((
                "value",
                format!(
                    "`{name}` compares numbers, so its value must be a number, not {}",
                    kind(other)
                ),
            )),
        };
        let list = |v: ArgValue| match v {
            ArgValue::Array(items) => Ok(items),
            other => Err((
                "value",
                format!("`{name}` needs a list of values, not {}", kind(&other)),
            )),
        };
        let op = match doc.op {
            OpDoc::Eq => Op::Eq(value),
            OpDoc::Neq => Op::Neq(value),
            OpDoc::Lt => Op::Lt(number(&value)?),
            OpDoc::Lte => Op::Lte(number(&value)?),
            OpDoc::Gt => Op::Gt(number(&value)?),
            OpDoc::Gte => Op::Gte(number(&value)?),
            OpDoc::In => Op::In(list(value)?),
            OpDoc::NotIn => Op::NotIn(list(value)?),
            OpDoc::Exists => match value {
                ArgValue::Bool(b) => Op::Exists(b),
                other => {
                    return Err((
                        "value",
                        format!("`exists` takes true or false, not {}", kind(&other)),
                    ));
                }
            },
            OpDoc::Regex => match value {
                ArgValue::String(pattern) => Op::Regex(
                    Regex::new(&pattern).map_err(|e| ("value", regex_error(&pattern, &e)))?,
                ),
                other => {
                    return Err((
                        "value",
                        format!("`regex` takes a pattern string, not {}", kind(&other)),
                    ));
                }
            },
            OpDoc::Contains => Op::Contains(value),
        };
        Ok(Condition { path, op })
    }

    /// Evaluates the condition against a call's arguments (`None`: no arguments).
    pub fn eval(&self, args: Option<&ArgValue>) -> Truth {
        let found = self
            .path
            .lookup(args)
            .filter(|v| !matches!(v, ArgValue::Null));
        if let Op::Exists(expected) = self.op {
            return Truth::from(found.is_some() == expected);
        }
        let Some(arg) = found else {
            return Truth::Unknown(format!("argument `{}` is missing", self.path.as_str()));
        };
        let mismatch = |wanted: &str| {
            Truth::Unknown(format!(
                "argument `{}` is {}, but `{}` needs {wanted}",
                self.path.as_str(),
                kind(arg),
                self.op_name()
            ))
        };
        match &self.op {
            Op::Eq(v) => Truth::from(arg == v),
            Op::Neq(v) => Truth::from(arg != v),
            Op::Lt(n) | Op::Lte(n) | Op::Gt(n) | Op::Gte(n) => {
                let ArgValue::Number(a) = arg else {
                    return mismatch("a number");
                };
                // Exact decimals: no rounding on either side.
                let ord = a.cmp(n);
                Truth::from(match self.op {
                    Op::Lt(_) => ord == Ordering::Less,
                    Op::Lte(_) => ord != Ordering::Greater,
                    Op::Gt(_) => ord == Ordering::Greater,
                    _ => ord != Ordering::Less,
                })
            }
            Op::In(list) => Truth::from(list.contains(arg)),
            Op::NotIn(list) => Truth::from(!list.contains(arg)),
            Op::Regex(re) => match arg {
                ArgValue::String(s) => Truth::from(re.is_match(s)),
                _ => mismatch("a string"),
            },
            Op::Contains(needle) => match (arg, needle) {
                (ArgValue::String(hay), ArgValue::String(needle)) => {
                    Truth::from(hay.contains(needle.as_str()))
                }
                (ArgValue::Array(items), needle) => Truth::from(items.contains(needle)),
                (ArgValue::String(_), _) => {
                    mismatch("an array (the value to look for is not a string)")
                }
                _ => mismatch("a string or an array"),
            },
            Op::Exists(_) => unreachable!("handled above"),
        }
    }

    pub fn op_name(&self) -> &'static str {
        match self.op {
            Op::Eq(_) => "eq",
            Op::Neq(_) => "neq",
            Op::Lt(_) => "lt",
            Op::Lte(_) => "lte",
            Op::Gt(_) => "gt",
            Op::Gte(_) => "gte",
            Op::In(_) => "in",
            Op::NotIn(_) => "not_in",
            Op::Exists(_) => "exists",
            Op::Regex(_) => "regex",
            Op::Contains(_) => "contains",
        }
    }

    /// `args.amount gt 5000`, for generated messages.
    pub fn describe(&self) -> String {
        let operand = match &self.op {
            Op::Eq(v) | Op::Neq(v) | Op::Contains(v) => v.to_string(),
            Op::Lt(n) | Op::Lte(n) | Op::Gt(n) | Op::Gte(n) => n.to_string(),
            Op::In(l) | Op::NotIn(l) => ArgValue::Array(l.clone()).to_string(),
            Op::Exists(b) => b.to_string(),
            Op::Regex(r) => ArgValue::String(r.as_str().to_owned()).to_string(),
        };
        format!("{} {} {}", self.path.as_str(), self.op_name(), operand)
    }
}

impl From<bool> for Truth {
    fn from(b: bool) -> Truth {
        if b { Truth::True } else { Truth::False }
    }
}

fn op_name(op: OpDoc) -> &'static str {
    match op {
        OpDoc::Eq => "eq",
        OpDoc::Neq => "neq",
        OpDoc::Lt => "lt",
        OpDoc::Lte => "lte",
        OpDoc::Gt => "gt",
        OpDoc::Gte => "gte",
        OpDoc::In => "in",
        OpDoc::NotIn => "not_in",
        OpDoc::Exists => "exists",
        OpDoc::Regex => "regex",
        OpDoc::Contains => "contains",
    }
}

/// The regex crate's multi-line error as one line: `invalid regex "(": unclosed group`.
fn regex_error(pattern: &str, err: &regex::Error) -> String {
    let text = err.to_string();
    let reason = text
        .lines()
        .find_map(|line| line.strip_prefix("error: "))
        .map(str::to_owned)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "));
    format!("invalid regex {pattern:?}: {reason}")
}

/// "a string", "an object", … for messages.
pub(crate) fn kind(value: &ArgValue) -> &'static str {
    value.kind()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn doc(path: &str, op: &str, value: Value) -> ConditionDoc {
        let text = json!({"path": path, "op": op, "value": value}).to_string();
        serde_json::from_str(&text).unwrap()
    }

    fn cond(path: &str, op: &str, value: Value) -> Condition {
        Condition::compile(doc(path, op, value)).unwrap()
    }

    fn eval(c: &Condition, args: Value) -> Truth {
        c.eval(Some(&ArgValue::from(&args)))
    }

    fn unknown(t: Truth) -> String {
        match t {
            Truth::Unknown(m) => m,
            other => panic!("expected Unknown, got {other:?}"),
        }
    }

    #[test]
    fn eq_and_neq_compare_numbers_by_value() {
        let c = cond("args.n", "eq", json!(1));
        assert_eq!(eval(&c, json!({"n": 1.0})), Truth::True);
        assert_eq!(eval(&c, json!({"n": 2})), Truth::False);
        assert_eq!(eval(&c, json!({"n": "1"})), Truth::False);
        let c = cond("args.n", "neq", json!("pdf"));
        assert_eq!(eval(&c, json!({"n": "csv"})), Truth::True);
        assert_eq!(eval(&c, json!({"n": "pdf"})), Truth::False);
        assert!(unknown(eval(&c, json!({}))).contains("`args.n` is missing"));
        let c = cond("args.o", "eq", json!({"a": [1, 2.0]}));
        assert_eq!(eval(&c, json!({"o": {"a": [1.0, 2]}})), Truth::True);
    }

    #[test]
    fn ordering_operators_need_numbers() {
        let gt = cond("args.amount", "gt", json!(1000));
        assert_eq!(eval(&gt, json!({"amount": 1001})), Truth::True);
        assert_eq!(eval(&gt, json!({"amount": 1000})), Truth::False);
        assert_eq!(eval(&gt, json!({"amount": 1000.5})), Truth::True);
        let m = unknown(eval(&gt, json!({"amount": "5000"})));
        assert_eq!(
            m,
            "argument `args.amount` is a string, but `gt` needs a number"
        );
        assert!(unknown(eval(&gt, json!({"amount": null}))).contains("missing"));
        let gte = cond("args.p", "gte", json!(100));
        assert_eq!(eval(&gte, json!({"p": 100})), Truth::True);
        assert_eq!(eval(&gte, json!({"p": 99.99})), Truth::False);
        let lt = cond("args.p", "lt", json!(2100));
        assert_eq!(eval(&lt, json!({"p": 2099})), Truth::True);
        assert_eq!(eval(&lt, json!({"p": 2100})), Truth::False);
        let lte = cond("args.p", "lte", json!(-1.5));
        assert_eq!(eval(&lte, json!({"p": -1.5})), Truth::True);
        assert_eq!(eval(&lte, json!({"p": -1})), Truth::False);
        assert!(unknown(eval(&lte, json!({"p": [1]}))).contains("is an array"));
    }

    #[test]
    fn big_integers_compare_exactly() {
        let c = cond("args.n", "gt", json!(9_007_199_254_740_992u64));
        assert_eq!(
            eval(&c, json!({"n": 9_007_199_254_740_993u64})),
            Truth::True
        );
        let c = cond("args.n", "lt", json!(0));
        assert_eq!(eval(&c, json!({"n": i64::MIN})), Truth::True);
        assert_eq!(eval(&c, json!({"n": u64::MAX})), Truth::False);
    }

    #[test]
    fn membership() {
        let c = cond("args.c", "in", json!(["usd", "eur", 1]));
        assert_eq!(eval(&c, json!({"c": "usd"})), Truth::True);
        assert_eq!(eval(&c, json!({"c": 1.0})), Truth::True);
        assert_eq!(eval(&c, json!({"c": "gbp"})), Truth::False);
        assert!(matches!(eval(&c, json!({})), Truth::Unknown(_)));
        let c = cond("args.c", "not_in", json!(["team@example.com"]));
        assert_eq!(eval(&c, json!({"c": "x@y"})), Truth::True);
        assert_eq!(eval(&c, json!({"c": "team@example.com"})), Truth::False);
        assert!(matches!(eval(&c, json!({"d": 1})), Truth::Unknown(_)));
    }

    #[test]
    fn exists_never_is_unknown() {
        let c = cond("args.reason", "exists", json!(true));
        assert_eq!(eval(&c, json!({"reason": "dup"})), Truth::True);
        assert_eq!(eval(&c, json!({"reason": false})), Truth::True);
        assert_eq!(eval(&c, json!({})), Truth::False);
        assert_eq!(eval(&c, json!({"reason": null})), Truth::False);
        assert_eq!(c.eval(None), Truth::False);
        let c = cond("args.reason", "exists", json!(false));
        assert_eq!(eval(&c, json!({})), Truth::True);
        assert_eq!(eval(&c, json!({"reason": 1})), Truth::False);
    }

    #[test]
    fn regex_is_unanchored_and_needs_strings() {
        let c = cond("args.branch", "regex", json!("^release/"));
        assert_eq!(eval(&c, json!({"branch": "release/1.0"})), Truth::True);
        assert_eq!(eval(&c, json!({"branch": "main"})), Truth::False);
        assert!(unknown(eval(&c, json!({"branch": 7}))).contains("needs a string"));
    }

    #[test]
    fn contains_substring_or_element() {
        let c = cond("args.to", "contains", json!("@competitor.example"));
        assert_eq!(
            eval(&c, json!({"to": "bob@competitor.example"})),
            Truth::True
        );
        assert_eq!(eval(&c, json!({"to": "bob@ok.example"})), Truth::False);
        assert_eq!(
            eval(&c, json!({"to": ["@competitor.example"]})),
            Truth::True
        );
        assert_eq!(
            eval(&c, json!({"to": ["a@competitor.example"]})),
            Truth::False
        );
        assert!(unknown(eval(&c, json!({"to": 5}))).contains("a string or an array"));
        let c = cond("args.ids", "contains", json!(3));
        assert_eq!(eval(&c, json!({"ids": [1, 3.0]})), Truth::True);
        assert!(matches!(eval(&c, json!({"ids": "3"})), Truth::Unknown(_)));
    }

    #[test]
    fn operand_types_are_checked_at_load() {
        let bad =
            |op: &str, value: Value| Condition::compile(doc("args.x", op, value)).unwrap_err();
        assert_eq!(bad("gt", json!("1000")).0, "value");
        assert!(
            bad("gt", json!("1000"))
                .1
                .contains("must be a number, not a string")
        );
        assert!(bad("in", json!("usd")).1.contains("needs a list"));
        assert!(bad("exists", json!(1)).1.contains("true or false"));
        assert!(bad("regex", json!("(")).1.starts_with("invalid regex"));
        assert!(bad("regex", json!(1)).1.contains("pattern string"));
        assert_eq!(
            Condition::compile(doc("x", "eq", json!(1))).unwrap_err().0,
            "path"
        );
    }
}
