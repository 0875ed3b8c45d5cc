//! The `tumbling` and `hopping` correlation kinds: per key, all sources merged, every
//! event of the key in a fixed window of event time. One operator serves both kinds:
//! tumbling is hopping with `hop = size`.
//!
//! Rules (docs/semantics.md, "Correlation: tumbling / hopping", gives the reasons):
//! - Windows are aligned to the Unix epoch: they start at every multiple of `hop` and
//!   last `size` (`hop ≤ size`), `[k·hop, k·hop + size)`. An event at `t` is in every
//!   window with `start ≤ t < start + size` (`⌈size/hop⌉` or `⌊size/hop⌋` of them; one
//!   for tumbling); an event exactly at a window's end belongs to the next window only.
//! - A window exists once an event joins it. It closes — one record, its events
//!   dropped — once the watermark `W` is past its end plus grace: `W > end + grace`
//!   (the same strictness as every kind: an event at exactly `W` is on time), and
//!   `W = i64::MAX` (end of input) closes everything, marked as cut by the boundary.
//! - An event whose windows are all closed (`W > end + grace` for its last window)
//!   is late; `would_join` names the earliest of its windows that produced a record
//!   and is still remembered. An event some of whose windows are still open (hopping
//!   only) joins those, and only those: it is not late, it is partially included.
//!   Accounting is then: every event is in at least one record, or in one late
//!   report, or is one duplicate — never in two of these; counting distinct
//!   (topic, partition, offset) over the records gives the accepted events exactly,
//!   and each accepted event is in exactly the records of its windows that were open
//!   when it arrived (a contiguous run ending with its last window). For tumbling
//!   every accepted event is in exactly one record.
//! - Emitted windows are remembered (their start and the event-id fingerprints of the
//!   events whose last window they are) until `W > end + grace + retention`
//!   (retention defaults to `size`), for `would_join` and de-duplication.
//! - De-duplication: a (source, id) already accepted for the same key is a duplicate
//!   while any window containing it is open or remembered (its fingerprint lives until
//!   its last window is forgotten). It is checked before lateness.
//! - Watermark work touches only due windows: two ordered timer sets (closes and
//!   expiries), never a scan of the keys. Emission order on one watermark: by
//!   (window end, key, window start).
//!
//! A key keeps each accepted event once, sorted chronologically, however many windows
//! it is in; a window's record is rendered straight from that list when it closes, and
//! an event leaves the list when its last window closes. So hopping windows cost no
//! copies of payloads.
//!
//! Write-behind state: per-key [`KeyState`]s live in a [`KeyCache`], driven by the
//! runtime through [`Checkpointed`], as for sessions: every mutation marks the key
//! dirty (duplicates and late events change nothing), a key with neither open nor
//! remembered windows leaves the cache, timers stay in memory for evicted keys, and a
//! key the store lost has its timers dropped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cache::{CacheState, KeyCache, Lookup, Replaced};
use super::{
    Checkpointed, CorrelationRecord, FastSet, JourneyId, LateArrival, Operator, Output,
    RecordEvent, Topics, WindowedRecord, fingerprint,
};
use crate::decode::Event;

/// Longest accepted `size`, `hop`, `grace` or `retention`: 100 years. Event times stay
/// within years 0000 to 9999, so `time + size + grace + retention` never overflows.
pub const MAX_WINDOW_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

fn default_true() -> bool {
    true
}

/// The `tumbling` or `hopping` correlation of one topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// The topology's name; part of every record id.
    pub topology: String,
    /// The topic of each source, by source index.
    pub sources: Vec<String>,
    /// Window length (whole ms).
    pub size: Duration,
    /// A window starts every `hop` (≤ `size`); None: `size` (tumbling).
    #[serde(default)]
    pub hop: Option<Duration>,
    /// How long past its end a window waits for out-of-order events.
    #[serde(default)]
    pub grace: Duration,
    /// How long past its close an emitted window is remembered for late reports
    /// (`would_join`) and de-duplication; default `size`.
    #[serde(default)]
    pub retention: Option<Duration>,
    /// Whether records embed each event's payload.
    #[serde(default = "default_true")]
    pub include_payload: bool,
    /// A window record larger than this is emitted in parts
    /// ([`crate::engine::WindowedRecord::to_json_parts`]); none: never split.
    #[serde(default)]
    pub max_record_bytes: Option<usize>,
    /// Events a window keeps; an event that would make one of its open windows hold
    /// more is counted in them (`dropped_events`), not kept. None: unlimited.
    #[serde(default)]
    pub max_events: Option<u64>,
}

/// An invalid window configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowConfigError {
    #[error(
        "topology `{topology}`, correlation {kind}: `{field}` must be at least 1ms, got {got:?}"
    )]
    TooSmall {
        topology: String,
        kind: &'static str,
        field: &'static str,
        got: Duration,
    },
    #[error(
        "topology `{topology}`, correlation {kind}: `{field}` must be at most 100 years, got {got:?}"
    )]
    TooLong {
        topology: String,
        kind: &'static str,
        field: &'static str,
        got: Duration,
    },
    #[error(
        "topology `{topology}`, correlation hopping: `hop` ({hop:?}) must be at most `size` ({size:?})"
    )]
    HopAboveSize {
        topology: String,
        hop: Duration,
        size: Duration,
    },
    #[error("topology `{topology}`, correlation {kind}: {count} sources, expected 1 to 65536")]
    SourceCount {
        topology: String,
        kind: &'static str,
        count: usize,
    },
}

impl WindowConfig {
    /// The kind as written in the topology file.
    fn kind(&self) -> &'static str {
        if self.hop.is_some() {
            "hopping"
        } else {
            "tumbling"
        }
    }

    /// Checks the configuration and makes the operator. Sub-millisecond parts of
    /// durations are dropped (event times are whole milliseconds).
    pub fn build(self) -> Result<WindowOperator, WindowConfigError> {
        let (topology, kind) = (&self.topology, self.kind());
        let hop = self.hop.unwrap_or(self.size);
        let retention = self.retention.unwrap_or(self.size);
        for (field, got) in [("size", self.size), ("hop", hop)] {
            if got.as_millis() == 0 {
                return Err(WindowConfigError::TooSmall {
                    topology: topology.clone(),
                    kind,
                    field,
                    got,
                });
            }
        }
        for (field, got) in [
            ("size", self.size),
            ("hop", hop),
            ("grace", self.grace),
            ("retention", retention),
        ] {
            if got > MAX_WINDOW_DURATION {
                return Err(WindowConfigError::TooLong {
                    topology: topology.clone(),
                    kind,
                    field,
                    got,
                });
            }
        }
        if hop.as_millis() > self.size.as_millis() {
            return Err(WindowConfigError::HopAboveSize {
                topology: topology.clone(),
                hop,
                size: self.size,
            });
        }
        if self.sources.is_empty() || self.sources.len() > usize::from(u16::MAX) + 1 {
            return Err(WindowConfigError::SourceCount {
                topology: topology.clone(),
                kind,
                count: self.sources.len(),
            });
        }
        // All bounded by MAX_WINDOW_DURATION above, so the casts are exact.
        Ok(WindowOperator {
            topics: self.sources.into_iter().map(Arc::from).collect(),
            topology: self.topology.into(),
            size: self.size.as_millis() as i64,
            hop: hop.as_millis() as i64,
            grace: self.grace.as_millis() as i64,
            retention: retention.as_millis() as i64,
            include_payload: self.include_payload,
            max_record_bytes: self.max_record_bytes.unwrap_or(usize::MAX),
            max_events: self
                .max_events
                .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
            watermark: i64::MIN,
            cache: KeyCache::new(),
            closes: BTreeSet::new(),
            expiries: BTreeSet::new(),
        })
    }
}

/// What is remembered of an emitted window, for late arrivals and de-duplication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmittedWindow {
    pub start: i64,
    /// Fingerprints of the (source, id) of the events whose last window this is,
    /// removed from `seen` when it is forgotten.
    pub fingerprints: Vec<u128>,
}

/// Everything the operator keeps for one key.
///
/// Invariants: `events` is sorted by [`RecordEvent::order_key`] and holds exactly the
/// accepted events whose last window is open; `open` (window starts) and `emitted` are
/// sorted and disjoint; every open window holds at least one event of `events`; `seen`
/// holds exactly the fingerprints of the events with an id in `events` and in
/// `emitted`.
///
/// `seen` is not stored but rebuilt when a state is read back, as for sessions
/// ([`super::session::KeyState`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredKeyState")]
pub struct KeyState {
    pub events: Vec<RecordEvent>,
    pub open: Vec<i64>,
    /// Per open window start (sorted), the events it did not keep: `max_events`.
    pub dropped: Vec<(i64, u64)>,
    pub emitted: Vec<EmittedWindow>,
    #[serde(skip_serializing)]
    pub seen: FastSet<u128>,
}

impl super::Inspect for KeyState {
    /// Events are kept once per key, not per window, so counts are not given.
    fn open_items(&self, _: &[u16], out: &mut Vec<super::OpenItem>) {
        out.extend(self.open.iter().map(|&start| super::OpenItem {
            start,
            events: None,
            missing: Vec::new(),
        }));
    }
}

/// A [`KeyState`] as stored: without `seen`.
#[derive(Deserialize)]
struct StoredKeyState {
    events: Vec<RecordEvent>,
    open: Vec<i64>,
    dropped: Vec<(i64, u64)>,
    emitted: Vec<EmittedWindow>,
}

impl From<StoredKeyState> for KeyState {
    fn from(stored: StoredKeyState) -> KeyState {
        let StoredKeyState {
            events,
            open,
            dropped,
            emitted,
        } = stored;
        let kept = events
            .iter()
            .filter_map(|e| e.id.as_deref().map(|id| fingerprint(e.source, id)));
        let emitted_ids = emitted.iter().flat_map(|w| w.fingerprints.iter().copied());
        let seen = kept.chain(emitted_ids).collect();
        KeyState {
            events,
            open,
            dropped,
            emitted,
            seen,
        }
    }
}

impl crate::state::StoredWhole for KeyState {}

impl CacheState for KeyState {
    /// A key with neither open nor remembered windows has no state (`events` and
    /// `seen` are then empty too, by the invariants).
    fn is_empty(&self) -> bool {
        self.open.is_empty() && self.emitted.is_empty()
    }
}

/// A timer: (deadline, key, window start). Ordered by deadline first, which for close
/// timers (`end + grace`) is the required emission order.
type Timer = (i64, Arc<str>, i64);

/// The running window operator; see the module doc for its rules.
#[derive(Debug)]
pub struct WindowOperator {
    topology: Box<str>,
    topics: Topics,
    size: i64,
    hop: i64,
    grace: i64,
    retention: i64,
    include_payload: bool,
    max_record_bytes: usize,
    max_events: usize,
    /// Highest watermark seen; `i64::MIN` before the first.
    watermark: i64,
    cache: KeyCache<KeyState>,
    /// One per open window: (end + grace, key, start).
    closes: BTreeSet<Timer>,
    /// One per remembered emitted window: (end + grace + retention, key, start).
    expiries: BTreeSet<Timer>,
}

/// Whether the watermark is past a deadline: strictly, since an event at exactly the
/// watermark is on time; end of input passes everything.
fn passed(deadline: i64, watermark: i64) -> bool {
    deadline < watermark || watermark == i64::MAX
}

impl WindowOperator {
    /// The highest watermark seen.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Emitted windows still remembered for late arrivals and duplicates.
    pub fn remembered_windows(&self) -> usize {
        self.expiries.len()
    }

    /// The state of one key if it is cached (None for an evicted key).
    pub fn key_state(&self, key: &str) -> Option<&KeyState> {
        self.cache.cached(key)
    }

    /// The start of the earliest and of the latest window containing `t`.
    pub fn windows_of(&self, t: i64) -> (i64, i64) {
        let first = ((t - self.size).div_euclid(self.hop) + 1) * self.hop;
        let last = t.div_euclid(self.hop) * self.hop;
        (first, last)
    }

    fn close_at(&self, start: i64) -> i64 {
        start + self.size + self.grace
    }

    fn forget_at(&self, start: i64) -> i64 {
        start + self.size + self.grace + self.retention
    }

    /// Removes every timer of `key` (a scan: only for keys whose state is not there).
    fn drop_timers(&mut self, key: &str) {
        self.closes.retain(|t| &*t.1 != key);
        self.expiries.retain(|t| &*t.1 != key);
    }

    fn late(
        &self,
        event: Event,
        deadline: i64,
        would_join: Option<JourneyId>,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Late(LateArrival::of(
            event,
            &self.topics,
            self.watermark,
            self.watermark.saturating_sub(deadline),
            would_join,
        )));
    }

    /// Emits the open window of `key` starting at `start` (its close timer has just
    /// been taken) and starts remembering it.
    fn emit(&mut self, key: Arc<str>, start: i64, out: &mut Vec<Output>) {
        let (size, hop) = (self.size, self.hop);
        let forget_after = self.forget_at(start);
        let mut entry = match self.cache.get_mut(&key) {
            Lookup::Found(entry) => entry,
            Lookup::Lost => return self.drop_timers(&key),
            Lookup::New => return,
        };
        let Ok(i) = entry.state().open.binary_search(&start) else {
            return;
        };
        let state = entry.state_mut();
        state.open.remove(i);
        let dropped = match state.dropped.binary_search_by_key(&start, |d| d.0) {
            Ok(at) => state.dropped.remove(at).1,
            Err(_) => 0,
        };
        let end = start + size;
        let from = state.events.partition_point(|e| e.time < start);
        let to = state.events.partition_point(|e| e.time < end);
        let id = JourneyId::new(&self.topology, &key, start);
        let parts = WindowedRecord {
            kind: "window",
            id,
            key: &key,
            start,
            end,
            events: &state.events[from..to],
            topics: &self.topics,
            include_payload: self.include_payload,
            cut_by_boundary: self.watermark == i64::MAX,
            dropped,
        }
        .to_json_parts(self.max_record_bytes);
        // Windows close in start order, so the events before the next window's start
        // have no open window left: this was their last one.
        let done = state.events.partition_point(|e| e.time < start + hop);
        let fingerprints = state
            .events
            .drain(..done)
            .filter_map(|e| e.id.as_deref().map(|id| fingerprint(e.source, id)))
            .collect();
        let at = state.emitted.partition_point(|w| w.start < start);
        state.emitted.insert(
            at,
            EmittedWindow {
                start,
                fingerprints,
            },
        );
        self.expiries.insert((forget_after, key.clone(), start));
        for json in parts {
            out.push(Output::Correlation(CorrelationRecord {
                kind: "window",
                id,
                key: key.clone(),
                json,
            }));
        }
    }

    /// Forgets the emitted window of `key` starting at `start` (its expiry timer has
    /// just been taken), and the key when nothing else is left of it.
    fn forget(&mut self, key: Arc<str>, start: i64) {
        let mut entry = match self.cache.get_mut(&key) {
            Lookup::Found(entry) => entry,
            Lookup::Lost => return self.drop_timers(&key),
            Lookup::New => return,
        };
        let Ok(i) = entry
            .state()
            .emitted
            .binary_search_by_key(&start, |w| w.start)
        else {
            return;
        };
        let state = entry.state_mut();
        let window = state.emitted.remove(i);
        for fp in &window.fingerprints {
            state.seen.remove(fp);
        }
        if state.is_empty() {
            self.cache.remove(&key);
        }
    }
}

impl Checkpointed for WindowOperator {
    type State = KeyState;

    fn key_cache(&self) -> &KeyCache<KeyState> {
        &self.cache
    }

    fn key_cache_mut(&mut self) -> &mut KeyCache<KeyState> {
        &mut self.cache
    }

    fn restore_key(&mut self, key: &str, state: KeyState) {
        let (key, replaced) = self.cache.restore(key, state);
        match replaced {
            Replaced::Cached(old) => {
                for &s in &old.open {
                    self.closes.remove(&(self.close_at(s), key.clone(), s));
                }
                for w in &old.emitted {
                    self.expiries
                        .remove(&(self.forget_at(w.start), key.clone(), w.start));
                }
            }
            // Its old windows are not in memory: find its timers the slow way.
            Replaced::Evicted => self.drop_timers(&key),
            Replaced::Nothing => {}
        }
        let Some(state) = self.cache.cached(&key) else {
            return;
        };
        let closes: Vec<Timer> = state
            .open
            .iter()
            .map(|&s| (self.close_at(s), key.clone(), s))
            .collect();
        let expiries: Vec<Timer> = state
            .emitted
            .iter()
            .map(|w| (self.forget_at(w.start), key.clone(), w.start))
            .collect();
        self.closes.extend(closes);
        self.expiries.extend(expiries);
    }
}

/// The open windows an accepted event joins: starts `from..=last` every `hop`.
struct Windows {
    from: i64,
    last: i64,
    size: i64,
    hop: i64,
    grace: i64,
}

/// Adds an accepted event to its key's state, opening (with a close timer) each of
/// its open windows that does not exist yet.
fn accept(
    state: &mut KeyState,
    closes: &mut BTreeSet<Timer>,
    key: Arc<str>,
    w: Windows,
    max_events: usize,
    fp: Option<u128>,
    event: Event,
) {
    let mut s = w.from;
    let mut full = false;
    // No window can be full while the key holds fewer events than one may keep: the
    // per-window counts are only taken then, off the common path.
    let may_be_full = state.events.len() >= max_events;
    while s <= w.last {
        if let Err(at) = state.open.binary_search(&s) {
            state.open.insert(at, s);
            closes.insert((s + w.size + w.grace, key.clone(), s));
        }
        if may_be_full {
            // Events are sorted by time: the window's are one run of them.
            let from = state.events.partition_point(|e| e.time < s);
            let to = state.events.partition_point(|e| e.time < s + w.size);
            full |= to - from >= max_events;
        }
        s += w.hop;
    }
    if full {
        // A bot key's window keeps counting, not growing; the event is in none of its
        // windows' events (so every record stays true to `dropped_events`).
        let mut s = w.from;
        while s <= w.last {
            match state.dropped.binary_search_by_key(&s, |d| d.0) {
                Ok(at) => state.dropped[at].1 += 1,
                Err(at) => state.dropped.insert(at, (s, 1)),
            }
            s += w.hop;
        }
        return;
    }
    state.seen.extend(fp);
    let (_, record) = RecordEvent::split(event);
    let order = record.order_key();
    let at = state.events.partition_point(|e| e.order_key() <= order);
    state.events.insert(at, record);
}

impl Operator for WindowOperator {
    fn on_event(&mut self, event: Event, watermark: i64, out: &mut Vec<Output>) {
        self.on_watermark(watermark, out);
        let wm = self.watermark;
        let (first, last) = self.windows_of(event.time);
        let last_deadline = self.close_at(last);
        let fp = event.id.as_deref().map(|id| fingerprint(event.source, id));

        let entry = match self.cache.get_mut(&event.key) {
            Lookup::Found(entry) => Some(entry),
            Lookup::Lost => {
                self.drop_timers(&event.key);
                None
            }
            Lookup::New => None,
        };
        if let Some(entry) = &entry {
            let state = entry.state();
            if let Some(fp) = fp
                && state.seen.contains(&fp)
            {
                out.push(Output::duplicate(event));
                return;
            }
        }
        if passed(last_deadline, wm) {
            // Emitted windows are sorted by start: the first one at or after `first`
            // is the earliest record the event would have joined, if it is one of its
            // windows.
            let would_join = entry.as_ref().and_then(|entry| {
                let emitted = &entry.state().emitted;
                let at = emitted.partition_point(|w| w.start < first);
                emitted
                    .get(at)
                    .filter(|w| w.start <= last)
                    .map(|w| JourneyId::new(&self.topology, &event.key, w.start))
            });
            return self.late(event, last_deadline, would_join, out);
        }

        // Its open windows: from the first whose deadline the watermark has not passed
        // (at most size/hop steps; the last one is open, checked above).
        let (size, hop, grace) = (self.size, self.hop, self.grace);
        let mut from = first;
        while passed(from + size + grace, wm) {
            from += hop;
        }
        let windows = Windows {
            from,
            last,
            size,
            hop,
            grace,
        };
        match entry {
            Some(mut entry) => {
                let key = entry.key().clone();
                let max = self.max_events;
                accept(
                    entry.state_mut(),
                    &mut self.closes,
                    key,
                    windows,
                    max,
                    fp,
                    event,
                );
            }
            None => {
                let key: Arc<str> = Arc::from(event.key.as_str());
                let mut state = KeyState::default();
                accept(
                    &mut state,
                    &mut self.closes,
                    key.clone(),
                    windows,
                    self.max_events,
                    fp,
                    event,
                );
                self.cache.insert(key, state);
            }
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Output>) {
        self.watermark = self.watermark.max(watermark);
        let wm = self.watermark;
        // Closes first: a window emitted here may be forgotten in the same pass
        // (always at end of input).
        while self.closes.first().is_some_and(|t| passed(t.0, wm)) {
            let Some((_, key, start)) = self.closes.pop_first() else {
                break;
            };
            self.emit(key, start, out);
        }
        while self.expiries.first().is_some_and(|t| passed(t.0, wm)) {
            let Some((_, key, start)) = self.expiries.pop_first() else {
                break;
            };
            self.forget(key, start);
        }
    }

    fn open_windows(&self) -> usize {
        self.closes.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::engine::testkit::{MapStore, arrivals, gen_event};

    const TOPOLOGY: &str = "hourly-activity";

    fn config(size_ms: u64, hop_ms: Option<u64>, grace_ms: u64) -> WindowConfig {
        WindowConfig {
            topology: TOPOLOGY.into(),
            sources: vec![
                "page.viewed".into(),
                "cart.updated".into(),
                "order.placed".into(),
            ],
            size: Duration::from_millis(size_ms),
            hop: hop_ms.map(Duration::from_millis),
            grace: Duration::from_millis(grace_ms),
            retention: None,
            include_payload: true,
            max_record_bytes: None,
            max_events: None,
        }
    }

    fn tumbling(size_ms: u64, grace_ms: u64) -> WindowOperator {
        config(size_ms, None, grace_ms).build().unwrap()
    }

    fn hopping(size_ms: u64, hop_ms: u64, grace_ms: u64) -> WindowOperator {
        config(size_ms, Some(hop_ms), grace_ms).build().unwrap()
    }

    fn ev(source: u16, offset: u64, key: &str, time: i64, id: Option<&str>) -> Event {
        Event {
            source,
            partition: 0,
            offset,
            key: key.into(),
            time,
            id: id.map(Into::into),
            payload: format!("{{\"o\":{offset}}}").into(),
        }
    }

    /// A window record read back from its JSON: (key, start, end, event offsets, id,
    /// cut by the boundary).
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    struct Rec {
        key: String,
        start: i64,
        end: i64,
        offsets: Vec<u64>,
        id: JourneyId,
        cut: bool,
    }

    fn ms(v: &serde_json::Value) -> i64 {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    }

    fn recs(out: &[Output]) -> Vec<Rec> {
        out.iter()
            .filter_map(|o| match o {
                Output::Correlation(c) => {
                    assert_eq!(c.kind, "window");
                    let v: serde_json::Value = serde_json::from_slice(&c.json).unwrap();
                    assert_eq!(v["kind"], "window");
                    assert_eq!(v["key"].as_str(), Some(&*c.key));
                    assert_eq!(v["id"].as_str().unwrap(), c.id.to_string());
                    let events = v["events"].as_array().unwrap();
                    let times: Vec<i64> = events.iter().map(|e| ms(&e["time"])).collect();
                    assert!(times.is_sorted(), "chronological");
                    Some(Rec {
                        key: c.key.to_string(),
                        start: ms(&v["window"]["start"]),
                        end: ms(&v["window"]["end"]),
                        offsets: events
                            .iter()
                            .map(|e| e["offset"].as_u64().unwrap())
                            .collect(),
                        id: c.id,
                        cut: v.get("cut_by_replay_boundary").is_some(),
                    })
                }
                _ => None,
            })
            .collect()
    }

    fn windows(out: &[Output]) -> Vec<(i64, i64, Vec<u64>)> {
        recs(out)
            .into_iter()
            .map(|r| (r.start, r.end, r.offsets))
            .collect()
    }

    /// (start, kept offsets, dropped_events) of each window record.
    fn truncation(out: &[Output]) -> Vec<(i64, Vec<u64>, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Correlation(c) => {
                    let v: serde_json::Value = serde_json::from_slice(&c.json).unwrap();
                    let dropped = v["dropped_events"].as_u64().unwrap_or(0);
                    assert_eq!(v.get("truncated").is_some(), dropped > 0);
                    Some((
                        ms(&v["window"]["start"]),
                        v["events"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| e["offset"].as_u64().unwrap())
                            .collect(),
                        dropped,
                    ))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_window_keeps_at_most_max_events_and_counts_the_rest() {
        let mut c = config(1_000, None, 0);
        c.max_events = Some(3);
        let mut op = c.build().unwrap();
        let mut out = Vec::new();
        for o in 0..10u64 {
            op.on_event(
                ev(0, o, "bot", 900 - o as i64 * 10, Some(&format!("e{o}"))),
                0,
                &mut out,
            );
            assert!(op.key_state("bot").unwrap().events.len() <= 3);
        }
        op.on_event(ev(0, 10, "bot", 1_500, None), 0, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        // The first three arrivals are kept (in time order), seven are counted.
        assert_eq!(
            truncation(&out),
            [(0, vec![2, 1, 0], 7), (1_000, vec![10], 0)]
        );
        // Hopping: an event is dropped when one of its open windows is full, and
        // counted in each of them.
        let mut c = config(2_000, Some(1_000), 0);
        c.max_events = Some(2);
        let mut op = c.build().unwrap();
        let mut out = Vec::new();
        for (o, t) in [(0u64, 1_100i64), (1, 1_200), (2, 1_300), (3, 500)] {
            op.on_event(ev(0, o, "k", t, None), 0, &mut out);
        }
        op.on_watermark(i64::MAX, &mut out);
        // (The event at 500 finds [0, 2000) full: it is kept by neither of its windows,
        // and [-1000, 1000), opened by it alone, says so.)
        assert_eq!(
            truncation(&out),
            [
                (-1_000, vec![], 1),
                (0, vec![0, 1], 2),
                (1_000, vec![0, 1], 1)
            ]
        );
    }

    proptest! {
        /// Tumbling windows with a limit against a model: each window keeps the first
        /// `max` events that arrive for it and counts the others.
        #[test]
        fn the_limit_keeps_the_first_arrivals_of_each_window(
            times in proptest::collection::vec((0u8..3, 0i64..5_000), 0..60),
            max in 1u64..5,
        ) {
            let mut c = config(1_000, None, 0);
            c.max_events = Some(max);
            let mut op = c.build().unwrap();
            let mut out = Vec::new();
            // (key, window start) → (kept (time, offset), dropped)
            type Kept = (Vec<(i64, u64)>, u64);
            let mut model: BTreeMap<(String, i64), Kept> = BTreeMap::new();
            for (o, &(k, t)) in times.iter().enumerate() {
                let key = format!("k{k}");
                op.on_event(ev(0, o as u64, &key, t, None), i64::MIN, &mut out);
                let w = model.entry((key, t.div_euclid(1_000) * 1_000)).or_default();
                if (w.0.len() as u64) < max {
                    w.0.push((t, o as u64));
                } else {
                    w.1 += 1;
                }
            }
            op.on_watermark(i64::MAX, &mut out);
            let mut got: Vec<(i64, Vec<u64>, u64)> = truncation(&out);
            got.sort();
            let mut expected: Vec<(i64, Vec<u64>, u64)> = model
                .into_values()
                .map(|(mut kept, dropped)| {
                    kept.sort();
                    let start = kept[0].0.div_euclid(1_000) * 1_000;
                    (start, kept.into_iter().map(|(_, o)| o).collect(), dropped)
                })
                .collect();
            expected.sort();
            prop_assert_eq!(got, expected);
        }
    }

    fn lates(out: &[Output]) -> Vec<&LateArrival> {
        out.iter()
            .filter_map(|o| match o {
                Output::Late(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    fn dups(out: &[Output]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                Output::Duplicate { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect()
    }

    fn assert_empty(op: &WindowOperator) {
        assert_eq!(op.keys_with_state(), 0);
        assert_eq!(op.open_windows(), 0);
        assert_eq!(op.remembered_windows(), 0);
    }

    #[test]
    fn an_event_at_a_window_end_belongs_to_the_next_window() {
        let mut op = tumbling(10, 0);
        let mut out = Vec::new();
        for (o, t) in [(0, 0), (1, 9), (2, 10), (3, -1)] {
            op.on_event(ev(0, o, "k", t, None), i64::MIN, &mut out);
        }
        assert_eq!(op.open_windows(), 3);
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(
            windows(&out),
            vec![(-10, 0, vec![3]), (0, 10, vec![0, 1]), (10, 20, vec![2])]
        );
        assert_empty(&op);
    }

    #[test]
    fn closes_only_once_the_watermark_is_past_end_plus_grace() {
        let mut op = tumbling(10, 5);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 3, None), i64::MIN, &mut out);
        op.on_watermark(15, &mut out);
        assert!(out.is_empty());
        // Still on time at watermark 15: [0, 10) closes after 15.
        op.on_event(ev(0, 1, "k", 9, None), 15, &mut out);
        op.on_watermark(16, &mut out);
        let r = recs(&out);
        assert_eq!(
            (r[0].start, r[0].end, r[0].offsets.clone(), r[0].cut),
            (0, 10, vec![0, 1], false)
        );
        assert_eq!(r[0].id, JourneyId::new(TOPOLOGY, "k", 0));
    }

    #[test]
    fn hopping_puts_an_event_in_each_of_its_windows() {
        // size 10, hop 4: an event at 9 is in [0, 10), [4, 14), [8, 18).
        let mut op = hopping(10, 4, 0);
        assert_eq!(op.windows_of(9), (0, 8));
        assert_eq!(op.windows_of(10), (4, 8));
        assert_eq!(op.windows_of(-1), (-8, -4));
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 9, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 12, None), i64::MIN, &mut out);
        assert_eq!(op.open_windows(), 4);
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(
            windows(&out),
            vec![
                (0, 10, vec![0]),
                (4, 14, vec![0, 1]),
                (8, 18, vec![0, 1]),
                (12, 22, vec![1])
            ]
        );
        assert!(recs(&out).iter().all(|r| r.cut));
        assert_empty(&op);
    }

    #[test]
    fn hopping_event_with_some_windows_closed_joins_the_open_ones_only() {
        let mut op = hopping(10, 5, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 7, None), i64::MIN, &mut out);
        // [0, 10) and [5, 15) close.
        op.on_watermark(16, &mut out);
        assert_eq!(windows(&out), vec![(0, 10, vec![0]), (5, 15, vec![0])]);
        out.clear();
        // 12 is in [5, 15) (emitted) and [10, 20) (open): partially included.
        op.on_event(ev(0, 1, "k", 12, None), 16, &mut out);
        assert!(out.is_empty());
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(windows(&out), vec![(10, 20, vec![1])]);
        assert_empty(&op);
    }

    #[test]
    fn late_events_name_the_earliest_remembered_window() {
        let mut op = hopping(10, 5, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 7, None), i64::MIN, &mut out);
        op.on_watermark(16, &mut out);
        let ids: Vec<JourneyId> = recs(&out).iter().map(|r| r.id).collect();
        out.clear();
        op.on_event(ev(1, 1, "k", 8, Some("x")), 16, &mut out);
        assert_eq!(
            out,
            vec![Output::Late(LateArrival {
                topic: "cart.updated".into(),
                source: 1,
                partition: 0,
                offset: 1,
                key: "k".into(),
                id: Some("x".into()),
                time: 8,
                watermark: 16,
                // Its last window [5, 15) could be joined while the watermark was ≤ 15.
                lateness_ms: 1,
                would_join: Some(ids[0]),
            })]
        );
        out.clear();
        // [0, 10) is forgotten once the watermark is past 10 + retention (10).
        op.on_watermark(21, &mut out);
        assert_eq!(op.remembered_windows(), 1);
        op.on_event(ev(0, 2, "k", 8, None), 21, &mut out);
        let l = lates(&out);
        assert_eq!((l[0].would_join, l[0].lateness_ms), (Some(ids[1]), 6));
        out.clear();
        // A late event of a window that never had a record names nothing.
        op.on_event(ev(0, 3, "j", 2, None), 21, &mut out);
        assert_eq!(lates(&out)[0].would_join, None);
        op.on_watermark(i64::MAX, &mut out);
        assert_empty(&op);
    }

    #[test]
    fn duplicates_are_counted_while_a_window_containing_them_is_remembered() {
        let mut op = hopping(10, 5, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 7, Some("a")), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 7, Some("a")), i64::MIN, &mut out);
        // Same id on another source or key is not a duplicate.
        op.on_event(ev(1, 2, "k", 7, Some("a")), i64::MIN, &mut out);
        op.on_event(ev(0, 3, "j", 7, Some("a")), i64::MIN, &mut out);
        // Both windows of 7 closed; the last one, [5, 15), is remembered until 25.
        op.on_watermark(25, &mut out);
        op.on_event(ev(0, 4, "k", 7, Some("a")), 25, &mut out);
        assert_eq!(dups(&out), vec![1, 4]);
        out.clear();
        op.on_watermark(26, &mut out);
        op.on_event(ev(0, 5, "k", 7, Some("a")), 26, &mut out);
        assert_eq!(lates(&out).len(), 1);
        assert_empty(&op);
    }

    #[test]
    fn emission_order_is_end_key_start_and_state_empties_at_end_of_input() {
        let mut op = tumbling(10, 0);
        let mut out = Vec::new();
        for (o, key, t) in [(0, "b", 15), (1, "a", 12), (2, "a", 5), (3, "c", 1)] {
            op.on_event(ev(0, o, key, t, None), i64::MIN, &mut out);
        }
        op.on_watermark(i64::MAX, &mut out);
        let order: Vec<(i64, String, i64)> = recs(&out)
            .into_iter()
            .map(|r| (r.end, r.key, r.start))
            .collect();
        assert_eq!(
            order,
            vec![
                (10, "a".into(), 0),
                (10, "c".into(), 0),
                (20, "a".into(), 10),
                (20, "b".into(), 10)
            ]
        );
        assert_empty(&op);
    }

    #[test]
    fn window_json_shape() {
        let mut op = tumbling(3_600_000, 0);
        let mut out = Vec::new();
        let t0 = 1_767_600_000_000; // 2026-01-05T08:00:00Z, an hour boundary
        let mut a = ev(0, 3, "c-1", t0 + 60_000, Some("e1"));
        a.payload = r#"{"customer_id":"c-1"}"#.into();
        let mut b = ev(2, 4, "c-1", t0 + 120_000, None);
        b.partition = 1;
        b.payload = r#"{"total":9.5}"#.into();
        op.on_event(b, i64::MIN, &mut out);
        op.on_event(a, i64::MIN, &mut out);
        op.on_watermark(t0 + 3_600_001, &mut out);
        let Output::Correlation(c) = &out[0] else {
            panic!("{out:?}")
        };
        let id = JourneyId::new(TOPOLOGY, "c-1", t0);
        assert_eq!((c.kind, c.id, &*c.key), ("window", id, "c-1"));
        let expected = format!(
            concat!(
                r#"{{"kind":"window","id":"{}","key":"c-1","#,
                r#""window":{{"start":"2026-01-05T08:00:00.000Z","end":"2026-01-05T09:00:00.000Z"}},"#,
                r#""events":[{{"topic":"page.viewed","partition":0,"offset":3,"id":"e1","#,
                r#""time":"2026-01-05T08:01:00.000Z","payload":{{"customer_id":"c-1"}}}},"#,
                r#"{{"topic":"order.placed","partition":1,"offset":4,"id":null,"#,
                r#""time":"2026-01-05T08:02:00.000Z","payload":{{"total":9.5}}}}],"#,
                r#""counts":{{"page.viewed":1,"cart.updated":0,"order.placed":1}}}}"#
            ),
            id
        );
        assert_eq!(String::from_utf8(c.json.clone()).unwrap(), expected);

        let mut c = config(3_600_000, None, 0);
        c.include_payload = false;
        let mut op = c.build().unwrap();
        out.clear();
        op.on_event(ev(0, 5, "c-2", t0, None), i64::MIN, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        let Output::Correlation(c) = &out[0] else {
            panic!("{out:?}")
        };
        let text = String::from_utf8(c.json.clone()).unwrap();
        assert!(!text.contains("payload"), "{text}");
        assert!(
            text.ends_with(r#""counts":{"page.viewed":1,"cart.updated":0,"order.placed":0},"cut_by_replay_boundary":true}"#),
            "{text}"
        );
    }

    #[test]
    fn watermark_never_goes_back() {
        let mut op = tumbling(10, 0);
        let mut out = Vec::new();
        op.on_watermark(500, &mut out);
        op.on_event(ev(0, 0, "k", 100, None), 0, &mut out);
        assert_eq!(op.watermark(), 500);
        assert_eq!(lates(&out)[0].watermark, 500);
    }

    #[test]
    fn key_state_round_trips_through_serde_and_restore() {
        let mut a = hopping(10, 5, 0);
        let mut b = hopping(10, 5, 0);
        let mut out = Vec::new();
        for (o, t) in [(0, 3), (1, 12), (2, 7)] {
            a.on_event(ev(0, o, "k", t, Some(&o.to_string())), i64::MIN, &mut out);
        }
        a.on_watermark(11, &mut out);
        let state = a.key_state("k").unwrap().clone();
        let bytes = postcard::to_allocvec(&state).unwrap();
        b.on_watermark(11, &mut out);
        b.restore_key("k", postcard::from_bytes(&bytes).unwrap());
        assert_eq!(b.open_windows(), a.open_windows());
        let tail = |op: &mut WindowOperator| {
            let mut out = Vec::new();
            op.on_event(ev(0, 3, "k", 4, Some("0")), 11, &mut out);
            op.on_event(ev(0, 4, "k", 13, None), 11, &mut out);
            op.on_watermark(i64::MAX, &mut out);
            out
        };
        let (out_a, out_b) = (tail(&mut a), tail(&mut b));
        assert_eq!(out_a, out_b);
        assert_eq!(dups(&out_a), vec![3]);
        // The event at 3 left with [0, 10), its last window, before the snapshot.
        assert_eq!(
            windows(&out_a),
            vec![(5, 15, vec![2, 1, 4]), (10, 20, vec![1, 4])]
        );
        assert_empty(&a);
        assert_empty(&b);
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: WindowConfig = serde_json::from_str(
            r#"{"topology":"t","sources":["a"],"size":{"secs":60,"nanos":0}}"#,
        )
        .unwrap();
        assert_eq!((c.hop, c.grace, c.retention), (None, Duration::ZERO, None));
        assert!(c.include_payload);
        let err = serde_json::from_str::<WindowConfig>(
            r#"{"topology":"t","sources":["a"],"size":{"secs":60,"nanos":0},"hopp":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("unknown field `hopp`"), "{err}");
    }

    #[test]
    fn config_errors() {
        let err = |c: &WindowConfig| c.clone().build().unwrap_err().to_string();
        let mut c = config(0, None, 0);
        assert_eq!(
            err(&c),
            "topology `hourly-activity`, correlation tumbling: `size` must be at least 1ms, got 0ns"
        );
        c.size = Duration::from_secs(60);
        c.hop = Some(Duration::from_micros(999));
        assert_eq!(
            err(&c),
            "topology `hourly-activity`, correlation hopping: `hop` must be at least 1ms, got 999µs"
        );
        c.hop = Some(Duration::from_secs(61));
        assert_eq!(
            err(&c),
            "topology `hourly-activity`, correlation hopping: `hop` (61s) must be at most `size` (60s)"
        );
        c.hop = Some(Duration::from_secs(60));
        c.grace = MAX_WINDOW_DURATION + Duration::from_secs(1);
        assert_eq!(
            err(&c),
            "topology `hourly-activity`, correlation hopping: `grace` must be at most 100 years, got 3153600001s"
        );
        c.grace = Duration::ZERO;
        assert!(c.clone().build().is_ok(), "hop = size is allowed");
        c.sources.clear();
        assert_eq!(
            err(&c),
            "topology `hourly-activity`, correlation hopping: 0 sources, expected 1 to 65536"
        );
    }

    // ---- write-behind and eviction ----

    #[test]
    fn a_timer_of_an_evicted_key_emits_the_same_record() {
        let feed = |op: &mut WindowOperator, out: &mut Vec<Output>| {
            op.on_event(ev(0, 0, "k", 1, Some("a")), i64::MIN, out);
            op.on_event(ev(1, 1, "k", 4, None), i64::MIN, out);
            op.on_event(ev(2, 2, "j", 15, None), i64::MIN, out);
        };
        let mut plain = tumbling(10, 0);
        let mut want = Vec::new();
        feed(&mut plain, &mut want);
        plain.on_watermark(11, &mut want);
        plain.on_event(ev(0, 3, "k", 1, Some("a")), 11, &mut want);
        plain.on_watermark(i64::MAX, &mut want);

        let mut op = tumbling(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut got = Vec::new();
        feed(&mut op, &mut got);
        store.drain(&mut op, 1);
        assert_eq!(op.evict(0, 1), 2);
        assert_eq!(op.open_windows(), 2, "timers stay in memory");
        op.on_watermark(11, &mut got);
        store.drain(&mut op, 2);
        assert_eq!(op.evict(0, 2), 1);
        op.on_event(ev(0, 3, "k", 1, Some("a")), 11, &mut got);
        op.on_watermark(i64::MAX, &mut got);
        assert_eq!(got, want);
        assert_eq!(dups(&got), vec![3]);
        // k by its timer, k again by its event, j by its timer at end of input.
        assert_eq!(store.loads(), 3);
        assert_empty(&op);
        store.drain(&mut op, 3);
        assert!(store.is_empty());
    }

    #[test]
    fn a_missing_stored_state_means_no_state_and_drops_the_timers() {
        let mut op = tumbling(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 1, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "j", 1, None), i64::MIN, &mut out);
        store.drain(&mut op, 1);
        assert_eq!(op.evict(0, 1), 2);
        store.clear();
        op.on_event(ev(0, 2, "j", 25, None), i64::MIN, &mut out);
        assert_eq!((op.open_windows(), op.keys_with_state()), (2, 2));
        op.on_watermark(i64::MAX, &mut out);
        let r = recs(&out);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].key.as_str(), r[0].offsets.clone()), ("j", vec![2]));
        assert_empty(&op);
    }

    // ---- property tests against reference models ----

    struct Run {
        outputs: Vec<Output>,
        /// The watermark each event met (the highest passed so far), by offset.
        met: BTreeMap<u64, i64>,
        /// Records in the order emitted, grouped by call.
        calls: Vec<Vec<Rec>>,
    }

    /// Feeds events in arrival order; the watermark after each event is the largest
    /// time seen minus `bound`; then end of input. `between` runs after every call.
    fn run_with(
        op: &mut WindowOperator,
        arrivals: &[Event],
        bound: i64,
        mut between: impl FnMut(&mut WindowOperator),
    ) -> Run {
        let mut outputs = Vec::new();
        let mut calls = Vec::new();
        let mut met = BTreeMap::new();
        let (mut wm, mut max_seen) = (i64::MIN, i64::MIN);
        let mut collect = |out: Vec<Output>, outputs: &mut Vec<Output>| {
            calls.push(recs(&out));
            outputs.extend(out);
        };
        for e in arrivals {
            max_seen = max_seen.max(e.time);
            met.insert(e.offset, wm);
            let mut out = Vec::new();
            op.on_event(e.clone(), wm, &mut out);
            collect(out, &mut outputs);
            between(op);
            wm = wm.max(max_seen - bound);
            let mut out = Vec::new();
            op.on_watermark(wm, &mut out);
            collect(out, &mut outputs);
            between(op);
        }
        let mut out = Vec::new();
        op.on_watermark(i64::MAX, &mut out);
        collect(out, &mut outputs);
        between(op);
        Run {
            outputs,
            met,
            calls,
        }
    }

    fn run(op: &mut WindowOperator, arrivals: &[Event], bound: i64) -> Run {
        run_with(op, arrivals, bound, |_| {})
    }

    /// Batch reference: every window of every accepted event, with all the accepted
    /// events it contains, in chronological order.
    fn batch_model(size: i64, hop: i64, accepted: &[Event]) -> Vec<(String, i64, Vec<u64>)> {
        let mut by_window: BTreeMap<(String, i64), Vec<&Event>> = BTreeMap::new();
        for e in accepted {
            let mut s = (e.time - size).div_euclid(hop) * hop + hop;
            while s <= e.time {
                by_window.entry((e.key.clone(), s)).or_default().push(e);
                s += hop;
            }
        }
        by_window
            .into_iter()
            .map(|((key, start), mut evs)| {
                evs.sort_by_key(|e| (e.time, e.source, e.partition, e.offset));
                (key, start, evs.iter().map(|e| e.offset).collect())
            })
            .collect()
    }

    /// What the sequential reference decides for one event.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Fate {
        /// Accepted into these windows (starts).
        Windows(Vec<i64>),
        Late(Option<i64>, i64),
        Duplicate,
    }

    /// Sequential reference over the arrivals and the watermark each met, straight from
    /// the module doc's rules, with no timers or caches.
    fn sequential_model(
        size: i64,
        hop: i64,
        grace: i64,
        retention: i64,
        arrivals: &[Event],
        met: &BTreeMap<u64, i64>,
    ) -> BTreeMap<u64, Fate> {
        let mut accepted: Vec<(&Event, Vec<i64>)> = Vec::new();
        let mut fates = BTreeMap::new();
        for e in arrivals {
            let w = met[&e.offset];
            let first = (e.time - size).div_euclid(hop) * hop + hop;
            let last = e.time.div_euclid(hop) * hop;
            let dup = e.id.is_some()
                && accepted.iter().any(|(a, joined)| {
                    a.key == e.key
                        && a.source == e.source
                        && a.id == e.id
                        && !passed(joined[joined.len() - 1] + size + grace + retention, w)
                });
            let fate = if dup {
                Fate::Duplicate
            } else if passed(last + size + grace, w) {
                let would = (first..=last).step_by(hop as usize).find(|&s| {
                    !passed(s + size + grace + retention, w)
                        && accepted
                            .iter()
                            .any(|(a, joined)| a.key == e.key && joined.contains(&s))
                });
                Fate::Late(would, w - (last + size + grace))
            } else {
                let joined: Vec<i64> = (first..=last)
                    .step_by(hop as usize)
                    .filter(|&s| !passed(s + size + grace, w))
                    .collect();
                accepted.push((e, joined.clone()));
                Fate::Windows(joined)
            };
            fates.insert(e.offset, fate);
        }
        fates
    }

    /// The operator's fate of every event, from its outputs; fails on an event both
    /// in a record and reported, or reported twice.
    fn fates(arrivals: &[Event], outputs: &[Output]) -> BTreeMap<u64, Fate> {
        let mut fates: BTreeMap<u64, Fate> = BTreeMap::new();
        for r in recs(outputs) {
            for o in r.offsets {
                match fates.entry(o).or_insert(Fate::Windows(Vec::new())) {
                    Fate::Windows(w) => w.push(r.start),
                    other => panic!("offset {o} in a record and {other:?}"),
                }
            }
        }
        for o in outputs {
            let (offset, fate) = match o {
                Output::Late(l) => (
                    l.offset,
                    Fate::Late(
                        l.would_join.map(|id| {
                            // Decoded back to the window start through the records.
                            recs(outputs)
                                .into_iter()
                                .find(|r| r.id == id)
                                .map_or(i64::MIN, |r| r.start)
                        }),
                        l.lateness_ms,
                    ),
                ),
                Output::Duplicate { offset, .. } => (*offset, Fate::Duplicate),
                _ => continue,
            };
            assert!(
                fates.insert(offset, fate).is_none(),
                "offset {offset} twice"
            );
        }
        for f in fates.values_mut() {
            if let Fate::Windows(w) = f {
                w.sort();
            }
        }
        assert_eq!(fates.len(), arrivals.len(), "every event accounted for");
        fates
    }

    fn check_records(size: i64, run: &Run) {
        for call in &run.calls {
            let order: Vec<(i64, &str, i64)> =
                call.iter().map(|r| (r.end, &*r.key, r.start)).collect();
            assert!(order.is_sorted(), "emission order {order:?}");
        }
        let all = recs(&run.outputs);
        let mut seen = BTreeSet::new();
        for r in &all {
            assert_eq!(r.end - r.start, size);
            assert_eq!(r.id, JourneyId::new(TOPOLOGY, &r.key, r.start));
            assert!(
                seen.insert((r.key.clone(), r.start)),
                "one record per window"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn in_bound_disorder_matches_the_batch_model(
            gens in prop::collection::vec(gen_event(), 0..60),
            size in 1i64..60,
            hop_div in prop::option::of(1i64..6),
            grace in 0i64..20,
            bound in 0i64..30,
        ) {
            let hop = hop_div.map_or(size, |d| (size / d).max(1));
            let arrivals = arrivals(&gens, bound, false);
            let mut op = config(size as u64, hop_div.map(|_| hop as u64), grace as u64)
                .build()
                .unwrap();
            let run = run(&mut op, &arrivals, bound);
            prop_assert!(lates(&run.outputs).is_empty());
            check_records(size, &run);
            fates(&arrivals, &run.outputs);
            // Exactly the first arrival of each (key, source, id) is accepted.
            let mut first = BTreeSet::new();
            let accepted: Vec<Event> = arrivals
                .iter()
                .filter(|e| match &e.id {
                    Some(id) => first.insert((e.key.clone(), e.source, id.clone())),
                    None => true,
                })
                .cloned()
                .collect();
            let mut got: Vec<(String, i64, Vec<u64>)> = recs(&run.outputs)
                .into_iter()
                .map(|r| (r.key, r.start, r.offsets))
                .collect();
            got.sort();
            prop_assert_eq!(got, batch_model(size, hop, &accepted));
            prop_assert_eq!(dups(&run.outputs).len(), arrivals.len() - accepted.len());
            assert_empty(&op);
        }

        #[test]
        fn late_and_duplicated_input_matches_the_sequential_model(
            gens in prop::collection::vec(gen_event(), 0..60),
            size in 1i64..60,
            hop_div in prop::option::of(1i64..6),
            grace in 0i64..20,
            bound in 0i64..30,
            retention in 0i64..100,
        ) {
            let hop = hop_div.map_or(size, |d| (size / d).max(1));
            let arrivals = arrivals(&gens, bound, true);
            let mut c = config(size as u64, hop_div.map(|_| hop as u64), grace as u64);
            c.retention = Some(Duration::from_millis(retention as u64));
            let mut op = c.build().unwrap();
            let run = run(&mut op, &arrivals, bound);
            check_records(size, &run);
            let got = fates(&arrivals, &run.outputs);
            let want = sequential_model(size, hop, grace, retention, &arrivals, &run.met);
            prop_assert_eq!(&got, &want);
            for (offset, fate) in &got {
                match fate {
                    // Tumbling: exactly one record; hopping: a contiguous run of its
                    // windows ending with its last one.
                    Fate::Windows(w) => {
                        let t = arrivals.iter().find(|e| e.offset == *offset).unwrap().time;
                        prop_assert_eq!(w[w.len() - 1], t.div_euclid(hop) * hop);
                        prop_assert!(w.windows(2).all(|p| p[1] - p[0] == hop));
                        if hop_div.is_none() {
                            prop_assert_eq!(w.len(), 1);
                        }
                    }
                    Fate::Late(_, lateness) => prop_assert!(*lateness >= 1),
                    Fate::Duplicate => {}
                }
            }
            assert_empty(&op);
        }

        #[test]
        fn write_behind_and_eviction_change_no_output(
            gens in prop::collection::vec(gen_event(), 0..60),
            size in 1i64..60,
            hop_div in prop::option::of(1i64..6),
            grace in 0i64..20,
            bound in 0i64..30,
            with_late in any::<bool>(),
            every in 1usize..50,
            max_cached in 0usize..5,
        ) {
            let hop = hop_div.map(|d| ((size / d).max(1)) as u64);
            let arrivals = arrivals(&gens, bound, with_late);
            let make = || config(size as u64, hop, grace as u64).build().unwrap();
            let plain = run(&mut make(), &arrivals, bound);
            let mut op = make();
            let store = MapStore::attached_to(&mut op);
            let (mut calls, mut epoch) = (0, 0);
            let cached = run_with(&mut op, &arrivals, bound, |op| {
                calls += 1;
                if calls % every == 0 {
                    epoch += 1;
                    store.drain(op, epoch);
                    op.evict(max_cached, epoch);
                    assert!(op.cached_keys() <= max_cached);
                }
            });
            prop_assert_eq!(&cached.outputs, &plain.outputs);
            assert_empty(&op);
            store.drain(&mut op, epoch + 1);
            prop_assert!(store.is_empty());
        }
    }
}
