//! Strict serde seeds over `serde_json`: every string is decoded (so lone surrogates
//! and bad escapes are errors even where we keep nothing), and objects whose meaning
//! the policy depends on refuse duplicate keys.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use smallvec::SmallVec;

use crate::policy::path::PlanNode;

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

pub(crate) fn duplicate<E: de::Error>(key: &str, object: &str) -> E {
    E::custom(format_args!(
        "duplicate key \"{key}\" in {object}: its meaning would depend on which one a parser keeps"
    ))
}

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

/// Builds a whole `serde_json::Value`, refusing duplicate keys at every depth.
#[derive(Clone, Copy)]
pub(crate) struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            let value = map.next_value_seed(StrictValue)?;
            if object.contains_key(&*key) {
                return Err(duplicate(&key, "the arguments"));
            }
            object.insert(key.into_owned(), value);
        }
        Ok(Value::Object(object))
    }
}

/// Reads what a [`PlanNode`] names and validates the rest, building a pruned value.
#[derive(Clone, Copy)]
pub(crate) struct Guided<'p>(pub &'p PlanNode);

impl<'de> DeserializeSeed<'de> for Guided<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.whole {
            return d.deserialize_any(StrictValue);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Guided<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        StrictValue.visit_bool(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        StrictValue.visit_i64(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        StrictValue.visit_u64(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        StrictValue.visit_f64(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        StrictValue.visit_str(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let keep = self.0.max_index().map_or(0, |max| max + 1);
        let mut items = Vec::new();
        let mut index = 0;
        loop {
            let more = match self.0.child_for_index(index) {
                Some(child) => seq.next_element_seed(Guided(child))?.map(|v| items.push(v)),
                None if index < keep => seq
                    .next_element_seed(Validate)?
                    .map(|()| items.push(Value::Null)),
                None => seq.next_element_seed(Validate)?,
            };
            if more.is_none() {
                return Ok(Value::Array(items));
            }
            index += 1;
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut keys = KeySet::new();
        let mut object = Map::new();
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
        Ok(Value::Object(object))
    }
}

/// `params.arguments`: an object (read with a plan, or only validated) or `null`.
pub(crate) struct Arguments<'p>(pub Option<&'p PlanNode>);

impl<'de> DeserializeSeed<'de> for Arguments<'_> {
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Arguments<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params.arguments to be an object")
    }
    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<Value>, A::Error> {
        match self.0 {
            Some(plan) if plan.whole => StrictValue.visit_map(map).map(Some),
            Some(plan) => Guided(plan).visit_map(map).map(Some),
            None => {
                // Nothing is read, but the object is still checked key by key.
                let mut map = map;
                let mut keys = KeySet::new();
                while let Some(Key(key)) = map.next_key()? {
                    keys.insert(&key, "the arguments")?;
                    map.next_value_seed(Validate)?;
                }
                Ok(Some(Value::Object(Map::new())))
            }
        }
    }
}
