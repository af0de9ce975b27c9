//! Scope keys: whose budget a call is charged to.
//!
//! Credentials and session ids are never kept or logged in clear: each becomes a
//! [`ScopeValue`], a 128-bit keyed SipHash-1-3 of the value under a secret key. Without
//! the key nobody can craft a credential that lands in another grant's bucket.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use siphasher::sip128::{Hasher128, SipHasher13};

/// Whose calls a counter counts together.
///
/// ```
/// use tower_mcp_policy::{Policy, Scope};
///
/// let policy: Policy = r#"{ "version": "1", "default": "allow", "tools": { "search": {
///     "limits": [{ "counter": "searches", "window": "hour", "max": 100, "scope": "session" }] } } }"#
///     .parse()?;
/// assert_eq!(policy.counters()[0].scope(), Scope::Session);
/// assert_eq!(Scope::Session.as_str(), "session");
/// # Ok::<(), tower_mcp_policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// Per caller credential (the `Authorization` header, or the application's key).
    Grant,
    /// Per MCP session (`Mcp-Session-Id`).
    Session,
    /// One bucket shared by every caller.
    Global,
}

impl Scope {
    /// The name used in policy documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Grant => "grant",
            Scope::Session => "session",
            Scope::Global => "global",
        }
    }
}

/// The grant a request belongs to, chosen by the application.
///
/// Insert it as a request extension (for example in your own auth middleware, with the
/// tenant or user id it established) and it takes precedence over the `Authorization`
/// header for `"scope": "grant"` counters.
///
/// ```
/// # use tower_mcp_policy::Grant;
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(Grant::new("tenant-42"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant(Arc<str>);

impl Grant {
    /// A grant named `key`.
    pub fn new(key: impl Into<Arc<str>>) -> Grant {
        Grant(key.into())
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A hashed scope value: the key of one bucket of a counter.
///
/// See the examples on [`Engine`](crate::Engine) and [`MemoryCounters`](crate::counter::MemoryCounters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeValue(u128);

impl ScopeValue {
    /// The single value used by `global` counters.
    pub const GLOBAL: ScopeValue = ScopeValue(0);

    /// The hash as a number (for stores that keep counters elsewhere).
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// The hash back from the number [`ScopeValue::as_u128`] gave (for stores that keep
    /// task owners elsewhere: see [`CounterStore::find_task`](crate::counter::CounterStore::find_task)).
    pub fn from_u128(value: u128) -> ScopeValue {
        ScopeValue(value)
    }
}

impl fmt::Debug for ScopeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopeValue({self})")
    }
}

/// The first 64 bits in hex: enough to correlate log lines, useless to recover a secret.
impl fmt::Display for ScopeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", (self.0 >> 64) as u64)
    }
}

/// Turns credentials, application keys and session ids into [`ScopeValue`]s.
///
/// See the examples on [`Engine`](crate::Engine) and [`MemoryCounters`](crate::counter::MemoryCounters).
#[derive(Clone, PartialEq, Eq)]
pub struct ScopeHasher {
    key: [u8; 16],
    /// The keyed hash that turns a grant into its no-session bucket, computed once.
    no_session: u128,
}

impl fmt::Debug for ScopeHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScopeHasher { .. }")
    }
}

// Domain tags keep the kinds of value apart: the application key "Bearer x" and the
// header "Bearer x" are different grants.
const CREDENTIAL: u8 = 1;
const APPLICATION: u8 = 2;
const ANONYMOUS: u8 = 3;
const SESSION: u8 = 4;
const NO_SESSION: u8 = 5;
const TASK: u8 = 6;

impl ScopeHasher {
    /// A hasher with a fresh random key: right for a single process.
    pub fn random() -> ScopeHasher {
        ScopeHasher::with_key(random_key())
    }

    /// A hasher with a fixed secret key: replicas that share counters must share it.
    pub fn with_key(key: [u8; 16]) -> ScopeHasher {
        let no_session = keyed_hash(&key, NO_SESSION, &[]);
        ScopeHasher { key, no_session }
    }

    /// The secret key, from which the layer derives its other keys (the approval
    /// states' seal): replicas that share a hasher share them too.
    pub(crate) fn secret(&self) -> &[u8; 16] {
        &self.key
    }

    fn hash(&self, tag: u8, bytes: &[u8]) -> ScopeValue {
        ScopeValue(keyed_hash(&self.key, tag, bytes))
    }

    /// The grant of a caller presenting `credential` (the whole `Authorization` value).
    ///
    /// Spellings that an HTTP server or auth proxy treats as the same credential are one
    /// grant: the scheme is case-insensitive (`Bearer`, `bearer`, `BEARER`), the
    /// separator is any run of spaces or tabs, and whitespace around the value does not
    /// count (RFC 9110 §11.4). The credential itself stays case-sensitive, and a value
    /// without a scheme is taken as it is.
    ///
    /// ```
    /// # use tower_mcp_policy::ScopeHasher;
    /// let h = ScopeHasher::random();
    /// assert_eq!(h.credential(b"Bearer T"), h.credential(b" bearer \t T "));
    /// assert_ne!(h.credential(b"Bearer T"), h.credential(b"Bearer t"));
    /// ```
    pub fn credential(&self, credential: &[u8]) -> ScopeValue {
        let (scheme, value) = match split_credentials(credential) {
            (scheme, Some(value)) => (scheme, value),
            (token, None) => return self.hash(CREDENTIAL, token),
        };
        // Servers decode Basic credentials leniently: one user and password in any of
        // their Base64 spellings is one grant.
        let canonical;
        let value = match canonical_basic(scheme, value) {
            Some(text) => {
                canonical = text;
                canonical.as_bytes()
            }
            None => value,
        };
        // The tag, the lowercased scheme and one space go through a small buffer: the
        // hash is the same as byte by byte, and a write costs more than a byte.
        let mut h = SipHasher13::new_with_key(&self.key);
        let mut head = [0u8; 32];
        head[0] = CREDENTIAL;
        let mut len = 1;
        for &b in scheme.iter().chain(b" ") {
            if len == head.len() {
                h.write(&head);
                len = 0;
            }
            head[len] = b.to_ascii_lowercase();
            len += 1;
        }
        h.write(&head[..len]);
        h.write(value);
        ScopeValue(h.finish128().as_u128())
    }

    /// The grant named by the application (a tenant or user id from its own auth).
    pub fn application(&self, key: &str) -> ScopeValue {
        self.hash(APPLICATION, key.as_bytes())
    }

    /// The one grant shared by callers without a credential.
    pub fn anonymous(&self) -> ScopeValue {
        self.hash(ANONYMOUS, &[])
    }

    /// The session `id` (`Mcp-Session-Id`).
    pub fn session(&self, id: &[u8]) -> ScopeValue {
        self.hash(SESSION, id)
    }

    /// The task `id` a server handed out (`taskId`).
    pub(crate) fn task(&self, id: &str) -> ScopeValue {
        self.hash(TASK, id.as_bytes())
    }

    /// The session bucket of a request that has no session: one per grant, so that
    /// session-scoped limits still separate callers (MCP 2026-07-28 has no sessions).
    pub fn no_session(&self, grant: ScopeValue) -> ScopeValue {
        // The grant's own keyed hash, masked with a keyed constant: one per grant, none
        // equal to a grant or a session's hash but by chance, and no hashing per request.
        ScopeValue(grant.0 ^ self.no_session)
    }
}

/// The 128-bit SipHash-1-3 of `tag` then `bytes` under `key`.
fn keyed_hash(key: &[u8; 16], tag: u8, bytes: &[u8]) -> u128 {
    let mut h = SipHasher13::new_with_key(key);
    h.write_u8(tag);
    h.write(bytes);
    h.finish128().as_u128()
}

/// 16 random bytes from the standard library's per-process random hasher seed.
pub(crate) fn random_key() -> [u8; 16] {
    let state = std::collections::hash_map::RandomState::new();
    let mut key = [0u8; 16];
    for (i, chunk) in key.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    key
}

/// `Authorization` credentials split into the scheme and the rest (RFC 9110 §11.4:
/// `auth-scheme [ 1*SP ( token68 / #auth-param ) ]`), with surrounding whitespace
/// dropped. A value with no whitespace inside is a bare token: `(token, None)`.
fn split_credentials(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    let value = &value[start..end];
    let Some(gap) = value.iter().position(is_space) else {
        return (value, None);
    };
    let rest = &value[gap..];
    let after = rest.iter().position(|b| !is_space(b)).unwrap_or(rest.len());
    (&value[..gap], Some(&rest[after..]))
}

/// The scope values of one request: which grant and which session it belongs to.
///
/// See the examples on [`Engine`](crate::Engine) and [`MemoryCounters`](crate::counter::MemoryCounters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeKeys {
    /// The caller's grant.
    pub grant: ScopeValue,
    /// The caller's MCP session.
    pub session: ScopeValue,
}

impl ScopeKeys {
    /// Keys from already-hashed values.
    pub fn new(grant: ScopeValue, session: ScopeValue) -> ScopeKeys {
        ScopeKeys { grant, session }
    }

    /// The bucket of a counter with this scope.
    pub fn value_for(&self, scope: Scope) -> ScopeValue {
        match scope {
            Scope::Grant => self.grant,
            Scope::Session => self.session,
            Scope::Global => ScopeValue::GLOBAL,
        }
    }
}

/// The canonical Base64 (padded, no whitespace, no stray bits) of a Basic credential
/// written in any spelling a lenient decoder accepts (padding missing or extra,
/// whitespace, non-zero trailing bits); `None` for another scheme, or a value that does
/// not decode (hashed as it is).
fn canonical_basic(scheme: &[u8], value: &[u8]) -> Option<String> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let compact: Vec<u8> = value
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let unpadded = compact
        .strip_suffix(b"==")
        .or_else(|| compact.strip_suffix(b"="))
        .unwrap_or(&compact);
    let decoded = LENIENT.decode(unpadded).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(decoded))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grants keep their values across versions (counters in Redis are keyed by them):
    /// the credential hash equals the byte-by-byte hash of tag, lowercased scheme, one
    /// space and the credential, for short and long schemes.
    #[test]
    fn credential_hashes_are_the_byte_by_byte_hash() {
        let key = [7; 16];
        let reference = |scheme: &[u8], value: Option<&[u8]>| {
            let mut h = SipHasher13::new_with_key(&key);
            h.write_u8(CREDENTIAL);
            match value {
                Some(value) => {
                    for &b in scheme {
                        h.write_u8(b.to_ascii_lowercase());
                    }
                    h.write_u8(b' ');
                    h.write(value);
                }
                None => h.write(scheme),
            }
            ScopeValue(h.finish128().as_u128())
        };
        let h = ScopeHasher::with_key(key);
        let long = "X".repeat(40);
        for (header, scheme, value) in [
            ("Bearer T0k3n", "Bearer", Some("T0k3n")),
            ("BASIC dXNlcjpwdw==", "BASIC", Some("dXNlcjpwdw==")),
            ("T0k3n", "T0k3n", None),
            (&*format!("{long} v"), &*long, Some("v")),
            (
                &*format!("{} v", "S".repeat(30)),
                &*"S".repeat(30),
                Some("v"),
            ),
            (
                &*format!("{} v", "S".repeat(31)),
                &*"S".repeat(31),
                Some("v"),
            ),
        ] {
            let expected = reference(scheme.as_bytes(), value.map(str::as_bytes));
            assert_eq!(h.credential(header.as_bytes()), expected, "{header}");
        }
    }

    #[test]
    fn values_are_stable_per_key_and_separated_by_kind() {
        let h = ScopeHasher::with_key([7; 16]);
        assert_eq!(h.credential(b"Bearer a"), h.credential(b"Bearer a"));
        assert_ne!(h.credential(b"Bearer a"), h.credential(b"Bearer b"));
        assert_ne!(h.credential(b"Bearer a"), h.application("Bearer a"));
        assert_ne!(h.credential(b""), h.anonymous());
        let grant = h.credential(b"Bearer a");
        assert_ne!(h.session(b""), h.no_session(grant));
        assert_ne!(h.no_session(grant), h.no_session(h.credential(b"Bearer b")));
        let other = ScopeHasher::with_key([8; 16]);
        assert_ne!(h.credential(b"Bearer a"), other.credential(b"Bearer a"));
        assert_ne!(
            ScopeHasher::random().anonymous(),
            ScopeHasher::random().anonymous()
        );
    }

    #[test]
    fn spellings_of_one_credential_are_one_grant() {
        let h = ScopeHasher::with_key([7; 16]);
        let one = h.credential(b"Bearer T0k3n");
        for spelling in [
            &b"bearer T0k3n"[..],
            b"BEARER T0k3n",
            b"BeArEr T0k3n",
            b"Bearer  T0k3n",
            b"Bearer\tT0k3n",
            b"Bearer \t T0k3n",
            b" Bearer T0k3n ",
            b"Bearer T0k3n\t",
        ] {
            assert_eq!(
                h.credential(spelling),
                one,
                "{:?}",
                String::from_utf8_lossy(spelling)
            );
        }
        // The credential is case-sensitive, and so is a bare token.
        assert_ne!(h.credential(b"Bearer t0k3n"), one);
        assert_ne!(h.credential(b"Basic T0k3n"), one);
        assert_ne!(h.credential(b"T0k3n"), h.credential(b"t0k3n"));
        assert_ne!(h.credential(b"BearerT0k3n"), one);
        assert_eq!(h.credential(b"T0k3n"), h.credential(b" T0k3n "));
        // Inner whitespace of auth-params is kept: only the separator is canonical.
        assert_ne!(
            h.credential(b"Digest a=1, b=2"),
            h.credential(b"Digest a=1,  b=2")
        );
        assert_eq!(h.credential(b""), h.credential(b"  "));
    }

    #[test]
    fn display_shows_only_a_prefix() {
        let v = ScopeHasher::with_key([1; 16]).credential(b"secret-token");
        let shown = v.to_string();
        assert_eq!(shown.len(), 16);
        assert!(!format!("{v:?}").contains("secret"));
    }
}
