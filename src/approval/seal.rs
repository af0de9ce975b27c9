//! The `requestState` of an approval asked in the client (MCP 2026-07-28 multi
//! round-trip requests): the layer answers a call that needs approval with an
//! `InputRequiredResult` whose elicitation asks the user, and a state the client echoes
//! on its retry. Nothing is kept between the two requests but the nonces already
//! spent: the state carries its own expiry and nonce, sealed by an HMAC-SHA256 over
//! them and the call's [`CallKey`] (grant, tool, policy, canonical arguments). A
//! state is accepted once, for exactly the call it was issued for, before it expires.
//! The key derives from the scope hasher's, so replicas that share one accept each
//! other's states.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::CallKey;

/// What a state of ours starts with (and its format's version).
const PREFIX: &str = "mcp-policy-approval.1.";
/// The key of the layer's elicitation among a result's `inputRequests`.
pub(crate) const INPUT_KEY: &str = "mcp-policy/approval";

/// Seals and opens approval states under one secret key.
#[derive(Clone)]
pub(crate) struct Seal {
    key: [u8; 32],
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal { .. }")
    }
}

/// A state that opened: issued by a layer with this key, for this call, not expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opened {
    pub nonce: [u8; 16],
    /// Seconds since the Unix epoch.
    pub expires: u64,
}

/// Why a state was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// Not an approval state at all (the server's own, say).
    NotOurs,
    /// Ours in form, but its seal does not match this call: forged, or issued for
    /// another grant, tool, policy or arguments.
    Forged,
    /// Issued for this call, but too long ago.
    Expired,
}

impl Broken {
    /// What the refused caller reads.
    pub(crate) fn explain(self) -> &'static str {
        match self {
            Broken::NotOurs => "The call carries no approval.",
            Broken::Forged => {
                "The approval state does not belong to this call: it was altered, forged, or issued for other arguments, another tool, another caller or a policy since replaced. Call again without it to ask for approval."
            }
            Broken::Expired => {
                "The approval expired before the call came back. Call again to ask for a new one."
            }
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Seal {
    /// A seal whose key derives from `secret` (the scope hasher's key).
    pub(crate) fn new(secret: &[u8]) -> Seal {
        use sha2::Digest;
        let mut hash = Sha256::new();
        hash.update(b"tower-mcp-policy approval state v1\0");
        hash.update(secret);
        Seal {
            key: hash.finalize().into(),
        }
    }

    fn mac(&self, call: &CallKey, expires: u64, nonce: &[u8; 16]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(PREFIX.as_bytes());
        mac.update(&call.0);
        mac.update(&expires.to_be_bytes());
        mac.update(nonce);
        mac
    }

    /// The state for `call`, good until `expires` (Unix seconds).
    pub(crate) fn seal(&self, call: &CallKey, expires: u64, nonce: [u8; 16]) -> String {
        let tag = self.mac(call, expires, &nonce).finalize().into_bytes();
        format!(
            "{PREFIX}{expires}.{}.{}",
            crate::pins::hex(&nonce),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Whether `state` is ours (whatever it then says).
    pub(crate) fn claims(state: &str) -> bool {
        state.starts_with(PREFIX)
    }

    /// Opens `state` for `call` at `now` (Unix seconds). Whether its nonce was already
    /// spent is for the caller to check.
    pub(crate) fn open(&self, state: &str, call: &CallKey, now: u64) -> Result<Opened, Broken> {
        let rest = state.strip_prefix(PREFIX).ok_or(Broken::NotOurs)?;
        let mut parts = rest.split('.');
        let (Some(expires), Some(nonce), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Broken::Forged);
        };
        // Only the canonical spelling of each part: one state, one string.
        let expires: u64 = match expires.parse::<u64>() {
            Ok(n) if expires == n.to_string() => n,
            _ => return Err(Broken::Forged),
        };
        let nonce = unhex16(nonce).ok_or(Broken::Forged)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Broken::Forged)?;
        // Compared in constant time.
        self.mac(call, expires, &nonce)
            .verify_slice(&tag)
            .map_err(|_| Broken::Forged)?;
        if expires <= now {
            return Err(Broken::Expired);
        }
        Ok(Opened { nonce, expires })
    }
}

/// 32 lowercase hex digits as 16 bytes.
fn unhex16(text: &str) -> Option<[u8; 16]> {
    let bytes = text.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeValue;

    fn call(arguments: &str) -> CallKey {
        CallKey::new(ScopeValue::from_u128(7), "transfer", "p1", arguments)
    }

    #[test]
    fn a_state_opens_only_for_its_call_with_its_key_before_it_expires() {
        let seal = Seal::new(b"secret key of the replicas");
        let nonce = [9u8; 16];
        let state = seal.seal(&call("{\"amount\":500}"), 1_000, nonce);
        assert!(Seal::claims(&state));
        assert_eq!(
            seal.open(&state, &call("{\"amount\":500}"), 999),
            Ok(Opened {
                nonce,
                expires: 1_000
            })
        );
        // Another replica with the same key opens it.
        let replica = Seal::new(b"secret key of the replicas");
        assert!(replica.open(&state, &call("{\"amount\":500}"), 999).is_ok());
        // Other arguments, another key, too late.
        assert_eq!(
            seal.open(&state, &call("{\"amount\":501}"), 999),
            Err(Broken::Forged)
        );
        let stranger = Seal::new(b"another key");
        assert_eq!(
            stranger.open(&state, &call("{\"amount\":500}"), 999),
            Err(Broken::Forged)
        );
        assert_eq!(
            seal.open(&state, &call("{\"amount\":500}"), 1_000),
            Err(Broken::Expired)
        );
    }

    #[test]
    fn an_altered_state_is_refused() {
        let seal = Seal::new(b"k");
        let key = call("{}");
        let state = seal.seal(&key, 1_000, [0xab; 16]);
        let parts: Vec<&str> = state.strip_prefix(PREFIX).unwrap().split('.').collect();
        let forged = [
            // A later expiry, another nonce, a tag cut short, extra parts, spellings.
            format!("{PREFIX}2000.{}.{}", parts[1], parts[2]),
            format!("{PREFIX}{}.{}.{}", parts[0], "02".repeat(16), parts[2]),
            format!("{PREFIX}{}.{}.{}", parts[0], parts[1], &parts[2][..10]),
            format!("{state}.x"),
            format!("{PREFIX}01000.{}.{}", parts[1], parts[2]),
            format!("{PREFIX}+1000.{}.{}", parts[1], parts[2]),
            format!(
                "{PREFIX}{}.{}.{}",
                parts[0],
                parts[1].to_uppercase(),
                parts[2]
            ),
            format!("{PREFIX}garbage"),
            PREFIX.to_owned(),
        ];
        for state in &forged {
            assert_eq!(seal.open(state, &key, 10), Err(Broken::Forged), "{state}");
        }
        assert_eq!(seal.open("server-state", &key, 10), Err(Broken::NotOurs));
        assert!(!Seal::claims("server-state"));
    }
}
