//! Argument values as the policy reads them: JSON whose numbers are exact.
//!
//! serde_json (without `arbitrary_precision`, which this crate does not turn on for the
//! whole program) rounds every number with a fraction or beyond 64 bits to an `f64`,
//! and by default not even to the nearest one: `100.00000000000001` reads as `100.0`.
//! A server in JavaScript, Python, Go or Java would see a value above 100. So the values
//! a policy compares are [`ArgValue`]s, whose numbers are [`Decimal`]s taken from the
//! text itself.
//!
//! [`ArgValue::parse_exact`] reads one JSON value in a single serde_json pass. Numbers
//! are matched to their text by a scanner that walks the same text forward, number
//! token by number token (skipping strings): serde_json visits values in document
//! order, so the k-th number visited is the k-th token. Each match is checked against
//! what serde_json read, so a mismatch could only ever refuse a body, never misjudge one.

mod decimal;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

pub use decimal::{Decimal, NotANumber};

/// A JSON value whose numbers are exact: the arguments of a tool call as the policy
/// reads them, and the operands of its conditions.
///
/// Equality is JSON equality with numbers by value (`1 == 1.0 == 1e0`) at every depth.
///
/// ```
/// # use tower_mcp_policy::unstable::ArgValue;
/// let ArgValue::Number(amount) = ArgValue::parse_exact("100.00000000000001").unwrap() else { panic!() };
/// assert!(amount > "100".parse().unwrap());
/// assert_eq!(ArgValue::parse_exact(r#"{"a":[1.0]}"#).unwrap(), serde_json::json!({"a": [1]}));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, exactly as written.
    Number(Decimal),
    /// A string, escapes decoded.
    String(String),
    /// An array.
    Array(Vec<ArgValue>),
    /// An object (duplicate keys are refused when reading).
    Object(BTreeMap<String, ArgValue>),
}

impl ArgValue {
    /// Reads one JSON value exactly (numbers as written); duplicate keys at any depth,
    /// lone surrogates and trailing data are errors.
    pub fn parse_exact(text: &str) -> Result<ArgValue, serde_json::Error> {
        let tokens = RefCell::new(NumberTokens { text, pos: 0 });
        let mut de = serde_json::Deserializer::from_str(text);
        let value = Exact(&tokens).deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }

    /// `"a string"`, `"an object"`, ... for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ArgValue::Null => "null",
            ArgValue::Bool(_) => "a boolean",
            ArgValue::Number(_) => "a number",
            ArgValue::String(_) => "a string",
            ArgValue::Array(_) => "an array",
            ArgValue::Object(_) => "an object",
        }
    }

    /// The object's members, when it is an object.
    pub fn as_object(&self) -> Option<&BTreeMap<String, ArgValue>> {
        match self {
            ArgValue::Object(map) => Some(map),
            _ => None,
        }
    }

    /// As a `serde_json::Value` (numbers: exact 64-bit integers, otherwise the nearest
    /// `f64`; `null` for one beyond `f64`'s range).
    pub fn to_json(&self) -> Value {
        match self {
            ArgValue::Null => Value::Null,
            ArgValue::Bool(b) => Value::Bool(*b),
            ArgValue::Number(n) => n.to_json_number().map_or(Value::Null, Value::Number),
            ArgValue::String(s) => Value::String(s.clone()),
            ArgValue::Array(items) => Value::Array(items.iter().map(ArgValue::to_json).collect()),
            ArgValue::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }
}

/// A `serde_json::Value` read as its text says: numbers as serde_json prints them
/// (integers exactly, floats as the shortest text that reads back the same `f64`).
impl From<&Value> for ArgValue {
    fn from(value: &Value) -> ArgValue {
        match value {
            Value::Null => ArgValue::Null,
            Value::Bool(b) => ArgValue::Bool(*b),
            Value::Number(n) => ArgValue::Number(n.to_string().parse().unwrap_or(Decimal::ZERO)),
            Value::String(s) => ArgValue::String(s.clone()),
            Value::Array(items) => ArgValue::Array(items.iter().map(ArgValue::from).collect()),
            Value::Object(map) => ArgValue::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), ArgValue::from(v)))
                    .collect(),
            ),
        }
    }
}

impl PartialEq<Value> for ArgValue {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (ArgValue::Null, Value::Null) => true,
            (ArgValue::Bool(a), Value::Bool(b)) => a == b,
            (ArgValue::Number(a), Value::Number(b)) => {
                b.to_string().parse::<Decimal>().is_ok_and(|b| *a == b)
            }
            (ArgValue::String(a), Value::String(b)) => a == b,
            (ArgValue::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a == b)
            }
            (ArgValue::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v == w))
            }
            _ => false,
        }
    }
}

/// JSON text (numbers exact).
impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Null => f.write_str("null"),
            ArgValue::Bool(b) => write!(f, "{b}"),
            ArgValue::Number(n) => write!(f, "{n}"),
            ArgValue::String(s) => f.write_str(&Value::String(s.clone()).to_string()),
            ArgValue::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            ArgValue::Object(map) => {
                f.write_str("{")?;
                for (i, (key, item)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{item}", Value::String(key.clone()))?;
                }
                f.write_str("}")
            }
        }
    }
}

/// The error for a key that appears twice in one object.
pub(crate) fn duplicate<E: de::Error>(key: &str, object: &str) -> E {
    E::custom(format_args!(
        "duplicate key \"{key}\" in {object}: its meaning would depend on which one a parser keeps"
    ))
}

/// The number tokens of a JSON text, in order, outside strings.
struct NumberTokens<'t> {
    text: &'t str,
    pos: usize,
}

impl<'t> NumberTokens<'t> {
    fn next(&mut self) -> Option<&'t str> {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            match b {
                b'"' => {
                    // Skip the string: to its closing quote, over escapes.
                    self.pos += 1;
                    while let Some(n) = bytes[self.pos..]
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\')
                    {
                        self.pos += n;
                        if bytes[self.pos] == b'"' {
                            break;
                        }
                        self.pos += 2;
                    }
                    self.pos += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = self.pos;
                    let len = bytes[start..]
                        .iter()
                        .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                        .unwrap_or(bytes.len() - start);
                    self.pos += len;
                    return Some(&self.text[start..self.pos]);
                }
                _ => self.pos += 1,
            }
        }
        None
    }
}

/// Builds an [`ArgValue`], taking each number's text from the token scanner.
#[derive(Clone, Copy)]
struct Exact<'a, 't>(&'a RefCell<NumberTokens<'t>>);

impl Exact<'_, '_> {
    /// The next number token, checked against what serde_json read (`seen`).
    fn number<E: de::Error>(
        self,
        seen: impl FnOnce(&Decimal, &str) -> bool,
    ) -> Result<ArgValue, E> {
        let token = self.0.borrow_mut().next();
        let decimal = token.and_then(|t| Some((t.parse::<Decimal>().ok()?, t)));
        match decimal {
            Some((decimal, token)) if seen(&decimal, token) => Ok(ArgValue::Number(decimal)),
            _ => Err(E::custom("a number could not be read exactly")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Exact<'_, '_> {
    type Value = ArgValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ArgValue, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Exact<'_, '_> {
    type Value = ArgValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<ArgValue, E> {
        Ok(ArgValue::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ArgValue, E> {
        self.number(|d, _| *d == Decimal::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ArgValue, E> {
        self.number(|d, _| *d == Decimal::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ArgValue, E> {
        // serde_json's own reading is within an ulp or so of the text's value.
        self.number(|_, token| {
            token
                .parse::<f64>()
                .is_ok_and(|t| t == v || (t - v).abs() <= v.abs() * 1e-12)
        })
    }
    fn visit_str<E>(self, v: &str) -> Result<ArgValue, E> {
        Ok(ArgValue::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<ArgValue, E> {
        Ok(ArgValue::String(v))
    }
    fn visit_unit<E>(self) -> Result<ArgValue, E> {
        Ok(ArgValue::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArgValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(ArgValue::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ArgValue, A::Error> {
        let mut object = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self)?;
            if object.contains_key(&key) {
                return Err(duplicate(&key, "the arguments"));
            }
            object.insert(key, value);
        }
        Ok(ArgValue::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_read_exactly_at_any_depth() {
        let v = ArgValue::parse_exact(
            r#"{"a":100.00000000000001,"b":[1000.0000000000000001,{"c":-0.0}],"s":"1.5e3 \"2\" 7","d":123456789012345678901234567890}"#,
        )
        .unwrap();
        let n = |s: &str| ArgValue::Number(s.parse().unwrap());
        let ArgValue::Object(o) = &v else { panic!() };
        assert_eq!(o["a"], n("100.00000000000001"));
        assert_ne!(o["a"], n("100"));
        assert_eq!(
            o["b"],
            ArgValue::Array(vec![
                n("1000.0000000000000001"),
                ArgValue::Object([("c".to_owned(), n("0"))].into())
            ])
        );
        assert_eq!(o["s"], ArgValue::String("1.5e3 \"2\" 7".to_owned()));
        assert_eq!(o["d"], n("123456789012345678901234567890"));
    }

    #[test]
    fn duplicate_keys_and_bad_text_are_errors() {
        let err = ArgValue::parse_exact(r#"{"a":{"b":1,"b":2}}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate key \"b\""), "{err}");
        assert!(ArgValue::parse_exact(r#""\ud800""#).is_err());
        assert!(ArgValue::parse_exact("1 2").is_err());
        assert!(
            ArgValue::parse_exact("[1e400]").is_err(),
            "beyond serde_json's range"
        );
    }

    #[test]
    fn equality_is_by_value_and_display_is_json() {
        let v = ArgValue::parse_exact(r#"{"x":[1.0,2e0,"\u00e9"],"y":null,"z":true}"#).unwrap();
        assert_eq!(v, json!({"x": [1, 2, "é"], "y": null, "z": true}));
        assert_eq!(v.to_string(), r#"{"x":[1,2,"é"],"y":null,"z":true}"#);
        assert_eq!(
            ArgValue::from(&json!(0.1)),
            ArgValue::parse_exact("0.1").unwrap()
        );
        assert_eq!(v.to_json(), json!({"x": [1, 2, "é"], "y": null, "z": true}));
    }
}
