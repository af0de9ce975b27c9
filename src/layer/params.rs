//! `Mcp-Param-*` headers (SEP-2243, MCP 2026-07-28): a tool may annotate properties of
//! its input schema with `x-mcp-header`, and a client mirrors those arguments of a
//! `tools/call` into `Mcp-Param-{Name}` headers, so that proxies and load balancers can
//! route on them without reading the body. A proxy behind the layer that routes on a
//! header the body contradicts would act on a value the policy never judged, so every
//! such header must say what the body says.
//!
//! Which argument a header names is in the tool's schema, which only the server knows:
//! the layer learns it from the tool lists that pass through it. A call that carries an
//! `Mcp-Param-*` header for a tool whose schema the layer has not seen cannot be
//! checked, and is refused (fail closed) until the client lists the tools.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use super::request::decode_header_value;
use crate::jsonrpc::Decoded;
use crate::value::{ArgValue, Decimal};

/// The header prefix, as `http` spells header names (lowercase).
const PREFIX: &str = "mcp-param-";
/// At most this many tools' annotations are kept (a server that lists more has its
/// further tools' headers refused, never trusted).
const MAX_TOOLS: usize = 10_000;

/// One `x-mcp-header` annotation: the header's name (lowercase), and the path of the
/// property it mirrors from the arguments' root.
type Annotation = (Box<str>, Vec<Box<str>>);

/// The `x-mcp-header` annotations of every tool the layer saw listed.
#[derive(Debug, Default)]
pub(crate) struct ToolHeaders {
    tools: RwLock<HashMap<Box<str>, Vec<Annotation>>>,
}

impl ToolHeaders {
    /// Records the annotations of every tool in `message` (a JSON-RPC message or batch
    /// that may hold a `result.tools` list).
    pub fn learn(&self, message: &Value) {
        let answers = match message {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for answer in answers {
            let Some(Value::Array(tools)) = answer.get("result").and_then(|r| r.get("tools"))
            else {
                continue;
            };
            let mut known = self.tools.write().unwrap_or_else(PoisonError::into_inner);
            for tool in tools {
                let Some(name) = tool.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let mut annotations = Vec::new();
                let properties = tool.get("inputSchema").and_then(|s| s.get("properties"));
                collect(properties, &mut Vec::new(), &mut annotations);
                if known.len() < MAX_TOOLS || known.contains_key(name) {
                    known.insert(name.into(), annotations);
                }
            }
        }
    }

    /// Checks every `Mcp-Param-*` header of `headers` against the arguments of the
    /// `tools/call` in `full` (the body decoded whole); the error says what disagrees.
    pub fn check(&self, headers: &HeaderMap, full: &Decoded<'_>) -> Result<(), String> {
        let present: Vec<(&str, &HeaderValue)> = headers
            .iter()
            .filter_map(|(name, value)| {
                let header = name.as_str().strip_prefix(PREFIX)?;
                Some((header, value))
            })
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        let (false, [message]) = (full.is_batch(), full.messages()) else {
            return Err("Mcp-Param headers cannot describe a batch".to_owned());
        };
        let Some(call) = message.tool_call() else {
            return Err("Mcp-Param headers sent with a message that is not a tools/call".into());
        };
        let known = self.tools.read().unwrap_or_else(PoisonError::into_inner);
        let Some(annotations) = known.get(call.name()) else {
            return Err(format!(
                "Mcp-Param headers for tool `{}`, whose schema this layer has not seen: list the tools first",
                call.name()
            ));
        };
        for (header, value) in present {
            if headers.get_all(format!("{PREFIX}{header}")).iter().count() > 1 {
                return Err(format!(
                    "the Mcp-Param-{header} header appears more than once"
                ));
            }
            let Some((_, path)) = annotations.iter().find(|(name, _)| **name == *header) else {
                return Err(format!(
                    "Mcp-Param-{header}: tool `{}` declares no such header",
                    call.name()
                ));
            };
            let sent = value
                .to_str()
                .ok()
                .and_then(decode_header_value)
                .ok_or_else(|| format!("Mcp-Param-{header} is not valid text or Base64"))?;
            let argument = path
                .iter()
                .try_fold(call.arguments(), |value, key| {
                    value.and_then(ArgValue::as_object).map(|m| m.get(&**key))
                })
                .flatten();
            if !agrees(argument, &sent) {
                let shown = argument.map_or_else(|| "absent".to_owned(), ToString::to_string);
                return Err(format!(
                    "Mcp-Param-{header} header `{sent}` does not match body value {shown}"
                ));
            }
        }
        Ok(())
    }
}

/// Every `x-mcp-header` along `properties` chains from the schema's root.
fn collect(properties: Option<&Value>, path: &mut Vec<Box<str>>, out: &mut Vec<Annotation>) {
    let Some(Value::Object(properties)) = properties else {
        return;
    };
    for (name, schema) in properties {
        path.push(name.as_str().into());
        if let Some(Value::String(header)) = schema.get("x-mcp-header")
            && !header.is_empty()
        {
            out.push((header.to_ascii_lowercase().into(), path.clone()));
        }
        collect(schema.get("properties"), path, out);
        path.pop();
    }
}

/// True when the header's text says what the argument holds: a string as it is, a
/// number of the same exact value, `true` or `false`. An absent or `null` argument,
/// or any other value, has no header form.
fn agrees(argument: Option<&ArgValue>, sent: &str) -> bool {
    match argument {
        Some(ArgValue::String(text)) => text == sent,
        Some(ArgValue::Bool(flag)) => sent == if *flag { "true" } else { "false" },
        Some(ArgValue::Number(number)) => sent.parse::<Decimal>().is_ok_and(|n| n == *number),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{ReadAll, decode};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.parse().unwrap(), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn headers_are_checked_against_the_arguments_they_name() {
        let known = ToolHeaders::default();
        known.learn(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
            {"name": "deploy", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "target": {"type": "object", "properties": {
                    "replicas": {"type": "integer", "x-mcp-header": "Replicas"}}},
                "dry": {"type": "boolean", "x-mcp-header": "Dry"}}}}]}}),
        );
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"deploy",
            "arguments":{"region":"eu-west","target":{"replicas":3},"dry":false}}}"#;
        let full = decode(body, &ReadAll).unwrap();
        let check = |pairs| known.check(&headers(pairs), &full);
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(
            check(&[
                ("mcp-param-region", "eu-west"),
                ("mcp-param-replicas", "3"),
                ("mcp-param-dry", "false"),
            ]),
            Ok(())
        );
        assert_eq!(
            check(&[("mcp-param-region", "=?base64?ZXUtd2VzdA==?=")]),
            Ok(())
        );
        assert!(
            check(&[("mcp-param-region", "us-east")])
                .unwrap_err()
                .contains("does not match")
        );
        assert!(check(&[("mcp-param-replicas", "30")]).is_err());
        assert!(check(&[("mcp-param-dry", "true")]).is_err());
        assert!(
            check(&[("mcp-param-zone", "a")])
                .unwrap_err()
                .contains("declares no such")
        );
        assert!(check(&[("mcp-param-region", "=?base64?!!?=")]).is_err());
        // A tool whose schema was never listed cannot be checked.
        let other = decode(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"other"}}"#,
            &ReadAll,
        )
        .unwrap();
        let error = known.check(&headers(&[("mcp-param-region", "x")]), &other);
        assert!(error.unwrap_err().contains("has not seen"));
    }
}
