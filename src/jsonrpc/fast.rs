//! The fast reader: one pass over the bytes of the message agents usually send.
//!
//! It reads a single message object (no batch) whose keys, method, id, tool name and
//! routing name have no escapes and whose numbers have no exponent, nested at most
//! [`MAX_DEPTH`] deep. Strings it only skips are checked as strictly as the thorough
//! reader checks them: no control character, no bad escape, no lone surrogate.
//!
//! It never refuses anything. Whatever it is not sure of (any error, and anything
//! outside the shape above) it leaves to the thorough reader in `mod.rs`, which gives
//! the same answer where both read a body (a property test below checks that) and writes
//! every error message. So it can only make a body that would be accepted cheaper; it
//! cannot make one accepted.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use super::message::{Fields, Params, TraceParent, routing_field};
use super::strict::Guided;
use super::{Decoded, Id, Message, PlanSource, ToolCall};
use crate::policy::ArgPlan;
use crate::policy::path::PlanNode;
use crate::value::ArgValue;

/// `None`: not sure, the thorough reader decides.
type Sure<T> = Option<T>;

/// Deeper than this, the thorough reader decides (serde_json's own limit is 128).
const MAX_DEPTH: u32 = 64;
/// Numbers longer than this, the thorough reader decides (no `f64` overflows below
/// 309 digits).
const MAX_NUMBER: usize = 100;

/// The body read in one pass, or `None` when the thorough reader must decide.
#[inline]
pub(super) fn decode<'a, P: PlanSource + ?Sized>(text: &'a str, plans: &P) -> Sure<Decoded<'a>> {
    let mut scan = Scan::new(text);
    let message = scan.message(plans)?;
    scan.whitespace();
    if scan.at != text.len() {
        return None;
    }
    Some(Decoded {
        messages: smallvec::smallvec![message],
        batch: false,
    })
}

/// A position in a text that holds valid UTF-8 (the body was checked before).
struct Scan<'a> {
    text: &'a str,
    at: usize,
    depth: u32,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan {
            text,
            at: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Sure<u8> {
        let next = *self.bytes().get(self.at)?;
        if next > b' ' {
            return Some(next);
        }
        self.whitespace();
        self.bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Sure<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    #[inline(always)]
    fn literal<const N: usize>(&mut self, word: &[u8; N]) -> Sure<()> {
        self.whitespace();
        let end = self.at + N;
        (self.bytes().get(self.at..end)? == word).then(|| self.at = end)
    }

    fn enter(&mut self) -> Sure<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A string with no escape, borrowed from the text.
    #[inline(always)]
    fn plain_string(&mut self) -> Sure<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let end = string_stop(self.bytes(), start);
        if self.bytes().get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        Some(&self.text[start..end])
    }

    /// Any string, checked: escapes well formed, surrogates paired, no control character.
    #[inline(always)]
    fn skip_string(&mut self) -> Sure<()> {
        let bytes = self.bytes();
        let mut i = self.at + 1;
        loop {
            i = string_stop(bytes, i);
            match *bytes.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some(());
                }
                b'\\' => i = escape_end(bytes, i + 1)?,
                _ => return None,
            }
        }
    }

    /// A number with no exponent: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`.
    fn number(&mut self) -> Sure<()> {
        let bytes = self.bytes();
        let start = self.at;
        let digits = |mut i: usize| {
            while let Some(b'0'..=b'9') = bytes.get(i) {
                i += 1;
            }
            i
        };
        let mut i = start + usize::from(bytes.get(start) == Some(&b'-'));
        i = match *bytes.get(i)? {
            b'0' => i + 1,
            b'1'..=b'9' => digits(i + 1),
            _ => return None,
        };
        if bytes.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) || i - start > MAX_NUMBER {
            return None;
        }
        self.at = i;
        Some(())
    }

    /// The text of one value, checked by [`Scan::skip`].
    fn value(&mut self) -> Sure<&'a str> {
        self.whitespace();
        let start = self.at;
        self.skip()?;
        Some(&self.text[start..self.at])
    }

    /// Skips one value, checked as strictly as the thorough reader checks it (duplicate
    /// keys aside: the thorough reader does not look for them either, in a value the
    /// policy does not read). Nested values are walked in a loop, one bit per open
    /// container telling objects from arrays.
    fn skip(&mut self) -> Sure<()> {
        let mut objects: u64 = 0;
        let mut depth = 0;
        loop {
            // A value starts here.
            match self.peek()? {
                b'"' => self.skip_string()?,
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                open @ (b'{' | b'[') => {
                    self.at += 1;
                    depth += 1;
                    if self.depth + depth > MAX_DEPTH {
                        return None;
                    }
                    let object = open == b'{';
                    objects = objects << 1 | u64::from(object);
                    let close = if object { b'}' } else { b']' };
                    if self.peek()? != close {
                        if object {
                            self.member_key()?;
                        }
                        continue;
                    }
                    self.at += 1;
                    depth -= 1;
                    objects >>= 1;
                }
                _ => return None,
            }
            // A value ended: what follows is a comma or the end of its container.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let object = objects & 1 == 1;
                match (self.peek()?, object) {
                    (b',', _) => {
                        self.at += 1;
                        if object {
                            self.member_key()?;
                        }
                        break;
                    }
                    (b'}', true) | (b']', false) => {
                        self.at += 1;
                        depth -= 1;
                        objects >>= 1;
                    }
                    _ => return None,
                }
            }
        }
    }

    /// A key and its colon, in an object walked by [`Scan::skip`].
    fn member_key(&mut self) -> Sure<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.skip_string()?;
        self.eat(b':')
    }

    /// The value at a node of the argument plan: scalars directly, anything else
    /// (and any string with an escape) as the thorough reader reads it.
    fn planned(&mut self, node: &PlanNode) -> Sure<ArgValue> {
        let text = self.value()?;
        let value = match text.as_bytes()[0] {
            b'-' | b'0'..=b'9' => ArgValue::Number(text.parse().ok()?),
            b't' => ArgValue::Bool(true),
            b'f' => ArgValue::Bool(false),
            b'n' => ArgValue::Null,
            b'"' if !text.contains('\\') => ArgValue::String(text[1..text.len() - 1].to_owned()),
            _ => return Guided(node).read(text).ok(),
        };
        Some(value)
    }

    /// An object whose keys must not repeat: `each` reads or skips the value of every
    /// key, in order.
    fn object(&mut self, mut each: impl FnMut(&mut Self, &'a str) -> Sure<()>) -> Sure<()> {
        self.eat(b'{')?;
        self.enter()?;
        let mut keys = Keys::default();
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                let key = self.plain_string()?;
                keys.insert(self.bytes(), self.at - key.len() - 1, key.len())?;
                self.eat(b':')?;
                each(self, key)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn message<P: PlanSource + ?Sized>(&mut self, plans: &P) -> Sure<Message<'a>> {
        let mut version_ok = false;
        let mut id = None;
        let mut method: Option<&'a str> = None;
        let mut params = None;
        let mut raw_params = None;
        let (mut has_result, mut has_error) = (false, false);
        self.object(|scan, key| {
            match key {
                "jsonrpc" => version_ok = scan.plain_string()? == "2.0",
                "id" => id = Some(scan.id()?),
                "method" => method = Some(scan.plain_string()?),
                "params" => match method {
                    Some(method) => params = Some(scan.params(method, plans)?),
                    None => raw_params = Some(scan.value()?),
                },
                "result" => {
                    scan.skip()?;
                    has_result = true;
                }
                "error" => {
                    scan.skip()?;
                    has_error = true;
                }
                _ => {
                    scan.skip()?;
                }
            }
            Some(())
        })?;
        if !version_ok {
            return None;
        }
        if let Some(raw) = raw_params {
            params = Some(Scan::new(raw).params(method?, plans)?);
        }
        let fields = Fields {
            id,
            method: method.map(Cow::Borrowed),
            params,
            has_result,
            has_error,
        };
        fields.into_message().ok()
    }

    /// A string or integer id, or `null`.
    fn id(&mut self) -> Sure<Option<Id>> {
        match self.peek()? {
            b'"' => Some(Some(Id::String(self.plain_string()?.to_owned()))),
            b'n' => self.literal(b"null").map(|()| None),
            _ => {
                let start = self.at;
                self.number()?;
                let text = &self.text[start..self.at];
                // What serde_json reads as an integer: a u64, or a negative i64 (`-0`
                // is a float to it).
                if let Ok(n) = text.parse::<u64>() {
                    return Some(Some(Id::Number(n.into())));
                }
                let n = text.parse::<i64>().ok().filter(|n| *n < 0)?;
                Some(Some(Id::Number(n.into())))
            }
        }
    }

    /// `params` of `method`: an object or `null` (an array is left to the thorough
    /// reader).
    fn params<P: PlanSource + ?Sized>(&mut self, method: &str, plans: &P) -> Sure<Params<'a>> {
        if self.peek()? == b'n' {
            return self.literal(b"null").map(|()| Params::default());
        }
        let is_call = method == "tools/call";
        let routing = routing_field(method);
        let mut name: Option<&'a str> = None;
        let mut routing_name = None;
        let mut arguments = None;
        let mut raw_arguments = None;
        let mut trace = None;
        self.object(|scan, key| {
            if key == "_meta" {
                trace = scan.meta()?;
            } else if is_call && key == "name" {
                name = Some(scan.plain_string()?);
            } else if is_call && key == "arguments" {
                match name {
                    Some(name) => arguments = Some(scan.arguments(plans.plan_for(name))?),
                    None => raw_arguments = Some(scan.value()?),
                }
            } else if !is_call && Some(key) == routing {
                routing_name = match scan.peek()? {
                    b'"' => Some(Cow::Borrowed(scan.plain_string()?)),
                    _ => scan.skip().map(|()| None)?,
                };
            } else {
                scan.skip()?;
            }
            Some(())
        })?;
        if !is_call {
            return Some(Params {
                call: None,
                routing_name,
                trace,
            });
        }
        let name = name?;
        if let Some(raw) = raw_arguments {
            arguments = Some(Scan::new(raw).arguments(plans.plan_for(name))?);
        }
        Some(Params {
            routing_name: Some(Cow::Borrowed(name)),
            call: Some(ToolCall {
                name: Cow::Borrowed(name),
                arguments: arguments.flatten(),
            }),
            trace,
        })
    }

    /// `params._meta`: the trace context it holds, if any (any other value is skipped).
    fn meta(&mut self) -> Sure<Option<TraceParent>> {
        if self.peek()? != b'{' {
            return self.skip().map(|()| None);
        }
        let mut trace = None;
        self.object(|scan, key| {
            if key == "traceparent" && scan.peek()? == b'"' {
                trace = TraceParent::parse(scan.plain_string()?);
            } else {
                scan.skip()?;
            }
            Some(())
        })?;
        Some(trace)
    }

    /// `params.arguments`: `null` (`None`), or an object of which only what `plan`
    /// names is kept.
    fn arguments(&mut self, plan: &ArgPlan) -> Sure<Option<ArgValue>> {
        if self.peek()? == b'n' {
            return self.literal(b"null").map(|()| None);
        }
        let root = (!plan.is_empty()).then(|| plan.root());
        if root.is_some_and(|root| root.whole) {
            let value = ArgValue::parse_exact(self.value()?).ok()?;
            return matches!(value, ArgValue::Object(_)).then_some(Some(value));
        }
        let mut object = BTreeMap::new();
        self.object(|scan, key| {
            match root.and_then(|root| root.child_for_key(key)) {
                Some(child) => {
                    let value = scan.planned(child)?;
                    object.insert(key.to_owned(), value);
                }
                None => {
                    scan.skip()?;
                }
            }
            Some(())
        })?;
        Some(Some(ArgValue::Object(object)))
    }
}

/// The keys of one object (which have no escapes), as fingerprints of their bytes.
/// Equal keys have equal fingerprints; so do a few different keys, which only means
/// that the thorough reader decides, a little slower.
#[derive(Default)]
struct Keys {
    few: [u64; FEW_KEYS],
    count: usize,
    many: Option<HashSet<u64>>,
}

const FEW_KEYS: usize = 16;

impl Keys {
    /// Records the key of `len` bytes at `at` in `bytes`; `None` when its fingerprint
    /// was there already.
    fn insert(&mut self, bytes: &[u8], at: usize, len: usize) -> Sure<()> {
        let print = fingerprint(bytes, at, len);
        if let Some(many) = &mut self.many {
            return many.insert(print).then_some(());
        }
        if self.few[..self.count].contains(&print) {
            return None;
        }
        if self.count < FEW_KEYS {
            self.few[self.count] = print;
            self.count += 1;
        } else {
            let mut many: HashSet<u64> = self.few.iter().copied().collect();
            many.insert(print);
            self.many = Some(many);
        }
        Some(())
    }
}

/// The bytes of a key of `len` bytes at `at`: the key itself when it is shorter than
/// eight bytes (with its length), otherwise its first and last eight bytes mixed with
/// its length.
fn fingerprint(bytes: &[u8], at: usize, len: usize) -> u64 {
    let word = |from: usize| match bytes.get(from..from + 8) {
        Some(eight) => u64::from_le_bytes(eight.try_into().expect("eight bytes")),
        // Near the end of the text: what there is (the key's own bytes are there).
        None => tail_word(&bytes[from.min(bytes.len())..]),
    };
    let first = word(at);
    if len < 8 {
        (first & ((1 << (8 * len)) - 1)) | (len as u64) << 56
    } else {
        first
            ^ word(at + len - 8).rotate_left(29)
            ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// Fewer than eight bytes, zero-padded into a word.
#[cold]
fn tail_word(tail: &[u8]) -> u64 {
    let mut eight = [0; 8];
    eight[..tail.len()].copy_from_slice(tail);
    u64::from_le_bytes(eight)
}

/// The position of the first `"`, `\` or control character at or after `from` (the
/// length of `bytes` when there is none), eight bytes at a time.
#[inline(always)]
fn string_stop(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    /// The high bit of every byte of `word` that is `"`, `\\` or below 0x20 (and perhaps
    /// of bytes above one that is, which never matters: only the lowest is used).
    ///
    /// For a byte below 0x80, `x - 1` sets the high bit only when `x` is zero, and
    /// `x - 0x20` only when `x` is below 0x20; bytes from 0x80 up are masked out, and a
    /// borrow only ever leaves a byte that is itself a stop.
    fn stops(word: u64) -> u64 {
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        (quote.wrapping_sub(ONES) | backslash.wrapping_sub(ONES) | word.wrapping_sub(ONES * 0x20))
            & !word
            & (ONES << 7)
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
    let mut i = from;
    while i + 16 <= bytes.len() {
        let (low, high) = (stops(word(i)), stops(word(i + 8)));
        if low | high != 0 {
            let first = if low != 0 {
                low.trailing_zeros()
            } else {
                64 + high.trailing_zeros()
            };
            return i + (first / 8) as usize;
        }
        i += 16;
    }
    while let Some(&b) = bytes.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

/// Where an escape whose letter is at `at` (just after the `\`) ends, when it is well
/// formed: a `\u` high surrogate must be followed by a `\u` low surrogate.
fn escape_end(bytes: &[u8], at: usize) -> Sure<usize> {
    match *bytes.get(at)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 1),
        b'u' => match hex4(bytes, at + 1)? {
            0xD800..=0xDBFF => {
                let low = (bytes.get(at + 5..at + 7)? == b"\\u").then(|| hex4(bytes, at + 7))??;
                (0xDC00..=0xDFFF).contains(&low).then_some(at + 11)
            }
            0xDC00..=0xDFFF => None,
            _ => Some(at + 5),
        },
        _ => None,
    }
}

fn hex4(bytes: &[u8], at: usize) -> Sure<u32> {
    bytes
        .get(at..at + 4)?
        .iter()
        .try_fold(0, |n, &b| Some(n * 16 + char::from(b).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::super::{PlanSource, ReadAll};
    use crate::Policy;

    /// A policy whose rules read parts of the arguments: `t` reads `items.1.price` and
    /// `cost`, `u` reads nothing.
    fn policy() -> Policy {
        r#"{"version":"1","default":"deny","tools":{"t":{
            "deny_if":[{"conditions":[{"path":"args.items.1.price","op":"gt","value":1}]}],
            "limits":[{"counter":"c","window":"day","max":100,"increment_from":"args.cost"}]},
            "u":{}}}"#
            .parse()
            .unwrap()
    }

    /// The fast reader's answer, checked against the thorough reader's whenever it
    /// gives one.
    #[track_caller]
    fn fast<P: PlanSource + ?Sized>(body: &str, plans: &P) -> bool {
        match super::decode(body, plans) {
            Some(decoded) => {
                assert_eq!(
                    Ok(decoded),
                    crate::jsonrpc::thorough::decode(body, plans),
                    "{body}"
                );
                true
            }
            None => false,
        }
    }

    #[test]
    fn the_bodies_agents_send_take_one_pass() {
        let policy = policy();
        let many_keys: Vec<String> = (0..40).map(|i| format!(r#""key{i}":{i}"#)).collect();
        for body in [
            r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"t","arguments":{"cost":3,"note":"long text","items":[{"price":1},{"price":5,"sku":"x"},{"price":9}]},"_meta":{"progressToken":42}}}"#,
            // Whitespace and newlines, as a pretty-printer writes them.
            "{\n  \"jsonrpc\": \"2.0\",\r\n\t\"id\": \"a-1\",\n  \"method\": \"tools/call\",\n  \"params\": {\n    \"name\": \"t\",\n    \"arguments\": { \"cost\": 2.50 }\n  }\n}\n",
            // Fields in any order: params before method, arguments before name.
            r#"{"params":{"arguments":{"cost":1,"items":[]},"name":"t"},"id":-7,"method":"tools/call","jsonrpc":"2.0"}"#,
            // Escapes, surrogate pairs and non-ASCII text in values only skipped.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"u","arguments":{"memo":"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00 é 😀","deep":[[[{"a":[true,false,null,-0.5,0,1.25]}]]]}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"unknown","arguments":null}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"abc"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///x"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":{"not":"a string"}}}"#,
            r#"{"jsonrpc":"2.0","id":3,"result":{"content":[],"isError":false}}"#,
            r#"{"jsonrpc":"2.0","id":"x","error":{"code":-32000,"message":"no"}}"#,
            // Keys that end within eight bytes of the end of the body.
            r#"{"jsonrpc":"2.0","id":1,"result":{"a":1}}"#,
            r#"{"id":1,"result":{},"jsonrpc":"2.0","x":1}"#,
            &format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{{}}}}}}}"#,
                many_keys.join(",")
            ),
        ] {
            assert!(fast(body, &policy), "not read in one pass: {body}");
            assert!(fast(body, &ReadAll), "not read in one pass: {body}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_the_thorough_reader() {
        let call = |arguments: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"u","arguments":{arguments}}}}}"#
            )
        };
        let deep = call(&format!(r#"{{"a":{}1{}}}"#, "[".repeat(70), "]".repeat(70)));
        for body in [
            // What the thorough reader refuses.
            call(r#"{"x":"\ud800"}"#),
            call(r#"{"x":"\udc00\ud800"}"#),
            call(r#"{"x":"\ud800\u0041"}"#),
            call(r#"{"x":"\q"}"#),
            call(r#"{"x":"\u12g4"}"#),
            call("{\"x\":\"a\u{1}b\"}"),
            call("{\"x\":\"tab\tin a string\"}"),
            call(r#"{"x":01}"#),
            call(r#"{"x":-}"#),
            call(r#"{"x":1.}"#),
            call(r#"{"x":.5}"#),
            call(r#"{"x":+1}"#),
            call(r#"{"x":1,}"#),
            call(r#"{"x":[1,]}"#),
            call(r#"{"x":[1 2]}"#),
            call(r#"{"x":{"a" 1}}"#),
            call(r#"{"x":tru}"#),
            call(r#"{"x":1,"x":2}"#),
            call(r#"[1]"#),
            call(r#""x""#),
            deep,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"u","name":"t"}}"#
                .into(),
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#.into(),
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.into(),
            r#"{"jsonrpc":"2.0","id":-0,"method":"ping"}"#.into(),
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#.into(),
            r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}"#.into(),
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#.into(),
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#.into(),
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"} "#.to_owned() + "x",
            "\u{feff}{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}".into(),
            // What it reads, but not in one pass.
            call(r#"{"x":1e3}"#),
            call(&format!(r#"{{"x":{}}}"#, "9".repeat(400))),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\u0061me":"u"}}"#.into(),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u0074"}}"#.into(),
            r#"{"jsonrpc":"2.0","id":"\u0031","method":"ping"}"#.into(),
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.into(),
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#.into(),
        ] {
            assert!(!fast(&body, &ReadAll), "read in one pass: {body}");
            assert!(!fast(&body, &policy()), "read in one pass: {body}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-z\"\\\\/\u{0}-\u{1f}\u{7f}-\u{ffff}😀]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("cost|items|price|[a-z]{1,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Wherever the fast reader answers, its answer is the thorough reader's: on
        /// valid bodies (compact or pretty, in any field order) and on each of them with
        /// a byte inserted or the rest cut off.
        #[test]
        fn the_fast_reader_agrees_with_the_thorough_one(
            args in json_value(),
            name in "t|u|v|\u{e9}",
            pretty in any::<bool>(),
            order in any::<bool>(),
            cut in 0usize..600,
            insert in any::<u8>(),
        ) {
            let args = if pretty {
                serde_json::to_string_pretty(&json!({"cost": 1, "x": args})).unwrap()
            } else {
                json!({"items": args}).to_string()
            };
            let body = if order {
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{args}}}}}"#)
            } else {
                format!(r#"{{"params":{{"arguments":{args},"name":"{name}"}},"method":"tools/call","id":"r","jsonrpc":"2.0"}}"#)
            };
            let policy = policy();
            fast(&body, &policy);
            fast(&body, &ReadAll);
            let at = cut.min(body.len());
            let mut mangled = body.clone().into_bytes();
            mangled.insert(at, insert);
            if let Ok(mangled) = std::str::from_utf8(&mangled) {
                fast(mangled, &policy);
                fast(mangled, &ReadAll);
            }
            if let Some(cut) = body.get(..at) {
                fast(cut, &policy);
            }
        }
    }
}
