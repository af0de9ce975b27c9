//! Strict serde seeds over `serde_json`: every string is decoded (so lone surrogates
//! and bad escapes are errors even where we keep nothing), and objects whose meaning
//! the policy depends on refuse duplicate keys.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::policy::path::PlanNode;
use crate::value::ArgValue;

/// An object key, borrowed when it has no escapes.
pub(crate) struct Key<'de>(pub Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Text("a string key").deserialize(d).map(Key)
    }
}

/// A string field; the label says what was expected when it is not a string.
#[derive(Clone, Copy)]
pub(crate) struct Text(pub &'static str);

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Keys seen so far in one object; a repeat is an error.
pub(crate) struct KeySet<'de> {
    small: SmallVec<[Cow<'de, str>; LINEAR_LIMIT]>,
    large: Option<HashSet<Cow<'de, str>>>,
}

const LINEAR_LIMIT: usize = 16;

impl<'de> KeySet<'de> {
    pub fn new() -> Self {
        KeySet {
            small: SmallVec::new(),
            large: None,
        }
    }

    /// Records `key`; errors when it was already there. It takes the `Cow` so that a
    /// borrowed key stays a borrow of the body in the set.
    #[allow(clippy::ptr_arg)]
    pub fn insert<E: de::Error>(&mut self, key: &Cow<'de, str>, object: &str) -> Result<(), E> {
        let repeated = match &mut self.large {
            Some(set) => !set.insert(key.clone()),
            None if self.small.len() < LINEAR_LIMIT => {
                let seen = self.small.iter().any(|k| k == key);
                if !seen {
                    self.small.push(key.clone());
                }
                seen
            }
            None => {
                let mut set: HashSet<Cow<'de, str>> = self.small.drain(..).collect();
                let seen = !set.insert(key.clone());
                self.large = Some(set);
                seen
            }
        };
        if repeated {
            return Err(duplicate(key, object));
        }
        Ok(())
    }
}

pub(crate) use crate::value::duplicate;

/// Visits any value, decoding every string, keeping nothing.
#[derive(Clone, Copy)]
pub(crate) struct Validate;

impl<'de> DeserializeSeed<'de> for Validate {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Validate {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Validate)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Validate)?.is_some() {
            map.next_value_seed(Validate)?;
        }
        Ok(())
    }
}

/// Reads the value at a [`PlanNode`]: exactly (numbers as written) when the plan reads
/// it whole; otherwise only the children the plan names, validating the rest.
///
/// The value is first taken as the raw text it borrows from the body, then read from
/// that text: numbers keep their exact text that way. The extra pass is over what the
/// plan reaches, and its depth is the policy's path depth, never the body's nesting.
#[derive(Clone, Copy)]
pub(crate) struct Guided<'p>(pub &'p PlanNode);

impl<'de> DeserializeSeed<'de> for Guided<'_> {
    type Value = ArgValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ArgValue, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        self.read(raw.get())
            .map_err(|e| de::Error::custom(bare(&e)))
    }
}

impl Guided<'_> {
    /// Reads the value whose whole text (one JSON value, nothing around it) is `text`.
    pub fn read(self, text: &str) -> Result<ArgValue, serde_json::Error> {
        if self.0.whole || !text.starts_with(['{', '[']) {
            return ArgValue::parse_exact(text);
        }
        let mut de = serde_json::Deserializer::from_str(text);
        de::Deserializer::deserialize_any(&mut de, self)
    }
}

/// A serde_json error's message without its position (which would be relative to a
/// fragment of the body); the outer reader adds the real one.
fn bare(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

impl<'de> Visitor<'de> for Guided<'_> {
    type Value = ArgValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object or an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArgValue, A::Error> {
        let keep = self.0.max_index().map_or(0, |max| max + 1);
        let mut items = Vec::new();
        let mut index = 0;
        loop {
            let more = match self.0.child_for_index(index) {
                Some(child) => seq.next_element_seed(Guided(child))?.map(|v| items.push(v)),
                None if index < keep => seq
                    .next_element_seed(Validate)?
                    .map(|()| items.push(ArgValue::Null)),
                None => seq.next_element_seed(Validate)?,
            };
            if more.is_none() {
                return Ok(ArgValue::Array(items));
            }
            index += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ArgValue, A::Error> {
        let mut keys = KeySet::new();
        let mut object = BTreeMap::new();
        while let Some(Key(key)) = map.next_key()? {
            keys.insert(&key, "the arguments")?;
            match self.0.child_for_key(&key) {
                Some(child) => {
                    let value = map.next_value_seed(Guided(child))?;
                    object.insert(key.into_owned(), value);
                }
                None => map.next_value_seed(Validate)?,
            }
        }
        Ok(ArgValue::Object(object))
    }
}

/// `params.arguments`: an object (read with a plan, or only validated) or `null`.
pub(crate) struct Arguments<'p>(pub Option<&'p PlanNode>);

impl<'de> DeserializeSeed<'de> for Arguments<'_> {
    type Value = Option<ArgValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<ArgValue>, D::Error> {
        match self.0 {
            Some(plan) if plan.whole => {
                let read = Guided(plan).deserialize(d)?;
                match read {
                    ArgValue::Object(_) => Ok(Some(read)),
                    ArgValue::Null => Ok(None),
                    _ => Err(de::Error::custom(
                        "invalid type: expected params.arguments to be an object",
                    )),
                }
            }
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Arguments<'_> {
    type Value = Option<ArgValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params.arguments to be an object")
    }
    fn visit_unit<E>(self) -> Result<Option<ArgValue>, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<ArgValue>, A::Error> {
        match self.0 {
            Some(plan) => Guided(plan).visit_map(map).map(Some),
            None => {
                // Nothing is read, but the object is still checked key by key.
                let mut map = map;
                let mut keys = KeySet::new();
                while let Some(Key(key)) = map.next_key()? {
                    keys.insert(&key, "the arguments")?;
                    map.next_value_seed(Validate)?;
                }
                Ok(Some(ArgValue::Object(BTreeMap::new())))
            }
        }
    }
}
