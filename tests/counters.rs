//! The counter seam: stable counter identities, quotas carried by charges, refunds, and
//! store errors. Pure, on a fake clock.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tower_mcp_policy::FakeClock;
use tower_mcp_policy::{
    Decision, Engine, Policy, ScopeHasher, ScopeKeys,
    counter::{Charge, ChargeError, CounterId, CounterStore, MemoryCounters, Quota, StoreError},
};

fn policy(text: &str) -> Arc<Policy> {
    Arc::new(text.parse().unwrap())
}

fn keys() -> ScopeKeys {
    let h = ScopeHasher::with_key([9; 16]);
    let grant = h.credential(b"Bearer alice");
    ScopeKeys::new(grant, h.no_session(grant))
}

const V1: &str = r#"{"version":"1","default":"deny","tools":{
    "a":{"limits":[{"counter":"shared","window":"minute","max":2}]},
    "b":{"limits":[{"counter":"b","window":"minute","max":2}]}}}"#;

#[test]
fn a_counter_keeps_its_identity_and_state_across_policy_versions() {
    // v2 adds a tool, keeps `shared` as it was and changes `b`'s window.
    let v2 = r#"{"version":"1","default":"deny","tools":{
        "a":{"limits":[{"counter":"shared","window":"minute","max":2}]},
        "c":{"limits":[{"counter":"shared","window":"minute","max":2}]},
        "b":{"limits":[{"counter":"b","window":"hour","max":2}]}}}"#;
    let (v1, v2) = (policy(V1), policy(v2));
    let id = |p: &Policy, name: &str| p.counters().iter().find(|c| c.name() == name).unwrap().id();
    assert_eq!(id(&v1, "shared"), id(&v2, "shared"));
    assert_ne!(
        id(&v1, "b"),
        id(&v2, "b"),
        "a changed window is a new counter"
    );
    let quota = Quota::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(60));
    assert_eq!(
        id(&v1, "shared"),
        CounterId::new("shared", quota, tower_mcp_policy::Scope::Grant),
        "derived from the name and definition alone"
    );
    let more = Quota::new(NonZeroU32::new(30).unwrap(), Duration::from_secs(60));
    assert_eq!(
        CounterId::new("shared", quota, tower_mcp_policy::Scope::Grant),
        CounterId::new("shared", more, tower_mcp_policy::Scope::Grant),
        "a changed max is the same counter: its state carries over"
    );

    // One store under both versions: `shared` carries over, `b` starts fresh.
    let store = MemoryCounters::with_clock(FakeClock::new());
    let old = Engine::with_counters(v1, store.clone());
    let new = Engine::with_counters(v2, store);
    let args = json!({});
    let call = |e: &Engine<MemoryCounters>, tool| e.decide(tool, Some(&args), &keys());
    assert_eq!(call(&old, "a"), Decision::Allow);
    assert_eq!(call(&old, "b"), Decision::Allow);
    assert_eq!(call(&old, "b"), Decision::Allow);
    assert_eq!(
        call(&new, "c"),
        Decision::Allow,
        "the second of shared's two"
    );
    assert!(
        matches!(call(&new, "a"), Decision::Deny(_)),
        "shared is spent"
    );
    assert_eq!(call(&new, "b"), Decision::Allow, "the new b is fresh");
}

#[test]
fn a_refund_gives_back_exactly_what_was_charged() {
    let p = policy(V1);
    let def = &p.counters()[0];
    let store = MemoryCounters::with_clock(FakeClock::new());
    let charge = |cost: u32| {
        Charge::new(
            def.id(),
            def.quota(),
            keys().grant,
            NonZeroU32::new(cost).unwrap(),
        )
    };
    assert!(store.charge(&[charge(2)]).into_inner().is_ok());
    assert!(matches!(
        store.charge(&[charge(1)]).into_inner(),
        Err(ChargeError::Exceeded { index: 0, .. })
    ));
    store.refund(&[charge(1)]);
    assert!(
        store.charge(&[charge(1)]).into_inner().is_ok(),
        "one unit came back"
    );
    assert!(
        store.charge(&[charge(1)]).into_inner().is_err(),
        "and only one"
    );
    // Refunding more than was charged cannot make the bucket larger than max.
    store.refund(&[charge(2)]);
    store.refund(&[charge(2)]);
    assert!(store.charge(&[charge(2)]).into_inner().is_ok());
    assert!(store.charge(&[charge(1)]).into_inner().is_err());
    // A bucket the store does not hold is left alone.
    let other = Charge::new(def.id(), def.quota(), keys().session, NonZeroU32::MIN);
    let before = store.len();
    store.refund(&[other]);
    assert_eq!(store.len(), before);
}

/// A store that is down and knows when it will try again.
struct BackingOff;

impl CounterStore for BackingOff {
    type Future = std::future::Ready<Result<(), ChargeError>>;
    fn charge(&self, _: &[Charge]) -> Self::Future {
        let error =
            StoreError::new("connection refused").with_retry_after(Duration::from_millis(4200));
        std::future::ready(Err(ChargeError::Unavailable(error)))
    }
}

#[tokio::test]
async fn a_store_error_is_a_fixed_message_with_the_stores_retry_hint() {
    let engine = Engine::with_counters(policy(V1), BackingOff);
    let args = serde_json::Value::Object(Default::default());
    let args = tower_mcp_policy::unstable::ArgValue::from(&args);
    let verdict = engine
        .decide_async(
            &[tower_mcp_policy::unstable::Call {
                tool: "a",
                args: Some(&args),
            }],
            &keys(),
        )
        .await;
    let Err(refusals) = verdict else {
        panic!("denied when the store is down")
    };
    let tower_mcp_policy::Decision::Deny(denial) = &refusals[0] else {
        panic!("{refusals:?}")
    };
    assert_eq!(
        denial.message(),
        "Rate-limit state is unavailable, the call was not run; try again in 5s."
    );
    assert_eq!(denial.retry_after(), Some(5));
    assert_eq!(denial.rule(), "(counter store)");
}

#[test]
fn a_key_flood_stops_at_the_bound_and_tracked_callers_keep_working() {
    let p = policy(V1);
    let clock = FakeClock::new();
    let store = MemoryCounters::with_clock(clock.clone()).with_max_keys(1000);
    assert_eq!(store.max_keys(), 1000);
    let engine = Engine::with_counters(p, store.clone());
    let h = ScopeHasher::with_key([9; 16]);
    let caller = |i: usize| {
        let grant = h.credential(format!("Bearer invented-{i}").as_bytes());
        ScopeKeys::new(grant, h.no_session(grant))
    };
    let args = json!({});
    for i in 0..1000 {
        assert_eq!(engine.decide("a", Some(&args), &caller(i)), Decision::Allow);
    }
    assert_eq!(store.len(), 1000);

    // A new caller is refused with a readable message; nothing was tracked for it.
    for i in 1000..3000 {
        let Decision::Deny(denial) = engine.decide("a", Some(&args), &caller(i)) else {
            panic!("caller {i} was let in past the bound");
        };
        assert_eq!(
            denial.kind(),
            tower_mcp_policy::DenialKind::CounterUnavailable
        );
        assert_eq!(
            denial.message(),
            "Rate-limit state is unavailable, the call was not run; try again in 1s."
        );
    }
    assert_eq!(store.len(), 1000, "the bound holds under the flood");

    // The store's own error says what happened, for the logs.
    let charge = Charge::new(
        p_counter(&engine),
        Quota::new(NonZeroU32::new(2).unwrap(), Duration::from_secs(60)),
        caller(5000).grant,
        NonZeroU32::MIN,
    );
    let Err(ChargeError::Unavailable(error)) = store.charge(&[charge]).into_inner() else {
        panic!("a new key was admitted to a full table");
    };
    assert!(
        error.to_string().starts_with(
            "the in-memory counter table is full (1000 buckets tracked, max_keys 1000)"
        ),
        "{error}"
    );

    // Callers already tracked keep their budgets: the second of two passes, the
    // third is a rate-limit denial, not a capacity one.
    assert_eq!(engine.decide("a", Some(&args), &caller(7)), Decision::Allow);
    let Decision::Deny(denial) = engine.decide("a", Some(&args), &caller(7)) else {
        panic!("the budget of max 2 was exceeded");
    };
    assert_eq!(denial.kind(), tower_mcp_policy::DenialKind::Limit);

    // Once the buckets have refilled, a sweep gives the room back.
    clock.advance(Duration::from_secs(121));
    store.sweep();
    assert!(store.is_empty(), "{} buckets left", store.len());
    assert_eq!(
        engine.decide("a", Some(&args), &caller(5000)),
        Decision::Allow
    );
}

#[test]
fn forgotten_counters_give_their_keys_back() {
    let store = MemoryCounters::with_clock(FakeClock::new()).with_max_keys(10);
    let engine = Engine::with_counters(policy(V1), store.clone());
    let args = json!({});
    assert_eq!(engine.decide("a", Some(&args), &keys()), Decision::Allow);
    assert_eq!(engine.decide("b", Some(&args), &keys()), Decision::Allow);
    assert_eq!(store.len(), 2);
    // A policy without `b`: its counter and its bucket go.
    store.retain_counters(&[p_counter(&engine)]);
    assert_eq!(store.len(), 1);
}

/// The id of `shared`, the counter of tool `a` in [`V1`].
fn p_counter<S: CounterStore>(engine: &Engine<S>) -> CounterId {
    let policy = engine.policy();
    let def = policy
        .counters()
        .iter()
        .find(|c| c.name() == "shared")
        .expect("V1 has `shared`");
    def.id()
}

/// Tightening a limit during an incident must never hand out a fresh budget: the
/// counter's state carries over a change of `max`, so lowering it never raises anyone's
/// remaining budget, and restoring it gives back no fresh burst.
#[test]
fn lowering_a_limit_never_raises_a_remaining_budget() {
    let limit = |max: u32| {
        policy(&format!(
            r#"{{"version":"1","default":"deny","tools":{{"close":{{"limits":[
                {{"counter":"close","window":"minute","max":{max}}}]}}}}}}"#
        ))
    };
    let clock = FakeClock::new();
    let store = MemoryCounters::with_clock(clock.clone());
    let args = json!({});
    let passes = |max: u32| {
        let engine = Engine::with_counters(limit(max), store.clone());
        (0..100)
            .take_while(|_| engine.decide("close", Some(&args), &keys()) == Decision::Allow)
            .count()
    };
    // 25 of 30 used (5 left), then the operator lowers the limit to 20: at most the 5
    // that were left pass (the bucket is spent until the same moment, and the lower
    // rate refills it more slowly), never a fresh 20.
    let engine = Engine::with_counters(limit(30), store.clone());
    for _ in 0..25 {
        assert_eq!(
            engine.decide("close", Some(&args), &keys()),
            Decision::Allow
        );
    }
    let lowered = passes(20);
    assert!(
        lowered <= 5,
        "lowering gave {lowered} calls, more than the 5 left"
    );
    // Restored to 30: what is left, not a fresh 30.
    let restored = passes(30);
    assert!(lowered + restored <= 5, "restoring gave {restored} more");
    // A fresh caller under the lowered limit has the lowered burst.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(passes(20), 20);
}
