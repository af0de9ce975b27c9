//! Tool pins: the digests of the tool definitions an operator reviewed.
//!
//! A policy allows tools by name, but an agent decides what to call from each tool's
//! description and schema, which a server can change at any time (a "rug pull"). A lock
//! file (`mcp-policy pin`) records a digest of each reviewed definition; the layer
//! withholds from every tool list a tool whose definition differs from its pin, or
//! that has none, and denies calls to it.
//!
//! A definition's digest is the SHA-256 of its canonical JSON (object keys sorted, no
//! whitespace, strings and numbers as serde_json writes them) restricted to the fields
//! an agent reads: `name`, `title`, `description`, `inputSchema`, `outputSchema`,
//! `annotations`. Each field also has a digest of its own, so drift names the fields
//! that changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::PolicyError;
use crate::policy::document::UniqueMap;
use crate::policy::parse;

/// The fields of a tool definition a pin covers, in the order drift names them.
pub const FIELDS: [&str; 6] = [
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];

/// The most tools whose current definition a layer remembers.
const MAX_SEEN: usize = 10_000;

/// A tool definition's digests: the whole definition's, and each present field's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolDigest {
    /// The digest of the whole definition (the pinned fields).
    pub whole: [u8; 32],
    /// The digest of each field present, in [`FIELDS`] order.
    pub fields: Vec<(&'static str, [u8; 32])>,
}

impl ToolDigest {
    /// The digests of `tool`, a definition as a server lists it.
    pub fn of(tool: &Value) -> ToolDigest {
        let mut whole = String::from("{");
        let mut fields = Vec::new();
        // FIELDS are not in key order: sort them for the canonical object.
        let mut present: Vec<(&'static str, &Value)> = FIELDS
            .iter()
            .filter_map(|&f| Some((f, tool.get(f).filter(|v| !v.is_null())?)))
            .collect();
        for &(field, value) in &present {
            fields.push((field, sha256(canonical(value).as_bytes())));
        }
        present.sort_by_key(|(field, _)| *field);
        for (i, (field, value)) in present.iter().enumerate() {
            if i > 0 {
                whole.push(',');
            }
            whole.push_str(&Value::from(*field).to_string());
            whole.push(':');
            write_canonical(value, &mut whole);
        }
        whole.push('}');
        ToolDigest {
            whole: sha256(whole.as_bytes()),
            fields,
        }
    }
}

/// The canonical JSON of `value`: keys sorted at every level, no whitespace.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(&String, &Value)> = object.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `bytes` as lower-case hex digits.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// A SHA-256 written as 64 hex digits (either case).
pub(crate) fn unhex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// One reviewed tool.
#[derive(Debug, Clone)]
pub struct Pin {
    /// The digest of the reviewed definition.
    pub digest: [u8; 32],
    /// The digest of each of its fields.
    pub fields: BTreeMap<String, [u8; 32]>,
}

impl Pin {
    /// The fields of `current` that differ from the pinned ones (present in one and
    /// not the other, or with another digest).
    pub fn changed(&self, current: &ToolDigest) -> Vec<&'static str> {
        FIELDS
            .iter()
            .copied()
            .filter(|field| {
                let now = current
                    .fields
                    .iter()
                    .find(|(f, _)| f == field)
                    .map(|(_, d)| d);
                now != self.fields.get(*field)
            })
            .collect()
    }
}

/// The reviewed tools of a lock file.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    tools: HashMap<Box<str>, Pin>,
    file: Option<PathBuf>,
}

impl Pins {
    /// Loads a lock file; the error names the file, the JSON Pointer and the line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Pins, PolicyError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| PolicyError::io(path, &e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let error = std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error());
            PolicyError::io(path, &error)
        })?;
        let mut pins = Pins::from_json(&text).map_err(|e| e.in_file(path))?;
        pins.file = Some(path.to_path_buf());
        Ok(pins)
    }

    /// Reads a lock file's text.
    pub fn from_json(text: &str) -> Result<Pins, PolicyError> {
        let doc: LockDoc = parse(text)?;
        if doc.version != "1" {
            return Err(PolicyError::invalid(
                "/version",
                format!(
                    "unsupported version {:?}: only \"1\" is supported",
                    doc.version
                ),
            ));
        }
        let mut tools = HashMap::new();
        for (name, pin) in doc.tools.0 {
            let at = |rest: &[&str]| {
                let mut tokens = vec![name.as_str()];
                tokens.extend_from_slice(rest);
                crate::error::pointer("/tools", &tokens)
            };
            let bad = |pointer: String| {
                PolicyError::invalid(pointer, "expected 64 hex digits (a SHA-256)")
            };
            let digest = unhex(&pin.sha256).ok_or_else(|| bad(at(&["sha256"])))?;
            let mut fields = BTreeMap::new();
            for (field, text) in pin.fields {
                let digest = unhex(&text).ok_or_else(|| bad(at(&["fields", &field])))?;
                fields.insert(field, digest);
            }
            tools.insert(name.into_boxed_str(), Pin { digest, fields });
        }
        Ok(Pins { tools, file: None })
    }

    /// The pin of `tool`.
    pub fn get(&self, tool: &str) -> Option<&Pin> {
        self.tools.get(tool)
    }

    /// How many tools are pinned.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when no tool is pinned.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The file the pins were loaded from.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The lock file for the tools a server listed (`tools`: their definitions as
    /// listed), with the server's name and version and the time of pinning.
    pub fn lock(server: (&str, &str), tools: &[Value], pinned_at: &str) -> Value {
        let mut entries = serde_json::Map::new();
        let mut named: Vec<(&str, &Value)> = tools
            .iter()
            .filter_map(|tool| Some((tool.get("name")?.as_str()?, tool)))
            .collect();
        named.sort_by_key(|(name, _)| *name);
        for (name, tool) in named {
            let digest = ToolDigest::of(tool);
            let fields: serde_json::Map<String, Value> = digest
                .fields
                .iter()
                .map(|(field, d)| ((*field).to_owned(), json!(hex(d))))
                .collect();
            entries.insert(
                name.to_owned(),
                json!({"sha256": hex(&digest.whole), "fields": fields}),
            );
        }
        json!({
            "version": "1",
            "server": {"name": server.0, "version": server.1},
            "pinned_at": pinned_at,
            "tools": entries,
        })
    }

    /// How `tools` (a server's current definitions) differ from the pins, one line per
    /// tool, sorted: `+ name` (not pinned), `- name` (pinned, no longer listed),
    /// `~ name: field, field` (changed).
    pub fn diff(&self, tools: &[Value]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut listed = HashSet::new();
        for tool in tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            listed.insert(name);
            let digest = ToolDigest::of(tool);
            match self.get(name) {
                None => lines.push((name.to_owned(), format!("+ {name}"))),
                Some(pin) if pin.digest != digest.whole => {
                    let fields = pin.changed(&digest).join(", ");
                    lines.push((name.to_owned(), format!("~ {name}: {fields}")));
                }
                Some(_) => {}
            }
        }
        for name in self.tools.keys() {
            if !listed.contains(&**name) {
                lines.push((name.to_string(), format!("- {name}")));
            }
        }
        lines.sort();
        lines.into_iter().map(|(_, line)| line).collect()
    }

    /// The JSON Schema of the lock file (feature `schema`).
    #[cfg(feature = "schema")]
    #[cfg_attr(docsrs, doc(cfg(feature = "schema")))]
    pub fn json_schema() -> Value {
        let schema = schemars::schema_for!(LockDoc);
        serde_json::to_value(schema).expect("a schema is JSON")
    }
}

/// Whether a call to `tool` may go on to the policy, under `pins`, knowing the
/// definitions the layer saw listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPin {
    /// Pinned, and its last listed definition (if any was seen) matches.
    Reviewed,
    /// Its last listed definition differs from its pin.
    Changed,
    /// It has no pin.
    Unpinned,
}

/// What the layer knows of the tools' definitions: the last digest listed for each
/// tool, and the drifts already reported.
#[derive(Debug, Default)]
pub struct Seen {
    digests: RwLock<HashMap<Box<str>, [u8; 32]>>,
    reported: Mutex<HashSet<(Box<str>, [u8; 32])>>,
}

/// A tool definition that differs from its pin, or has none.
#[derive(Debug)]
pub struct Drift<'a> {
    /// The tool.
    pub tool: &'a str,
    /// Its pinned digest, if it has a pin.
    pub pinned: Option<String>,
    /// The digest of its definition now.
    pub current: String,
    /// The fields that differ (all present ones when there is no pin).
    pub fields: Vec<&'static str>,
}

impl Seen {
    /// Records the definition `tool` was listed with; true when it matches its pin.
    /// `report` is told of a drift the first time it is seen with this digest.
    pub fn listed(&self, pins: &Pins, tool: &Value, report: &mut dyn FnMut(&Drift<'_>)) -> bool {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return false;
        };
        let digest = ToolDigest::of(tool);
        {
            let mut digests = self.digests.write().unwrap_or_else(PoisonError::into_inner);
            if digests.len() < MAX_SEEN || digests.contains_key(name) {
                digests.insert(name.into(), digest.whole);
            }
        }
        let pin = pins.get(name);
        if pin.is_some_and(|pin| pin.digest == digest.whole) {
            return true;
        }
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        if reported.len() >= MAX_SEEN {
            reported.clear();
        }
        if reported.insert((name.into(), digest.whole)) {
            report(&Drift {
                tool: name,
                pinned: pin.map(|p| hex(&p.digest)),
                current: hex(&digest.whole),
                fields: match pin {
                    Some(pin) => pin.changed(&digest),
                    None => digest.fields.iter().map(|(f, _)| *f).collect(),
                },
            });
        }
        false
    }

    /// Whether a call to `tool` passes the pins.
    pub fn call(&self, pins: &Pins, tool: &str) -> CallPin {
        let Some(pin) = pins.get(tool) else {
            return CallPin::Unpinned;
        };
        let digests = self.digests.read().unwrap_or_else(PoisonError::into_inner);
        match digests.get(tool) {
            Some(seen) if *seen != pin.digest => CallPin::Changed,
            // Matching, or not listed through this layer yet: the pins alone decide.
            _ => CallPin::Reviewed,
        }
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "ToolPins"))]
#[cfg_attr(
    feature = "schema",
    schemars(
        title = "tower-mcp-policy tool pins",
        description = "The digests of the tool definitions an operator reviewed (mcp-policy pin)."
    )
)]
#[serde(deny_unknown_fields)]
struct LockDoc {
    /// The JSON Schema the file follows, for editors; ignored.
    #[serde(rename = "$schema", default)]
    #[allow(dead_code)]
    schema: Option<String>,
    /// The format's version: `"1"`.
    #[cfg_attr(feature = "schema", schemars(extend("const" = "1")))]
    version: String,
    /// The server the tools were listed from.
    #[serde(default)]
    #[allow(dead_code)]
    server: Option<ServerDoc>,
    /// When they were pinned (RFC 3339).
    #[serde(default)]
    #[allow(dead_code)]
    pinned_at: Option<String>,
    /// The reviewed tools by name.
    #[cfg_attr(
        feature = "schema",
        schemars(with = "std::collections::BTreeMap<String, PinDoc>")
    )]
    tools: UniqueMap<PinDoc>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct ServerDoc {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    version: String,
}

/// One reviewed tool definition.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct PinDoc {
    /// The SHA-256 of the definition's canonical JSON (the fields below), 64 hex digits.
    sha256: String,
    /// The SHA-256 of each field's canonical JSON, to name what changed.
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_ignore_key_order_and_whitespace_but_not_one_character() {
        let a: Value = serde_json::from_str(
            r#"{"name":"transfer","description":"Move money.","inputSchema":{"type":"object",
               "properties":{"amount":{"type":"number","description":"In cents"}}},"icons":[]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "inputSchema" : { "properties" : { "amount" : { "description" : "In cents",
               "type" : "number" } }, "type" : "object" },
               "description" : "Move money.", "name" : "transfer" }"#,
        )
        .unwrap();
        assert_eq!(
            ToolDigest::of(&a),
            ToolDigest::of(&b),
            "icons are not pinned"
        );
        let c: Value =
            serde_json::from_str(&a.to_string().replace("In cents", "In cents.")).unwrap();
        let (da, dc) = (ToolDigest::of(&a), ToolDigest::of(&c));
        assert_ne!(da.whole, dc.whole);
        let pin = Pin {
            digest: da.whole,
            fields: da
                .fields
                .iter()
                .map(|(f, d)| ((*f).to_owned(), *d))
                .collect(),
        };
        assert_eq!(pin.changed(&dc), ["inputSchema"]);
    }

    #[test]
    fn a_lock_reads_back_and_diffs() {
        let tools = vec![
            json!({"name": "b", "description": "two"}),
            json!({"name": "a", "description": "one"}),
        ];
        let lock = Pins::lock(("s", "1"), &tools, "2026-12-04T00:00:00Z");
        let pins = Pins::from_json(&lock.to_string()).unwrap();
        assert_eq!(pins.len(), 2);
        assert!(pins.diff(&tools).is_empty());
        let now = vec![
            json!({"name": "a", "description": "one, changed"}),
            json!({"name": "c"}),
        ];
        assert_eq!(pins.diff(&now), ["~ a: description", "- b", "+ c"]);
    }
}
