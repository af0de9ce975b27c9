//! [`Grants`]: each agent its own credential and its own policy.
//!
//! A grant is what an agent holds: a name the operator gave it, the policy it is judged
//! under, and either a bearer token (its SHA-256 is all that is stored) or the name the
//! application's own authentication puts in the [`Grant`] request extension. A request
//! whose grant is unknown, revoked or expired reaches nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use smallvec::SmallVec;
use subtle::ConstantTimeEq;

use crate::error::PolicyError;
use crate::pins::{hex, unhex};
use crate::policy::document::UniqueMap;
use crate::policy::{Policy, parse};
use crate::scope::{Grant, ScopeHasher, ScopeValue};

/// Named policies, and the grants that use them: a policy per agent credential.
///
/// Give it to [`PolicyLayer::grants`](crate::PolicyLayer::grants) (or load a grants file
/// with [`PolicyLayer::from_grants_file`](crate::PolicyLayer::from_grants_file)) and
/// every request is judged under its own grant's policy:
///
/// * a request carrying the [`Grant`] extension (inserted by the application's own
///   authentication) is the grant of that name;
/// * otherwise its `Authorization: Bearer TOKEN` is looked up among the grants' token
///   hashes (SHA-256, compared in constant time);
/// * a request with neither is judged under the `anonymous` policy when there is one.
///
/// Any other request (an unknown name or token, a revoked or expired grant, no
/// credential and no anonymous policy, a credential that is not a bearer token) is
/// answered 401 with `WWW-Authenticate: Bearer` and a JSON-RPC error, and nothing
/// reaches the inner service, not even a GET stream. Lists are filtered by the caller's
/// own policy.
///
/// **Counters.** A grant's `"scope": "grant"` counters are its own, keyed by its name
/// (so a new token for the same grant keeps its budget). A `"global"` counter is one
/// budget for every grant judged under that policy; the counters of two named policies
/// never share state, even with the same name. Reloading keeps the state of every
/// counter whose policy name and definition did not change.
///
/// ```
/// use tower_mcp_policy::{Grant, Grants, Policy, PolicyLayer};
///
/// let read_only: Policy = r#"{"version":"1","default":"deny","tools":{"search":{}}}"#.parse()?;
/// let trader: Policy = r#"{"version":"1","default":"allow"}"#.parse()?;
/// let grants = Grants::new()
///     .policy("read-only", read_only)
///     .policy("trader", trader)
///     .grant("research-agent", "read-only")
///     .grant("trading-bot", "trader");
/// let layer = PolicyLayer::new(Policy::deny_all()).grants(grants);
/// // The application's authentication middleware then inserts the caller's grant:
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(Grant::new("research-agent"));
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug)]
pub struct Grants {
    policies: Vec<(Box<str>, Arc<Policy>)>,
    grants: Vec<Entry>,
    by_name: HashMap<Box<str>, usize>,
    /// The grants of each token hash, by its first eight bytes.
    by_token: HashMap<u64, SmallVec<[usize; 1]>>,
    /// The policy of callers without a credential (an index into `policies`).
    anonymous: Option<usize>,
    /// One policy for every caller, as a layer made from one policy has.
    single: bool,
    upstream: Option<Credential>,
    /// The files the set was loaded from: the grants file first, then its policies.
    files: Vec<PathBuf>,
    fingerprint: Box<str>,
}

#[derive(Debug)]
struct Entry {
    name: Box<str>,
    policy: usize,
    token: Option<[u8; 32]>,
    expires: Option<SystemTime>,
    revoked: bool,
    upstream: Option<Credential>,
}

/// A header the gateway sends upstream in place of the caller's credential.
#[derive(Clone)]
struct Credential {
    header: HeaderName,
    value: HeaderValue,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}: <redacted>)", self.header)
    }
}

/// Who a request is: its grant's hash and name, and the policy that judges it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub grant: ScopeValue,
    /// The grant's name (a grant of a grants file, or `anonymous`); `None` for a layer
    /// made from one policy, which knows callers only by their credential's hash.
    pub name: Option<Arc<str>>,
    pub policy: Arc<Policy>,
    /// The tool pins in force when the request arrived, if any.
    pub pins: Option<Arc<crate::pins::Pins>>,
}

/// Why a request has no grant: the text of the 401 answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// No credential, and no anonymous policy.
    Missing,
    /// A credential, but no active grant with it.
    Invalid,
}

impl Unknown {
    pub fn message(self) -> &'static str {
        match self {
            Unknown::Missing => "Unauthorized: this server needs a bearer token",
            Unknown::Invalid => "Unauthorized: the credential is unknown, revoked or expired",
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3).
    pub fn challenge(self) -> &'static str {
        match self {
            Unknown::Missing => "Bearer",
            Unknown::Invalid => "Bearer error=\"invalid_token\"",
        }
    }
}

impl Default for Grants {
    fn default() -> Self {
        Grants::new()
    }
}

impl Grants {
    /// An empty set: add policies with [`Grants::policy`] and grants with
    /// [`Grants::grant`]. With no grant at all, every request is refused (or judged
    /// under the anonymous policy).
    pub fn new() -> Grants {
        Grants {
            policies: Vec::new(),
            grants: Vec::new(),
            by_name: HashMap::new(),
            by_token: HashMap::new(),
            anonymous: None,
            single: false,
            upstream: None,
            files: Vec::new(),
            fingerprint: "".into(),
        }
    }

    /// One policy for every caller, whoever it is: what a layer made from one policy
    /// enforces.
    pub(crate) fn single(policy: Arc<Policy>) -> Grants {
        let mut grants = Grants::new();
        grants.fingerprint = policy.fingerprint().into();
        grants.policies.push(("".into(), policy));
        grants.single = true;
        grants
    }

    /// Adds the policy `name`. Its counters become its own: see [`Grants`].
    ///
    /// # Panics
    /// When a policy of that name was already added.
    #[must_use]
    pub fn policy(mut self, name: &str, policy: Policy) -> Grants {
        assert!(
            self.policy_index(name).is_none(),
            "the policy {name:?} was added twice"
        );
        self.policies
            .push((name.into(), Arc::new(policy.named(name))));
        self.refingerprint();
        self
    }

    /// Adds the grant `name`, judged under the policy `policy`, for requests carrying
    /// the [`Grant`] extension `name`.
    ///
    /// # Panics
    /// When `policy` was not added first, or a grant of that name already exists.
    #[must_use]
    pub fn grant(mut self, name: &str, policy: &str) -> Grants {
        let policy = self.policy_index(policy).unwrap_or_else(|| {
            panic!("the grant {name:?} names the policy {policy:?}, which was not added")
        });
        assert!(
            !self.by_name.contains_key(name),
            "the grant {name:?} was added twice"
        );
        self.push(Entry {
            name: name.into(),
            policy,
            token: None,
            expires: None,
            revoked: false,
            upstream: None,
        });
        self
    }

    /// Callers without a credential are judged under `policy` (by default they are
    /// refused).
    ///
    /// # Panics
    /// When `policy` was not added first.
    #[must_use]
    pub fn anonymous(mut self, policy: &str) -> Grants {
        let index = self
            .policy_index(policy)
            .unwrap_or_else(|| panic!("the anonymous policy {policy:?} was not added"));
        self.anonymous = Some(index);
        self.refingerprint();
        self
    }

    /// The hash a grants file stores for `token` (`token_sha256`): 64 hex digits.
    pub fn hash_token(token: &str) -> String {
        hex(&Sha256::digest(token.as_bytes()))
    }

    /// The names of the grants, with their policy's name, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.grants
            .iter()
            .map(|g| (&*g.name, &*self.policies[g.policy].0))
    }

    /// Whether the grant `name` exists and is neither revoked nor expired.
    pub fn is_active(&self, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|&i| {
            let grant = &self.grants[i];
            !grant.revoked && grant.expires.is_none_or(|at| at > SystemTime::now())
        })
    }

    /// The named policies, in the order they were added.
    pub fn policies(&self) -> impl Iterator<Item = (&str, &Arc<Policy>)> {
        self.policies.iter().map(|(name, policy)| (&**name, policy))
    }

    /// The policy the grant `name` is judged under, when it exists (revoked or not).
    pub fn policy_of(&self, name: &str) -> Option<&Arc<Policy>> {
        let entry = &self.grants[*self.by_name.get(name)?];
        Some(&self.policies[entry.policy].1)
    }

    /// The header sent upstream in place of the caller's credential: the grant's own
    /// upstream credential, else the file's global one. Its value is marked sensitive.
    pub fn upstream_credential(&self, grant: Option<&str>) -> Option<(&HeaderName, &HeaderValue)> {
        let own = grant
            .and_then(|name| self.by_name.get(name))
            .and_then(|&i| self.grants[i].upstream.as_ref());
        own.or(self.upstream.as_ref())
            .map(|c| (&c.header, &c.value))
    }

    /// The files this set was loaded from (the grants file, then each policy file), for
    /// watching them.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// One line for logs and start-up banners.
    pub fn summary(&self) -> String {
        if self.single {
            return self.policies[0].1.summary();
        }
        let revoked = self.grants.iter().filter(|g| g.revoked).count();
        let revoked = match revoked {
            0 => String::new(),
            n => format!(" ({n} revoked)"),
        };
        let anonymous = match self.anonymous {
            Some(i) => format!("anonymous callers under {:?}", &*self.policies[i].0),
            None => "anonymous callers refused".to_owned(),
        };
        format!(
            "{} policies, {} grants{revoked}, {anonymous}",
            self.policies.len(),
            self.grants.len()
        )
    }

    /// Sixteen hex digits identifying the set: its policies' fingerprints and grants.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The policy of callers without a grant: the single policy, or the anonymous one,
    /// or one that denies everything.
    pub(crate) fn fallback(&self) -> Arc<Policy> {
        match (self.single, self.anonymous) {
            (true, _) => self.policies[0].1.clone(),
            (false, Some(i)) => self.policies[i].1.clone(),
            (false, None) => {
                static DENY_ALL: std::sync::OnceLock<Arc<Policy>> = std::sync::OnceLock::new();
                DENY_ALL
                    .get_or_init(|| Arc::new(Policy::deny_all()))
                    .clone()
            }
        }
    }

    /// Every counter of every policy, for the store to keep on a reload.
    pub(crate) fn counter_ids(&self) -> Vec<crate::counter::CounterId> {
        self.policies
            .iter()
            .flat_map(|(_, p)| p.counters().iter().map(|c| c.id()))
            .collect()
    }

    /// The caller of a request carrying `extension` and `authorization`, or why it has
    /// none.
    pub(crate) fn caller(
        &self,
        hasher: &ScopeHasher,
        extension: Option<&Grant>,
        authorization: Option<&HeaderValue>,
    ) -> Result<Caller, Unknown> {
        if self.single {
            let grant = match (extension, authorization) {
                (Some(grant), _) => hasher.application(grant.as_str()),
                (None, Some(credential)) => hasher.credential(credential.as_bytes()),
                (None, None) => hasher.anonymous(),
            };
            let policy = self.policies[0].1.clone();
            return Ok(Caller {
                grant,
                name: None,
                policy,
                pins: None,
            });
        }
        let entry = match (extension, authorization) {
            (Some(grant), _) => self.by_name.get(grant.as_str()).map(|&i| &self.grants[i]),
            (None, Some(credential)) => {
                let token = bearer(credential.as_bytes()).ok_or(Unknown::Invalid)?;
                self.by_token(token)
            }
            (None, None) => {
                let policy = self.anonymous.ok_or(Unknown::Missing)?;
                return Ok(Caller {
                    grant: hasher.anonymous(),
                    name: Some("anonymous".into()),
                    policy: self.policies[policy].1.clone(),
                    pins: None,
                });
            }
        };
        let entry = entry.ok_or(Unknown::Invalid)?;
        let expired = entry.expires.is_some_and(|at| at <= SystemTime::now());
        if entry.revoked || expired {
            return Err(Unknown::Invalid);
        }
        Ok(Caller {
            grant: hasher.application(&entry.name),
            name: Some(Arc::from(&*entry.name)),
            policy: self.policies[entry.policy].1.clone(),
            pins: None,
        })
    }

    /// The grant whose token hashes to the same digest as `token`.
    fn by_token(&self, token: &[u8]) -> Option<&Entry> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let candidates = self.by_token.get(&prefix(&digest))?;
        // Compared whole in constant time: the time taken tells nothing of how much
        // of a stored hash a guess matched.
        let mut found = None;
        for &i in candidates {
            let stored = self.grants[i].token.as_ref().expect("indexed by its token");
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(&self.grants[i]);
            }
        }
        found
    }

    fn policy_index(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|(n, _)| &**n == name)
    }

    fn push(&mut self, entry: Entry) {
        let index = self.grants.len();
        self.by_name.insert(entry.name.clone(), index);
        if let Some(token) = &entry.token {
            self.by_token.entry(prefix(token)).or_default().push(index);
        }
        self.grants.push(entry);
        self.refingerprint();
    }

    fn refingerprint(&mut self) {
        let mut hash = Sha256::new();
        for (name, policy) in &self.policies {
            hash.update(name.as_bytes());
            hash.update([0]);
            hash.update(policy.fingerprint().as_bytes());
            hash.update([0]);
        }
        for grant in &self.grants {
            hash.update(grant.name.as_bytes());
            hash.update([0, grant.revoked as u8]);
            hash.update(grant.policy.to_le_bytes());
            hash.update(grant.token.unwrap_or_default());
        }
        hash.update(self.anonymous.map_or(u64::MAX, |i| i as u64).to_le_bytes());
        self.fingerprint = hex(&hash.finalize()[..8]).into();
    }

    /// Loads a grants file and the policy files it names (relative to the grants
    /// file's directory), reading credentials from the environment and files it
    /// names. The error names the file, the JSON Pointer and the line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Grants, PolicyError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| PolicyError::io(path, &e))?;
        Grants::from_file_bytes(path, bytes)
    }

    pub(crate) fn from_file_bytes(path: &Path, bytes: Vec<u8>) -> Result<Grants, PolicyError> {
        let text = String::from_utf8(bytes).map_err(|e| {
            let error = std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error());
            PolicyError::io(path, &error)
        })?;
        let doc: GrantsDoc = parse(&text).map_err(|e| e.in_file(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Grants::build(doc, base)
            .map_err(|e| e.in_file(path))
            .map(|mut grants| {
                grants.files.insert(0, path.to_path_buf());
                grants
            })
    }

    fn build(doc: GrantsDoc, base: &Path) -> Result<Grants, PolicyError> {
        if doc.version != "1" {
            return Err(PolicyError::invalid(
                "/version",
                format!(
                    "unsupported version {:?}: only \"1\" is supported",
                    doc.version
                ),
            ));
        }
        let mut grants = Grants::new();
        for (name, file) in doc.policies.0 {
            let file = base.join(file);
            let policy = Policy::from_file(&file).map_err(|e| {
                let pointer = crate::error::pointer("/policies", &[&name]);
                PolicyError::invalid(pointer, e.to_string())
            })?;
            grants = grants.policy(&name, policy);
            grants.files.push(file);
        }
        let policy_named = |name: &str, pointer: String| {
            grants.policy_index(name).ok_or_else(|| {
                let known: Vec<&str> = grants.policies.iter().map(|(n, _)| &**n).collect();
                PolicyError::invalid(
                    pointer,
                    format!(
                        "no policy is named {name:?} under /policies (there are: {})",
                        known.join(", ")
                    ),
                )
            })
        };
        let anonymous = match &doc.anonymous {
            Some(name) => Some(policy_named(name, "/anonymous".into())?),
            None => None,
        };
        let mut entries = Vec::new();
        for (name, grant) in doc.grants.0 {
            let at = |field: &str| crate::error::pointer("/grants", &[&name, field]);
            let policy = policy_named(&grant.policy, at("policy"))?;
            let token = match &grant.token_sha256 {
                Some(text) => Some(unhex(text).ok_or_else(|| {
                    PolicyError::invalid(
                        at("token_sha256"),
                        "expected 64 hex digits: the SHA-256 of the token (mcp-policy grant add writes it)",
                    )
                })?),
                None => None,
            };
            let expires = match &grant.expires {
                Some(text) => Some(humantime::parse_rfc3339(text).map_err(|e| {
                    PolicyError::invalid(
                        at("expires"),
                        format!("{e}: expected a UTC time such as 2027-01-31T00:00:00Z"),
                    )
                })?),
                None => None,
            };
            let upstream = match &grant.upstream {
                Some(doc) => Some(doc.resolve(base, &at("upstream"))?),
                None => None,
            };
            entries.push(Entry {
                name: name.into(),
                policy,
                token,
                expires,
                revoked: grant.revoked,
                upstream,
            });
        }
        for entry in entries {
            grants.push(entry);
        }
        grants.anonymous = anonymous;
        grants.upstream = match &doc.upstream {
            Some(doc) => Some(doc.resolve(base, "/upstream")?),
            None => None,
        };
        grants.refingerprint();
        Ok(grants)
    }

    /// The JSON Schema of the grants file, for editors and CI (feature `schema`).
    #[cfg(feature = "schema")]
    #[cfg_attr(docsrs, doc(cfg(feature = "schema")))]
    pub fn json_schema() -> serde_json::Value {
        let schema = schemars::schema_for!(GrantsDoc);
        serde_json::to_value(schema).expect("a schema is JSON")
    }
}

/// The key a token hash is looked up by: its first eight bytes.
fn prefix(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("eight bytes"))
}

/// The token of a `Bearer` credential (the scheme in any case), or `None`.
fn bearer(credential: &[u8]) -> Option<&[u8]> {
    let text = credential.trim_ascii();
    let (scheme, token) = text.split_at(text.iter().position(|b| *b == b' ')?);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "Grants"))]
#[cfg_attr(
    feature = "schema",
    schemars(
        title = "tower-mcp-policy grants file",
        description = "Which agent credential is judged under which policy, and what the gateway sends upstream."
    )
)]
#[serde(deny_unknown_fields)]
struct GrantsDoc {
    /// The JSON Schema the file follows, for editors; ignored.
    #[serde(rename = "$schema", default)]
    #[allow(dead_code)]
    schema: Option<String>,
    /// The format's version: `"1"`.
    #[cfg_attr(feature = "schema", schemars(extend("const" = "1")))]
    version: String,
    /// Policy documents by name: paths relative to this file.
    #[cfg_attr(
        feature = "schema",
        schemars(with = "std::collections::BTreeMap<String, String>")
    )]
    policies: UniqueMap<String>,
    /// The grants by name: the name is what events, logs and metrics show.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "std::collections::BTreeMap<String, GrantDoc>")
    )]
    grants: UniqueMap<GrantDoc>,
    /// The policy of callers without a credential; absent: they are refused (401).
    #[serde(default)]
    anonymous: Option<String>,
    /// What the gateway sends upstream for every grant without its own `upstream`.
    #[serde(default)]
    upstream: Option<CredentialDoc>,
}

/// One agent's credential.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct GrantDoc {
    /// The name of the policy it is judged under (a key of `policies`).
    policy: String,
    /// The SHA-256 of its bearer token, 64 hex digits; the token itself is never stored.
    /// Absent: the grant is reached only through the `Grant` request extension.
    #[serde(default)]
    token_sha256: Option<String>,
    /// When it stops working: an RFC 3339 UTC time (`2027-01-31T00:00:00Z`).
    #[serde(default)]
    expires: Option<String>,
    /// A revoked grant reaches nothing.
    #[serde(default)]
    revoked: bool,
    /// What the gateway sends upstream for this grant, instead of the global one.
    #[serde(default)]
    upstream: Option<CredentialDoc>,
}

/// A header value read from the environment or a file, never written here.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct CredentialDoc {
    /// The header to send; default `authorization`.
    #[serde(default)]
    header: Option<String>,
    /// An environment variable holding the header's whole value (`Bearer …`).
    #[serde(default)]
    env: Option<String>,
    /// A file holding the header's whole value (a trailing newline is ignored), relative
    /// to this file.
    #[serde(default)]
    file: Option<String>,
}

impl CredentialDoc {
    fn resolve(&self, base: &Path, pointer: &str) -> Result<Credential, PolicyError> {
        let invalid = |message: String| PolicyError::invalid(pointer, message);
        let header = self.header.as_deref().unwrap_or("authorization");
        let header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| invalid(format!("{header:?} is not a header name")))?;
        let value = match (&self.env, &self.file) {
            (Some(name), None) => std::env::var(name)
                .map_err(|e| invalid(format!("the environment variable {name}: {e}")))?,
            (None, Some(file)) => {
                let file = base.join(file);
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                text.trim_end_matches(['\r', '\n']).to_owned()
            }
            _ => return Err(invalid("name exactly one of `env` and `file`".into())),
        };
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| invalid("the credential is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Credential { header, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_in_any_case_of_the_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"  bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"abc"), None);
    }

    #[test]
    fn token_hashes_are_hex_sha256() {
        let hash = Grants::hash_token("abc");
        assert_eq!(
            hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(unhex(&hash).map(|h| hex(&h)), Some(hash));
        assert_eq!(unhex("zz"), None);
    }
}
