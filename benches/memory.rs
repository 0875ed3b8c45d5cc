//! Memory per open session: how many bytes the session operator holds for a session
//! beyond its events' own bytes (payload and id text), the figure issue 9 bounds at 1 KiB.
//!
//! A counting allocator records the bytes requested and not yet freed. The operator is
//! fed `SESSIONS` keys of `k` events each, all inside one session per key and none due
//! to close, so everything fed is still held at the end; the growth of live bytes minus
//! the events' own bytes, divided by the number of sessions, is the overhead: the
//! `RecordEvent` structs, the key, the per-key state and its dedup index (past 32 ids),
//! the timers, the cache's maps, and the slack of every growing vector and table. The
//! allocator's own rounding comes on top (mimalloc in the binary: about an eighth more).
//!
//! Then the watermark closes every session, and the journeys are dropped: what is left
//! is what a closed session costs while it is remembered for late arrivals and
//! duplicates (a retention of one gap), per journey.
//!
//! Run: `cargo bench --bench memory`. Under `cargo test` it runs once, smaller.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use braid::decode::Event;
use braid::engine::{Operator, SessionConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter
// is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A page.viewed-like payload of about 260 bytes, as in the journey workload.
fn payload(key: &str, id: &str, time: i64) -> String {
    format!(
        r#"{{"event_id":"{id}","customer_id":"{key}","ts":{time},"page":"/products/sku-{n:05}","referrer":"https://search.example.com/?q=shoes","user_agent":"Mozilla/5.0 (X11; Linux x86_64)","session_hint":"s-{n:08x}","device":"desktop"}}"#,
        n = time % 99_991
    )
}

struct Figure {
    sessions: usize,
    events_per_session: usize,
    own_per_session: f64,
    overhead_per_session: f64,
    /// What a closed session costs while it is remembered (retention: one gap) for
    /// late arrivals and de-duplication: its window, id and id fingerprints.
    remembered_per_session: f64,
}

fn measure(sessions: usize, events_per_session: usize) -> Figure {
    let mut op = SessionConfig::with_gap("memory", &["page.viewed"], Duration::from_secs(30 * 60))
        .build()
        .expect("a valid session config");
    let mut out = Vec::new();
    const BASE: i64 = 1_767_600_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let mut own = 0usize;
    for j in 0..events_per_session {
        for s in 0..sessions {
            let key = format!("c-{s:06}");
            let id = format!("e-{s}-{j}");
            // A minute apart: one session per key, never due at this watermark.
            let time = BASE + j as i64 * 60_000;
            let payload = payload(&key, &id, time);
            own += payload.len() + id.len();
            let event = Event {
                source: 0,
                partition: 0,
                offset: (j * sessions + s) as u64,
                key,
                time,
                id: Some(id.into()),
                payload: payload.into(),
            };
            op.on_event(event, BASE - 1, &mut out);
        }
    }
    assert!(
        out.is_empty(),
        "nothing closes or is late: {:?}",
        out.first()
    );
    assert_eq!(op.open_windows(), sessions);
    let held = (LIVE.load(Ordering::Relaxed) - before) as f64;
    // Every session closes (its journey is handed out and dropped) but none is
    // forgotten yet.
    let closing = BASE + (events_per_session as i64 - 1) * 60_000 + 30 * 60_000 + 1;
    op.on_watermark(closing, &mut out);
    assert_eq!((op.open_windows(), out.len()), (0, sessions));
    out.clear();
    out.shrink_to_fit();
    let remembered = (LIVE.load(Ordering::Relaxed) - before) as f64;
    Figure {
        sessions,
        events_per_session,
        own_per_session: own as f64 / sessions as f64,
        overhead_per_session: (held - own as f64) / sessions as f64,
        remembered_per_session: remembered / sessions as f64,
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs this once as a smoke test.
    let bench = std::env::args().any(|a| a == "--bench");
    let sessions = if bench { 100_000 } else { 2_000 };
    for k in [1, 4, 10, 40] {
        let f = measure(sessions, k);
        println!(
            "memory per open session: {} sessions of {} events: {:.0} bytes beyond the events' own {:.0} (payload + id), {:.0} per event",
            f.sessions,
            f.events_per_session,
            f.overhead_per_session,
            f.own_per_session,
            f.overhead_per_session / f.events_per_session as f64
        );
        println!(
            "memory per remembered journey: {} journeys of {} events: {:.0} bytes",
            f.sessions, f.events_per_session, f.remembered_per_session
        );
    }
}
