//! A flood of invented credentials against the in-memory counters: bytes per tracked
//! key, the latency of every charge while 2,000,000 new keys arrive (with the sweeper
//! passing over the table at the same time), and memory given back afterwards.
//!
//! `cargo bench --bench flood`. Figures go to the README ("Memory under a key flood").

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use tower_mcp_policy::counter::CounterStore as _;
use tower_mcp_policy::{
    Scope, ScopeHasher, ScopeValue,
    counter::{Charge, CounterId, MemoryCounters, Quota},
};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const FLOOD: usize = 2_000_000;

fn keys(n: usize, salt: &str) -> Vec<ScopeValue> {
    let h = ScopeHasher::with_key([7; 16]);
    (0..n)
        .map(|i| h.credential(format!("Bearer {salt}-{i}").as_bytes()))
        .collect()
}

fn charge(quota: Quota, key: ScopeValue) -> Charge {
    let id = CounterId::new("flood", quota, Scope::Grant);
    Charge::new(id, quota, key, NonZeroU32::MIN)
}

fn report(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<36} n={:>8}  p50 {:>5} ns  p99 {:>6} ns  p99.9 {:>7} ns  max {:>8} ns  over 1 ms: {}",
        ns.len(),
        at(0.50),
        at(0.99),
        at(0.999),
        ns[ns.len() - 1],
        ns.iter().filter(|&&t| t > 1_000_000).count()
    );
}

fn main() {
    // A long window, so nothing refills during the flood (the worst case for memory).
    let day = Quota::new(NonZeroU32::new(100).unwrap(), Duration::from_secs(86_400));
    let flood_keys = keys(FLOOD, "invented");

    // Bytes per tracked key: the live heap before and after 1,000,000 keys.
    {
        let store = MemoryCounters::new().with_max_keys(FLOOD);
        store
            .charge(&[charge(day, flood_keys[0])])
            .into_inner()
            .unwrap();
        let before = LIVE.load(Ordering::Relaxed);
        for &key in &flood_keys[1..1_000_001] {
            store.charge(&[charge(day, key)]).into_inner().unwrap();
        }
        let after = LIVE.load(Ordering::Relaxed);
        println!(
            "bytes per tracked key (1,000,000 keys, one counter): {:.1}",
            (after - before) as f64 / 1_000_000.0
        );
        // Refused keys cost nothing.
        let full = MemoryCounters::new().with_max_keys(1000);
        for &key in &flood_keys[..1000] {
            full.charge(&[charge(day, key)]).into_inner().unwrap();
        }
        let before = LIVE.load(Ordering::Relaxed);
        let refused = flood_keys[1000..201_000]
            .iter()
            .filter(|&&key| full.charge(&[charge(day, key)]).into_inner().is_err())
            .count();
        let after = LIVE.load(Ordering::Relaxed);
        println!(
            "{refused} refused new keys at max_keys 1000: live heap {:+} bytes, {} tracked",
            after - before,
            full.len()
        );
    }

    // Latency during the flood: one thread adds 2,000,000 new keys, another charges a
    // caller already tracked, a third sweeps the whole table over and over.
    let store = MemoryCounters::new().with_max_keys(4 * FLOOD);
    let regular = keys(64, "regular");
    let minute = Quota::new(NonZeroU32::new(u32::MAX).unwrap(), Duration::from_secs(60));
    for &key in &regular {
        store.charge(&[charge(minute, key)]).into_inner().unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut passes = 0;
            while !done.load(Ordering::Relaxed) {
                if std::env::var_os("FLOOD_SWEEP_NONSTOP").is_some() {
                    store.sweep();
                    passes += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            passes
        })
    };
    let tracked = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut ns = Vec::with_capacity(FLOOD);
            let mut idle = Vec::with_capacity(FLOOD);
            let mut i = 0;
            while !done.load(Ordering::Relaxed) && ns.len() < FLOOD {
                let c = charge(minute, regular[i % regular.len()]);
                let t = Instant::now();
                let _ = std::hint::black_box(store.charge(&[c]).into_inner());
                ns.push(t.elapsed().as_nanos() as u64);
                // The noise floor: the same timing around nothing (preemption on a
                // busy machine shows here too).
                let t = Instant::now();
                std::hint::black_box(&c);
                idle.push(t.elapsed().as_nanos() as u64);
                i += 1;
            }
            (ns, idle)
        })
    };
    let started = Instant::now();
    let mut flood_ns = Vec::with_capacity(FLOOD);
    for &key in &flood_keys {
        let c = charge(day, key);
        let t = Instant::now();
        let _ = std::hint::black_box(store.charge(&[c]).into_inner());
        flood_ns.push(t.elapsed().as_nanos() as u64);
    }
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let passes = sweeper.join().unwrap();
    let (tracked_ns, idle_ns) = tracked.join().unwrap();
    println!(
        "flood of {FLOOD} new keys: {:.2} s, {} tracked, {passes} full sweeps meanwhile",
        took.as_secs_f64(),
        store.len()
    );
    report("charge of a new key (flood)", flood_ns);
    report("charge of a tracked key (meanwhile)", tracked_ns);
    report("nothing, timed the same way", idle_ns);

    // Memory follows the active set: a flood on a 1 s window is swept after it.
    drop(store);
    let second = Quota::new(NonZeroU32::new(1).unwrap(), Duration::from_secs(1));
    let store = MemoryCounters::new().with_max_keys(FLOOD);
    let before = LIVE.load(Ordering::Relaxed);
    for &key in &flood_keys[..1_000_000] {
        store.charge(&[charge(second, key)]).into_inner().unwrap();
    }
    let peak = LIVE.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(3500));
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "1,000,000 keys on a 1 s window: {:.1} MB at the peak, {:.2} MB and {} keys 3.5 s later (background sweeper)",
        (peak - before) as f64 / 1e6,
        (after - before) as f64 / 1e6,
        store.len()
    );
}
