//! What a script call and its reply look like: keys, the requests' charges packed
//! into one argument, and the script's answer.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use redis::Script;
use smallvec::SmallVec;

use crate::counter::{Charge, StoreError};

/// What a group of charges asks for: to be charged, or given back.
#[derive(Clone, Copy)]
pub(super) enum Mode {
    Charge,
    Refund,
}

/// A group's answer from the script: `None` when applied, else the index of the charge
/// that did not fit and the wait in microseconds (negative: never).
pub(super) type Answer = Option<(usize, f64)>;

/// A key's length after the prefix: the counter id and the scope hash in hex, with a `:`.
const KEY_HEX: usize = 16 + 1 + 32;

/// The script call for `groups` (one per request, sharing the clock `now`: the
/// server's when `None`), written straight into one command buffer: each bucket once in
/// `KEYS`, each kind of charge (period, max, cost) once, and then one binary argument
/// holding, per group, its number of charges and per charge one small number naming its
/// bucket and kind. Redis turns every argument into a string and the script every
/// number back, so fewer, shorter arguments are what make a call cheap.
pub(super) fn script_call<'a, G>(
    groups: G,
    now: Option<Duration>,
    prefix: &str,
    script: &Script,
) -> redis::Cmd
where
    G: Iterator<Item = (&'a [Charge], Mode)> + Clone,
{
    let mut buckets = Distinct::new();
    let mut kinds = Distinct::new();
    // Per charge, the 1-based indices of its bucket and of its kind.
    let mut indices: SmallVec<[(usize, usize); 16]> = SmallVec::new();
    let mut count = 0;
    for charge in groups.clone().flat_map(|(charges, _)| {
        count += 1;
        charges
    }) {
        let bucket = (charge.counter.as_u64(), charge.key.as_u128());
        let kind = (
            charge.quota.period().as_nanos(),
            charge.quota.max().get(),
            charge.cost.get(),
        );
        indices.push((buckets.position(bucket), kinds.position(kind)));
    }
    let (buckets, kinds) = (buckets.items, kinds.items);
    let mut call = redis::Cmd::with_capacity(
        6 + buckets.len() + kinds.len() * 3,
        // Per bucket its name; per kind three numbers; per request and charge a byte
        // or two.
        64 + buckets.len() * (prefix.len() + KEY_HEX)
            + kinds.len() * 48
            + (count + indices.len()) * 2,
    );
    call.arg("EVALSHA")
        .arg(script.get_hash())
        .arg(buckets.len());
    let mut key = Vec::with_capacity(prefix.len() + KEY_HEX);
    for &(counter, scope) in &buckets {
        write_key(&mut key, prefix, counter, scope);
        call.arg(&key[..]);
    }
    match now {
        Some(now) => call.arg(now.as_micros()),
        None => call.arg(""),
    };
    call.arg(kinds.len());
    for &(period, max, cost) in &kinds {
        call.arg(period).arg(max).arg(cost);
    }
    // Every group in one argument: Redis makes a string of each argument, and the
    // script a number of each string, so one binary string of small numbers is far
    // cheaper than an argument per number.
    let mut numbers = Vec::with_capacity(2 * (count + indices.len()));
    let mut indices = indices.iter();
    for (charges, mode) in groups {
        let refund = matches!(mode, Mode::Refund);
        push_number(&mut numbers, 2 * charges.len() as u64 + u64::from(refund));
        for &(bucket, kind) in indices.by_ref().take(charges.len()) {
            push_number(&mut numbers, ((kind - 1) * buckets.len() + bucket) as u64);
        }
    }
    call.arg(&numbers[..]);
    call
}

/// Distinct items in the order first seen, each with its 1-based index (linear in the
/// items however many a call of 256 requests names). Hashed with foldhash: the items
/// are counter ids and keyed hashes of scope values, which no caller can choose.
struct Distinct<T> {
    items: Vec<T>,
    index: HashMap<T, usize, foldhash::fast::RandomState>,
}

impl<T: Copy + Eq + Hash> Distinct<T> {
    fn new() -> Self {
        Distinct {
            items: Vec::new(),
            index: HashMap::default(),
        }
    }

    /// The index of `item`, added at the end when new.
    fn position(&mut self, item: T) -> usize {
        *self.index.entry(item).or_insert_with(|| {
            self.items.push(item);
            self.items.len()
        })
    }
}

/// The script's reply for a call of `groups` requests, each request's answer in order:
/// the number of groups, then `group:index:wait` (1-based) for each group that did not
/// fit, its charge `index` would after `wait` microseconds (negative: never).
pub(super) fn parse_reply(reply: &str, groups: usize) -> Result<Vec<Answer>, StoreError> {
    let bad = || StoreError::new(format!("the Redis script answered {reply:?}"));
    let mut parts = reply.split(' ');
    let count: usize = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    if count != groups {
        return Err(StoreError::new(format!(
            "the Redis script answered for {count} requests of {groups}"
        )));
    }
    let mut answers = vec![None; groups];
    for failure in parts {
        let mut fields = failure.splitn(3, ':');
        let mut field = || fields.next().ok_or_else(bad);
        let group: usize = field()?.parse().map_err(|_| bad())?;
        let index: usize = field()?.parse().map_err(|_| bad())?;
        let wait: f64 = field()?.parse().map_err(|_| bad())?;
        let answer = group
            .checked_sub(1)
            .and_then(|group| answers.get_mut(group))
            .filter(|answer| answer.is_none() && index > 0)
            .ok_or_else(bad)?;
        *answer = Some((index - 1, wait));
    }
    Ok(answers)
}

/// `n` in 7-bit digits, least significant first, the high bit set on every byte but
/// the last (how the script reads the groups' numbers).
fn push_number(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub(super) fn key_of(prefix: &str, charge: &Charge) -> String {
    let mut key = Vec::with_capacity(prefix.len() + KEY_HEX);
    write_key(
        &mut key,
        prefix,
        charge.counter.as_u64(),
        charge.key.as_u128(),
    );
    String::from_utf8(key).expect("a text prefix and hex digits")
}

/// The key that says `session` was issued: `prefix` + `session:` + its hash in hex.
pub(super) fn session_key(prefix: &str, session: crate::scope::ScopeValue) -> String {
    let mut key = Vec::with_capacity(prefix.len() + 8 + 32);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(b"session:");
    push_hex_u128(&mut key, session.as_u128());
    String::from_utf8(key).expect("a text prefix and hex digits")
}

/// The key that names the grant owning `task`: `prefix` + `task:` + its hash in hex.
pub(super) fn task_key(prefix: &str, task: crate::scope::ScopeValue) -> String {
    let mut key = Vec::with_capacity(prefix.len() + 5 + 32);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(b"task:");
    push_hex_u128(&mut key, task.as_u128());
    String::from_utf8(key).expect("a text prefix and hex digits")
}

/// `value` in 32 hex digits (a task's owner, as stored).
pub(super) fn hex_u128(value: u128) -> String {
    format!("{value:032x}")
}

/// The key of a counter's bucket, in place of what `key` held. Written by hand, as
/// bytes: `format!` with two hex fields costs more than the rest of a request's share
/// of a script call, and a `String` checks every character it is given.
fn write_key(key: &mut Vec<u8>, prefix: &str, counter: u64, scope: u128) {
    key.clear();
    key.extend_from_slice(prefix.as_bytes());
    push_hex(key, counter);
    key.push(b':');
    push_hex_u128(key, scope);
}

/// `value` in 32 hex digits, zero-padded.
fn push_hex_u128(out: &mut Vec<u8>, value: u128) {
    push_hex(out, (value >> 64) as u64);
    push_hex(out, value as u64);
}

/// `value` in 16 hex digits, zero-padded.
fn push_hex(out: &mut Vec<u8>, value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0; 16];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[(value >> (60 - 4 * i) & 0xf) as usize];
    }
    out.extend_from_slice(&digits);
}

pub(super) fn hex(key: [u8; 16]) -> String {
    let mut text = Vec::with_capacity(32);
    push_hex_u128(&mut text, u128::from_be_bytes(key));
    String::from_utf8(text).expect("hex digits")
}

pub(super) fn unhex(text: &str) -> Option<[u8; 16]> {
    let mut key = [0u8; 16];
    if text.len() != 32 {
        return None;
    }
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;
    use crate::counter::{CounterId, Quota};
    use crate::scope::{Scope, ScopeHasher, ScopeValue};

    #[test]
    fn keys_are_the_prefix_the_counter_id_and_the_scope_hash_in_hex() {
        let quota = Quota::new(NonZeroU32::new(30).unwrap(), Duration::from_secs(60));
        let one = NonZeroU32::new(1).unwrap();
        for name in ["rate", "transfers", ""] {
            let counter = CounterId::new(name, quota, Scope::Grant);
            for key in [
                ScopeHasher::with_key([7; 16]).credential(b"Bearer abc"),
                ScopeValue::GLOBAL,
            ] {
                let charge = Charge::new(counter, quota, key, one);
                let expected = format!(
                    "mcp-policy:{:016x}:{:032x}",
                    counter.as_u64(),
                    key.as_u128()
                );
                assert_eq!(key_of("mcp-policy:", &charge), expected);
            }
        }
    }

    #[test]
    fn the_hasher_key_is_stored_as_32_hex_digits_and_read_back() {
        let key: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(17).wrapping_add(9));
        let text = hex(key);
        let expected: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(text, expected);
        assert_eq!(unhex(&text), Some(key));
        for bad in ["", "0", &text[1..], "zz".repeat(16).as_str()] {
            assert_eq!(unhex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn distinct_items_keep_their_first_index() {
        let mut distinct = Distinct::new();
        for round in 0..3 {
            for item in 0..40_u32 {
                assert_eq!(distinct.position(item), item as usize + 1, "round {round}");
            }
        }
        assert_eq!(distinct.items, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_call_names_each_bucket_and_kind_once_and_each_charge_by_one_number() {
        let minute = Quota::new(NonZeroU32::new(30).unwrap(), Duration::from_secs(60));
        let day = Quota::new(NonZeroU32::new(5).unwrap(), Duration::from_secs(86_400));
        let (a, b) = (
            CounterId::new("a", minute, Scope::Grant),
            CounterId::new("b", day, Scope::Global),
        );
        let hasher = ScopeHasher::with_key([7; 16]);
        let (alice, bob) = (hasher.credential(b"alice"), hasher.credential(b"bob"));
        let one = NonZeroU32::MIN;
        let charge = |id, quota, key| Charge::new(id, quota, key, one);
        let job = |charges: &[Charge], mode| (charges.to_vec(), mode);
        let batch = [
            job(
                &[charge(a, minute, alice), charge(b, day, ScopeValue::GLOBAL)],
                Mode::Charge,
            ),
            job(&[charge(a, minute, bob)], Mode::Charge),
            job(&[charge(a, minute, alice)], Mode::Refund),
        ];
        let script = Script::new("return ''");
        let groups = batch.iter().map(|(charges, mode)| (&charges[..], *mode));
        let call = script_call(groups, None, "p:", &script);
        let args: Vec<Vec<u8>> = call
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => panic!("a cursor argument"),
            })
            .collect();
        let key = |id, key| key_of("p:", &charge(id, minute, key)).into_bytes();
        let text = |text: &str| text.as_bytes().to_vec();
        let expected = [
            text("EVALSHA"),
            text(script.get_hash()),
            text("3"),
            key(a, alice),
            key(b, ScopeValue::GLOBAL),
            key(a, bob),
            text(""),
            // Two kinds: 2 s and 17,280 s per unit, each costing 1.
            text("2"),
            text("2000000000"),
            text("30"),
            text("1"),
            text("17280000000000"),
            text("5"),
            text("1"),
            // Per request its charges times two (plus one: a refund), per charge
            // (kind - 1) * 3 + bucket.
            vec![4, 1, 5, 2, 3, 3, 1],
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn numbers_take_seven_bits_a_byte_least_significant_first() {
        let cases: [(u64, &[u8]); 5] = [
            (0, &[0]),
            (127, &[127]),
            (128, &[0x80, 1]),
            (5001, &[0x89, 0x27]),
            (u64::from(u32::MAX), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (n, bytes) in cases {
            let mut out = Vec::new();
            push_number(&mut out, n);
            assert_eq!(out, bytes, "{n}");
        }
    }

    #[test]
    fn replies_are_read_strictly() {
        assert_eq!(parse_reply("2", 2).unwrap(), [None, None]);
        assert_eq!(
            parse_reply("3 2:1:1500.5 3:2:-1", 3).unwrap(),
            [None, Some((0, 1500.5)), Some((1, -1.0))]
        );
        let bad = [
            ("", 1),
            ("2", 3),
            ("1 0:1:5", 1),
            ("1 2:1:5", 1),
            ("1 1:0:5", 1),
            ("2 1:1:5 1:1:5", 2),
            ("1 1:1", 1),
            ("1 1:1:x", 1),
            ("1 x:1:5", 1),
            ("1 1:1:5 ", 1),
        ];
        for (reply, groups) in bad {
            assert!(parse_reply(reply, groups).is_err(), "{reply:?}");
        }
    }
}
