//! Removing hidden tools from `tools/list` results, in JSON bodies and SSE events.
//!
//! A message that may carry a tool list is read the way a client reads it, leniently
//! (a leading BOM, invalid UTF-8 and lone surrogate escapes are what JavaScript's
//! decoders accept), and then either filtered or, when even that reading fails,
//! withheld: replaced by a JSON-RPC error. It is never passed on unread.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::{Value, json};

use std::sync::Arc;

use super::config::SharedObserver;
use super::params::ToolHeaders;
use super::sse::event_fields;
use super::tasks::{Owned, strip_foreign};
use crate::jsonrpc::INTERNAL_ERROR;
use crate::observe::Event;
use crate::pins::{Drift, Pins};
use crate::policy::Policy;
use crate::source::Source;

/// What filtering an answer needs: the policy whose hidden tools are removed, and the
/// observer told about every answer withheld instead of passed on unread.
#[derive(Clone)]
pub(crate) struct Filter {
    pub policy: Arc<Policy>,
    pub observer: SharedObserver,
    /// Mark a list the layer filtered `cacheScope: "private"` (MCP 2026-07-28 caches
    /// lists: a shared cache must not hand one caller's list to another).
    pub private: bool,
    /// Remove hidden tools (the policy hides some, and is enforced). When false, the
    /// answer is only read, to learn, and passes unchanged whatever happens.
    pub hide: bool,
    /// Learn the tools' `Mcp-Param-*` headers from the lists read.
    pub learn: Option<Arc<ToolHeaders>>,
    /// Remove other grants' tasks from task lists (a `tasks/list` request's answer).
    pub own_tasks: Option<Owned>,
    /// Check every listed tool against its pin.
    pub pins: Option<PinFilter>,
    /// Also remove tools the policy never allows (no rule under `default: deny`).
    pub only_allowed: bool,
}

/// The pins every listed tool is checked against.
#[derive(Clone)]
pub(crate) struct PinFilter {
    pub pins: Arc<Pins>,
    /// Where the layer records the definitions it saw listed.
    pub source: Arc<Source>,
    /// Withhold a tool that differs from its pin (false in monitor mode: report only).
    pub withhold: bool,
}

impl Filter {
    /// True when the filter may rewrite an answer, and so withholds what it cannot read.
    pub fn rewrites(&self) -> bool {
        self.hide || self.own_tasks.is_some() || self.pins.as_ref().is_some_and(|p| p.withhold)
    }

    /// Reports an answer that may list tools, withheld (replaced by an error) because
    /// of `reason`.
    pub fn withheld(&self, reason: &str) {
        self.observer.0.observe(&Event::ListWithheld { reason });
    }
}

/// A JSON-RPC message or batch that may list tools, with hidden tools removed. `None`:
/// nothing is hidden in it, pass the original bytes. `Some(text)`: the rewritten
/// message, or a JSON-RPC error in its place when it could not be read.
pub(crate) fn filter_message(data: &[u8], filter: &Filter) -> Option<String> {
    let may_list_tasks = filter.own_tasks.is_some() && memmem(data, b"tasks");
    if !(might_list_tools(data) || may_list_tasks) {
        return None;
    }
    let text = client_text(data);
    match serde_json::from_str::<Value>(&text) {
        Ok(mut message) => {
            if let Some(learn) = &filter.learn {
                learn.learn(&message);
            }
            let mut removed = 0;
            if filter.hide {
                let policy = &*filter.policy;
                let keep = |name: &str| match filter.only_allowed {
                    true => !policy.never_allows(name),
                    false => !policy.is_hidden(name),
                };
                removed += strip_hidden(&mut message, &keep, filter.private);
            }
            if let Some(owned) = &filter.own_tasks {
                removed += strip_foreign(&mut message, &|id| owned.owns(id));
            }
            if let Some(pins) = &filter.pins {
                removed += strip_unreviewed(&mut message, pins, filter);
            }
            (removed > 0).then(|| message.to_string())
        }
        Err(_) if !filter.rewrites() => None,
        Err(err) => {
            // A client may still read a tool list out of it (JavaScript reads `1e400`
            // as Infinity and nests deeper than serde_json): withhold it.
            filter.withheld(&format!(
                "a message that may list tools could not be read: {err}"
            ));
            Some(withheld(recover_id(&text), &err).to_string())
        }
    }
}

/// The text a JavaScript client decodes from `data`: without a leading BOM, invalid
/// UTF-8 as U+FFFD (as `TextDecoder` does), and lone surrogate escapes (which
/// JavaScript keeps in strings and serde_json refuses) as `\ufffd`. A lone surrogate can
/// never be part of a name the policy spells, so the replacement changes no match.
fn client_text(data: &[u8]) -> Cow<'_, str> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    match String::from_utf8_lossy(data) {
        Cow::Borrowed(text) => {
            replace_lone_surrogates(text).map_or(Cow::Borrowed(text), Cow::Owned)
        }
        Cow::Owned(text) => Cow::Owned(replace_lone_surrogates(&text).unwrap_or(text)),
    }
}

/// `text` with every `\uXXXX` escape of a lone surrogate replaced by `\ufffd`; `None`
/// when it has none. Backslashes only occur inside strings in JSON, so every escape is
/// found by reading them in order.
fn replace_lone_surrogates(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = bytes.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let escape = |at: usize| bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u');
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(n) = bytes[i..].iter().position(|&b| b == b'\\') {
        i += n;
        let Some(code) = escape(i).then(|| unit(i + 2)).flatten() else {
            i += 2; // `\"`, `\\`, `\n`, ...: the escaped character is not a backslash
            continue;
        };
        let lone = match code {
            0xD800..=0xDBFF => {
                let paired =
                    escape(i + 6) && unit(i + 8).is_some_and(|u| (0xDC00..=0xDFFF).contains(&u));
                if paired {
                    i += 12;
                    continue;
                }
                true
            }
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[copied..i]);
            out.push_str("\\ufffd");
            copied = i + 6;
        }
        i += 6;
    }
    out.map(|mut out| {
        out.push_str(&text[copied..]);
        out
    })
}

/// The `id` of a message that does not parse, read without limits on depth or number
/// range (serde_json skips values iteratively); `null` when it cannot be found.
fn recover_id(text: &str) -> Value {
    struct IdOnly<'a>(&'a RefCell<Value>);
    impl<'de> Visitor<'de> for IdOnly<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON-RPC message")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == "id" {
                    let id: Value = map.next_value()?;
                    if id.is_string() || id.is_number() {
                        *self.0.borrow_mut() = id;
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        }
    }
    let id = RefCell::new(Value::Null);
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = de::Deserializer::deserialize_map(&mut de, IdOnly(&id));
    id.into_inner()
}

/// The JSON-RPC error that takes the place of a message the layer could not read.
fn withheld(id: Value, err: &serde_json::Error) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": INTERNAL_ERROR,
            "message": format!(
                "the policy layer withheld a message that may list tools, because it could not read it ({err})"
            ),
        }
    })
}

/// Removes hidden tools from every tools/list-shaped result in `message` (a JSON-RPC
/// message or a batch): those whose name `keep` refuses, and entries without a string
/// name (they cannot be checked). Returns how many tools were removed.
pub(crate) fn strip_hidden(
    message: &mut Value,
    keep: &dyn Fn(&str) -> bool,
    private: bool,
) -> usize {
    retain_tools(message, private, &mut |tool| match tool.get("name") {
        Some(Value::String(name)) => keep(name),
        _ => false,
    })
}

/// Checks every tool of every tools/list-shaped result in `message` against its pin,
/// reporting drift; removes those that differ (or have none) when `pins.withhold`.
/// Returns how many tools were removed.
fn strip_unreviewed(message: &mut Value, pins: &PinFilter, filter: &Filter) -> usize {
    let observer = &*filter.observer.0;
    let mut report = |drift: &Drift<'_>| {
        observer.observe(&Event::ToolDrift {
            tool: drift.tool,
            pinned: drift.pinned.as_deref(),
            current: &drift.current,
            fields: &drift.fields,
            enforced: pins.withhold,
        });
    };
    let seen = pins.source.seen();
    retain_tools(message, filter.private, &mut |tool| {
        seen.listed(&pins.pins, tool, &mut report) || !pins.withhold
    })
}

/// Keeps, in every tools/list-shaped result of `message` (a JSON-RPC message or a
/// batch), the tools `keep` accepts; a result that lost any is marked
/// `cacheScope: "private"` when `private`. Returns how many tools were removed.
fn retain_tools(message: &mut Value, private: bool, keep: &mut dyn FnMut(&Value) -> bool) -> usize {
    match message {
        Value::Array(items) => items
            .iter_mut()
            .map(|m| retain_tools(m, private, keep))
            .sum(),
        Value::Object(object) => {
            let Some(result) = object.get_mut("result").and_then(|r| r.as_object_mut()) else {
                return 0;
            };
            let Some(Value::Array(tools)) = result.get_mut("tools") else {
                return 0;
            };
            let before = tools.len();
            tools.retain(|tool| keep(tool));
            let removed = before - tools.len();
            if removed > 0 && private {
                result.insert("cacheScope".to_owned(), Value::from("private"));
            }
            removed
        }
        _ => 0,
    }
}

/// True when a message might hold a tool list: it mentions `tools`, or has escapes
/// that could spell it.
pub(crate) fn might_list_tools(data: &[u8]) -> bool {
    memmem(data, b"tools") || memmem(data, b"\\u")
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Filters one SSE event. `None`: pass the event through untouched. `Some(bytes)`: the
/// rewritten event (possibly empty, when it had to be dropped).
pub(crate) fn filter_event(event: &[u8], filter: &Filter) -> Option<Bytes> {
    let may_list_tasks = filter.own_tasks.is_some() && memmem(event, b"tasks");
    if !(might_list_tools(event) || may_list_tasks) {
        return None;
    }
    // As a client decodes the stream; a BOM can only be where the stream starts.
    let text = String::from_utf8_lossy(event);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let (data, other_lines) = event_fields(text);
    let message = filter_message(data?.as_bytes(), filter)?;
    let mut out = String::with_capacity(event.len());
    for line in other_lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&message);
    out.push_str("\n\n");
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::observe::Observer;

    /// A filter for `policy` whose withheld answers are recorded.
    fn filter(policy: &str) -> (Filter, Arc<Mutex<Vec<String>>>) {
        #[derive(Default, Clone)]
        struct Withheld(Arc<Mutex<Vec<String>>>);
        impl Observer for Withheld {
            fn observe(&self, event: &Event<'_>) {
                if let Event::ListWithheld { reason } = event {
                    self.0.lock().unwrap().push(reason.to_string());
                }
            }
        }
        let withheld = Withheld::default();
        let filter = Filter {
            policy: Arc::new(policy.parse().unwrap()),
            observer: SharedObserver(Arc::new(withheld.clone())),
            private: false,
            hide: true,
            learn: None,
            own_tasks: None,
            pins: None,
            only_allowed: false,
        };
        (filter, withheld.0)
    }

    /// A tool list with `secret_b` hidden, in the form `form` (the `{}` is a place for
    /// an extra member of the result).
    fn unusual(form: &str) -> Vec<u8> {
        let tools = r#"[{"name":"a","description":"DESC"},{"name":"secret_b"}]"#;
        let (tools, extra, prefix): (String, String, &[u8]) = match form {
            "bom" => (tools.replace("DESC", "d"), String::new(), b"\xEF\xBB\xBF"),
            "surrogate" => (tools.replace("DESC", "cut \\ud83d"), String::new(), b""),
            "low-surrogate" => (
                tools.replace("DESC", "\\udc00 and \\ud83d\\ude00"),
                String::new(),
                b"",
            ),
            "deep" => {
                let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
                (
                    tools.replace("DESC", "d"),
                    format!(r#","_meta":{{"deep":{deep}}}"#),
                    b"",
                )
            }
            "1e400" => (
                tools.replace("DESC", "d"),
                r#","_meta":{"n":1e400}"#.to_owned(),
                b"",
            ),
            "invalid-utf8" => (tools.replace("DESC", "X"), String::new(), b""),
            other => panic!("{other}"),
        };
        let message = format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"tools":{tools}{extra}}}}}"#);
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(message.as_bytes());
        if form == "invalid-utf8" {
            let at = bytes.iter().position(|&b| b == b'X').unwrap();
            bytes[at] = 0xff;
        }
        bytes
    }

    #[test]
    fn unusual_tool_lists_are_filtered_or_withheld_never_passed_unread() {
        let (policy, withheld) = filter(r#"{"version":"1","default":"allow","hide":["secret*"]}"#);
        for form in ["bom", "surrogate", "low-surrogate", "invalid-utf8"] {
            let out = filter_message(&unusual(form), &policy).expect(form);
            let message: Value = serde_json::from_str(&out).expect(form);
            assert_eq!(message["id"], 7, "{form}");
            assert_eq!(
                message["result"]["tools"].as_array().unwrap().len(),
                1,
                "{form}"
            );
            assert_eq!(message["result"]["tools"][0]["name"], "a", "{form}");
        }
        for form in ["deep", "1e400"] {
            let out = filter_message(&unusual(form), &policy).expect(form);
            let message: Value = serde_json::from_str(&out).expect(form);
            assert_eq!(message["id"], 7, "{form}: the id is kept");
            assert_eq!(message["error"]["code"], INTERNAL_ERROR, "{form}");
            assert!(!out.contains("secret"), "{form}");
            let reported = withheld.lock().unwrap().pop().expect("reported");
            assert!(reported.contains("could not be read"), "{form}: {reported}");
        }
        assert!(
            withheld.lock().unwrap().is_empty(),
            "filtered lists are not withheld"
        );
        // The same as SSE events, with the stream's fields kept.
        for form in ["bom", "surrogate", "invalid-utf8", "deep", "1e400"] {
            let mut event = b"id: 3\nevent: message\ndata: ".to_vec();
            if form == "bom" {
                // At the start of a stream the BOM comes before the first field.
                event = b"\xEF\xBB\xBFid: 3\nevent: message\ndata: ".to_vec();
                event.extend_from_slice(&unusual(form)[3..]);
            } else {
                event.extend_from_slice(&unusual(form));
            }
            event.extend_from_slice(b"\n\n");
            let out = filter_event(&event, &policy).expect(form);
            let out = std::str::from_utf8(&out).unwrap();
            assert!(
                out.starts_with("id: 3\nevent: message\ndata: {"),
                "{form}: {out}"
            );
            assert!(!out.contains("secret"), "{form}: {out}");
        }
        // Not a tool list, and nothing hidden: untouched whatever its form.
        assert!(
            filter_message(
                b"\xEF\xBB\xBF{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}",
                &policy
            )
            .is_none()
        );
        let clean =
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","description":"\ud83d"}]}}"#;
        assert!(filter_message(clean.as_bytes(), &policy).is_none());
    }

    #[test]
    fn lone_surrogates_are_found_escape_by_escape() {
        let r = |s: &str| replace_lone_surrogates(s);
        assert_eq!(r(r#""\ud83d\ude00""#), None, "a pair");
        assert_eq!(r(r#""\\ud83d""#), None, "an escaped backslash, then text");
        assert_eq!(r(r#""\u0041\n\"""#), None);
        assert_eq!(r(r#""a\ud83d""#).as_deref(), Some(r#""a\ufffd""#));
        assert_eq!(
            r(r#""\ude00\ud83d\ude00\ud83d""#).as_deref(),
            Some(r#""\ufffd\ud83d\ude00\ufffd""#)
        );
        assert_eq!(r(r#""\\\ud800x""#).as_deref(), Some(r#""\\\ufffdx""#));
        assert_eq!(r(r#""\ud83d\u0041""#).as_deref(), Some(r#""\ufffd\u0041""#));
    }

    #[test]
    fn filters_only_events_with_hidden_tools() {
        let (policy, _withheld) = filter(r#"{"version":"1","default":"allow","hide":["secret*"]}"#);
        let listing = "id: 7\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"},{\"name\":\"secret_b\"}]}}\n\n";
        let out = filter_event(listing.as_bytes(), &policy).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "id: 7\nevent: message\ndata: {\"id\":1,\"jsonrpc\":\"2.0\",\"result\":{\"tools\":[{\"name\":\"a\"}]}}\n\n"
        );
        let clean =
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"a\"}]}}\n\n";
        assert!(filter_event(clean.as_bytes(), &policy).is_none());
        let other = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n";
        assert!(filter_event(other.as_bytes(), &policy).is_none());
        // Multi-line data and escaped names are read as a client would read them.
        let multi = "data: {\"jsonrpc\":\"2.0\",\"id\":1,\ndata: \"result\":{\"tools\":[{\"name\":\"secret\\u005fb\"}]}}\n\n";
        let out = filter_event(multi.as_bytes(), &policy).unwrap();
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
    }
}
