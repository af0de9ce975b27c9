//! The thorough path: serde_json with strict seeds. It reads any body the fast path
//! declines, and writes every error message.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use super::message::{Fields, Params, TraceParent, routing_field};
use super::strict::{Arguments, Key, KeySet, Text, Validate};
use super::{DecodeError, Decoded, Id, Message, PlanSource, ToolCall};
use crate::value::ArgValue;

/// Decodes a body with serde_json and strict seeds: any body, and every error message.
pub(super) fn decode<'a, P: PlanSource + ?Sized>(
    text: &'a str,
    plans: &P,
) -> Result<Decoded<'a>, DecodeError> {
    let last_id = RefCell::new(None);
    let context = Context {
        plans,
        last_id: &last_id,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let decoded = BodySeed(&context)
        .deserialize(&mut de)
        .and_then(|decoded| de.end().map(|()| decoded))
        .map_err(|e| {
            // A message error found before a syntax error further on: what is not JSON
            // at all is a parse error, whatever else is wrong with it. (Every string is
            // decoded, so a lone surrogate read from a fragment is a parse error too.)
            let mut whole = serde_json::Deserializer::from_str(text);
            if e.classify() == serde_json::error::Category::Data
                && let Err(syntax) = Validate.deserialize(&mut whole).and_then(|()| whole.end())
            {
                return DecodeError::from_json(&syntax, None);
            }
            DecodeError::from_json(&e, last_id.borrow_mut().take())
        })?;
    Ok(decoded)
}

struct Context<'c, P: ?Sized> {
    plans: &'c P,
    /// The id of the message being read, so an error can name it.
    last_id: &'c RefCell<Option<Id>>,
}

struct BodySeed<'c, P: ?Sized>(&'c Context<'c, P>);

impl<'de, P: PlanSource + ?Sized> DeserializeSeed<'de> for BodySeed<'_, P> {
    type Value = Decoded<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Decoded<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, P: PlanSource + ?Sized> Visitor<'de> for BodySeed<'_, P> {
    type Value = Decoded<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message (an object) or a batch (an array of them)")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Decoded<'de>, A::Error> {
        let message = Envelope(self.0).visit_map(map)?;
        Ok(Decoded {
            messages: smallvec::smallvec![message],
            batch: false,
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Decoded<'de>, A::Error> {
        let mut messages = SmallVec::new();
        while let Some(message) = seq.next_element_seed(Envelope(self.0))? {
            messages.push(message);
        }
        if messages.is_empty() {
            return Err(de::Error::custom("an empty batch is not a valid request"));
        }
        Ok(Decoded {
            messages,
            batch: true,
        })
    }
}

/// One message object.
struct Envelope<'c, P: ?Sized>(&'c Context<'c, P>);

impl<'de, P: PlanSource + ?Sized> DeserializeSeed<'de> for Envelope<'_, P> {
    type Value = Message<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Message<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, P: PlanSource + ?Sized> Visitor<'de> for Envelope<'_, P> {
    type Value = Message<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
        *self.0.last_id.borrow_mut() = None;
        let mut seen = KeySet::new();
        let mut version_ok = None;
        let mut has_id = false;
        let mut method: Option<Cow<'de, str>> = None;
        let mut params: Option<Params<'de>> = None;
        let mut raw_params: Option<&'de RawValue> = None;
        let mut has_result = false;
        let mut has_error = false;
        while let Some(Key(key)) = map.next_key()? {
            if let Err(e) = seen.insert::<A::Error>(&key, "the message") {
                if key == "id" {
                    *self.0.last_id.borrow_mut() = None;
                }
                return Err(e);
            }
            match &*key {
                "jsonrpc" => {
                    let version =
                        map.next_value_seed(Text("\"jsonrpc\" to be the string \"2.0\""))?;
                    version_ok = Some(version == "2.0");
                }
                "id" => {
                    // Kept in the context until the message is complete, so that an
                    // error later in this message can still name it.
                    *self.0.last_id.borrow_mut() = map.next_value_seed(IdSeed)?;
                    has_id = true;
                }
                "method" => {
                    method = Some(map.next_value_seed(Text("\"method\" to be a string"))?);
                }
                "params" => match &method {
                    Some(m) => params = Some(map.next_value_seed(ParamsSeed::new(self.0, m))?),
                    None => raw_params = Some(map.next_value()?),
                },
                "result" => {
                    map.next_value_seed(Validate)?;
                    has_result = true;
                }
                "error" => {
                    map.next_value_seed(Validate)?;
                    has_error = true;
                }
                _ => map.next_value_seed(Validate)?,
            }
        }
        if version_ok != Some(true) {
            return Err(de::Error::custom("\"jsonrpc\" must be the string \"2.0\""));
        }
        if let Some(raw) = raw_params {
            let Some(m) = &method else {
                return Err(de::Error::custom("\"params\" without a \"method\""));
            };
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let read = ParamsSeed::new(self.0, m)
                .deserialize(&mut de)
                .map_err(|e| de::Error::custom(format_args!("in params: {e}")))?;
            params = Some(read);
        }
        let message = Fields {
            id: has_id.then(|| self.0.last_id.borrow_mut().take()),
            method,
            params,
            has_result,
            has_error,
        };
        message.into_message().map_err(de::Error::custom)
    }
}

/// A message id: a string, an integer, or null (`None`).
struct IdSeed;

impl<'de> DeserializeSeed<'de> for IdSeed {
    type Value = Option<Id>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Id>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdSeed {
    type Value = Option<Id>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an id that is a string or an integer")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Option<Id>, E> {
        Ok(Some(Id::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Option<Id>, E> {
        Ok(Some(Id::Number(v.into())))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Id>, E> {
        Err(E::custom(
            "an id must be a string or an integer, not a fraction",
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<Id>, E> {
        Ok(Some(Id::String(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<Option<Id>, E> {
        Ok(None)
    }
}

/// `params`, read according to the method.
struct ParamsSeed<'c, 'm, P: ?Sized> {
    context: &'c Context<'c, P>,
    method: &'m str,
}

impl<'c, 'm, P: ?Sized> ParamsSeed<'c, 'm, P> {
    fn new(context: &'c Context<'c, P>, method: &'m str) -> Self {
        ParamsSeed { context, method }
    }
}

impl<'de, P: PlanSource + ?Sized> DeserializeSeed<'de> for ParamsSeed<'_, '_, P> {
    type Value = Params<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Params<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, P: PlanSource + ?Sized> Visitor<'de> for ParamsSeed<'_, '_, P> {
    type Value = Params<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("params to be an object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Params<'de>, E> {
        // `null` params are no params; tools/call then fails for want of a name.
        Ok(Params::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Params<'de>, A::Error> {
        if self.method == "tools/call" {
            return Err(de::Error::custom("tools/call params must be an object"));
        }
        Validate.visit_seq(seq)?;
        Ok(Params::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params<'de>, A::Error> {
        let is_call = self.method == "tools/call";
        let routing_field = routing_field(self.method);
        let mut seen = KeySet::new();
        let mut name: Option<Cow<'de, str>> = None;
        let mut routing_name = None;
        let mut arguments: Option<Option<ArgValue>> = None;
        let mut raw_arguments: Option<&'de RawValue> = None;
        let mut trace = None;
        while let Some(Key(key)) = map.next_key()? {
            seen.insert::<A::Error>(&key, "params")?;
            if key == "_meta" {
                trace = map.next_value_seed(Meta)?;
            } else if is_call && key == "name" {
                name = Some(map.next_value_seed(Text("params.name of tools/call to be a string"))?);
            } else if is_call && key == "arguments" {
                match &name {
                    Some(n) => {
                        let plan = self.context.plans.plan_for(n);
                        let root = (!plan.is_empty()).then(|| plan.root());
                        arguments = Some(map.next_value_seed(Arguments(root))?);
                    }
                    None => raw_arguments = Some(map.next_value()?),
                }
            } else if !is_call && Some(&*key) == routing_field {
                // Kept when it is a string; other types have no header form.
                routing_name = map.next_value_seed(OptionalString)?;
            } else {
                map.next_value_seed(Validate)?;
            }
        }
        if !is_call {
            return Ok(Params {
                call: None,
                routing_name,
                trace,
            });
        }
        let Some(name) = name else {
            return Err(de::Error::custom("tools/call params need a \"name\""));
        };
        if let Some(raw) = raw_arguments {
            let plan = self.context.plans.plan_for(&name);
            let root = (!plan.is_empty()).then(|| plan.root());
            let mut de = serde_json::Deserializer::from_str(raw.get());
            let read = Arguments(root)
                .deserialize(&mut de)
                .map_err(|e| de::Error::custom(format_args!("in params.arguments: {e}")))?;
            arguments = Some(read);
        }
        Ok(Params {
            routing_name: Some(name.clone()),
            call: Some(ToolCall {
                name,
                arguments: arguments.flatten(),
            }),
            trace,
        })
    }
}

/// `params._meta`: its `traceparent` when well formed; any other value is validated.
struct Meta;

impl<'de> DeserializeSeed<'de> for Meta {
    type Value = Option<TraceParent>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Meta {
    type Value = Option<TraceParent>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = KeySet::new();
        let mut trace = None;
        while let Some(Key(key)) = map.next_key()? {
            seen.insert::<A::Error>(&key, "params._meta")?;
            match &*key {
                "traceparent" => {
                    let text = map.next_value_seed(OptionalString)?;
                    trace = text.and_then(|text| TraceParent::parse(&text));
                }
                _ => map.next_value_seed(Validate)?,
            }
        }
        Ok(trace)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Validate.visit_seq(seq).map(|()| None)
    }
}

/// A string, or `None` for any other (validated) value.
struct OptionalString;

impl<'de> DeserializeSeed<'de> for OptionalString {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OptionalString {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Validate.visit_seq(seq).map(|()| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Validate.visit_map(map).map(|()| None)
    }
}
