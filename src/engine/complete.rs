//! The `complete` correlation kind (order fulfilment): per key, a fan-in of parts from
//! required and optional sources, with a deadline.
//!
//! Rules (docs/semantics.md, "Correlation: complete", gives the reasons):
//! - A key's correlation opens with the first part braid receives for it; the clock
//!   starts at that part's event time `F` ("the first part seen"), fixed from then on,
//!   and the correlation's id is a hash of (topology, key, `F`). Parts that arrive later
//!   may carry earlier times; they join all the same.
//! - A part of source `s` counts when its time is at most `F + deadline(s)`: the
//!   source's own deadline if it is required and has one, else `timeout`. A part past
//!   that is late (a `late_arrival` report naming the correlation's id in
//!   `would_join`), since in event time it came after the business deadline, whatever
//!   the watermark says.
//! - The moment every required source has a counting part, the correlation is emitted
//!   as `complete` — on that event, without waiting for the watermark — with every part
//!   received so far (optional ones and repeated ones included) in chronological order.
//! - Otherwise it closes when the watermark passes `F + d + grace`, `d` the smallest
//!   deadline among the required sources still missing (strictly, as for sessions; end
//!   of input closes everything), and is emitted as `incomplete`, naming the missing
//!   sources and how long it waited (`d`).
//! - A second part of the same source (another payment) is kept and reported in
//!   `repeated_parts`; only the same (source, event id) is a duplicate, counted and
//!   dropped while the correlation is open or remembered.
//! - An emitted correlation is remembered until the watermark passes
//!   `F + timeout + grace + retention` (retention defaults to `timeout`): a part of
//!   its key arriving meanwhile is late, with `would_join` naming it ("the shipment
//!   arrived after the order was declared incomplete"). After that a part of the key
//!   opens a new correlation.
//! - A part that would open a correlation already due (`F + d + grace` passed for the
//!   smallest required deadline `d`) is late, with no `would_join`.
//! - `lateness_ms` of a late part: its event time past its deadline, at least 1 ms.
//!
//! Every event thus ends in exactly one record's `events`, one late report, or one
//! duplicate count. Watermark work touches only due keys (two ordered timer sets).
//! Per-key state lives in a [`KeyCache`] like the other kinds' (session.rs has the
//! write-behind details); `seen` is rebuilt when a state is read back, not stored.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cache::{CacheState, KeyCache, Lookup, Replaced};
use super::{
    Checkpointed, CorrelationRecord, FastSet, Inspect, JourneyId, LateArrival, OpenItem, Operator,
    Output, RecordEvent, Topics, WindowedRecord, fingerprint, push_json_str,
};
use crate::decode::Event;

/// Durations above this are refused (event-time arithmetic must not overflow).
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The `complete` operator's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteConfig {
    /// The topology's name; part of every record id.
    pub topology: String,
    /// The topic of each source, by source index.
    pub sources: Vec<String>,
    /// Topics that must all arrive.
    pub required: Vec<String>,
    /// Topics included when they arrive before completion; never awaited.
    pub optional: Vec<String>,
    /// From the first part seen; then INCOMPLETE.
    pub timeout: Duration,
    /// Per required topic, its own deadline (≤ `timeout`); `timeout` when absent.
    pub deadlines: BTreeMap<String, Duration>,
    /// How long past a deadline the watermark must be before INCOMPLETE is emitted.
    pub grace: Duration,
    /// How long an emitted correlation is remembered past its timeout and grace, for
    /// late parts and de-duplication; default `timeout`.
    pub retention: Option<Duration>,
    /// Whether records embed each part's payload.
    pub include_payload: bool,
    /// Parts an open correlation keeps. Beyond it a repeated part (of a source already
    /// present) is counted (`dropped_events`), not kept; a source's first part is always
    /// kept, so the limit never stops a correlation from completing. None: unlimited.
    #[serde(default)]
    pub max_events: Option<u64>,
}

/// An invalid `complete` configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompleteConfigError {
    #[error(
        "topology `{topology}`, correlation complete: `{field}` must be between 1ms and 100 years, got {got:?}"
    )]
    Duration {
        topology: String,
        field: String,
        got: Duration,
    },
    #[error(
        "topology `{topology}`, correlation complete: source `{topic}` is neither required nor optional"
    )]
    Unassigned { topology: String, topic: String },
    #[error(
        "topology `{topology}`, correlation complete: `{topic}` in {list} is not a source of the topology"
    )]
    UnknownTopic {
        topology: String,
        list: &'static str,
        topic: String,
    },
    #[error("topology `{topology}`, correlation complete: no required source")]
    NoRequired { topology: String },
}

impl CompleteConfig {
    /// Checks the configuration and makes the operator (durations in whole ms).
    pub fn build(self) -> Result<CompleteOperator, CompleteConfigError> {
        let topology = self.topology.clone();
        let ms = |field: &str, d: Duration| -> Result<i64, CompleteConfigError> {
            if d.as_millis() == 0 || d > MAX_DURATION {
                return Err(CompleteConfigError::Duration {
                    topology: topology.clone(),
                    field: field.to_owned(),
                    got: d,
                });
            }
            Ok(d.as_millis() as i64)
        };
        let timeout = ms("timeout", self.timeout)?;
        let grace = if self.grace.is_zero() {
            0
        } else {
            ms("grace", self.grace)?
        };
        let retention = match self.retention {
            Some(r) if r.is_zero() => 0,
            Some(r) => ms("retention", r)?,
            None => timeout,
        };
        let index = |list: &'static str, topic: &str| {
            self.sources.iter().position(|s| s == topic).ok_or_else(|| {
                CompleteConfigError::UnknownTopic {
                    topology: topology.clone(),
                    list,
                    topic: topic.to_owned(),
                }
            })
        };
        let mut deadline: Vec<Option<i64>> = vec![None; self.sources.len()];
        let mut required = Vec::new();
        for topic in &self.required {
            let i = index("required", topic)?;
            let d = match self.deadlines.get(topic) {
                Some(d) => ms(&format!("deadline.{topic}"), *d)?.min(timeout),
                None => timeout,
            };
            deadline[i] = Some(d);
            required.push(i as u16);
        }
        for topic in &self.optional {
            let i = index("optional", topic)?;
            deadline[i].get_or_insert(timeout);
        }
        for topic in self.deadlines.keys() {
            if !self.required.contains(topic) {
                index("deadline", topic)?;
            }
        }
        if required.is_empty() {
            return Err(CompleteConfigError::NoRequired { topology });
        }
        let deadline = deadline
            .into_iter()
            .zip(&self.sources)
            .map(|(d, topic)| {
                d.ok_or_else(|| CompleteConfigError::Unassigned {
                    topology: topology.clone(),
                    topic: topic.clone(),
                })
            })
            .collect::<Result<Vec<i64>, _>>()?;
        required.sort_unstable();
        required.dedup();
        Ok(CompleteOperator {
            topology: self.topology.into(),
            topics: self.sources.into_iter().map(Arc::from).collect(),
            rules: Rules {
                required,
                deadline,
                timeout,
                grace,
            },
            retention,
            include_payload: self.include_payload,
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

/// The open correlation of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenCorrelation {
    /// Event time of the first part seen (the clock's start).
    pub first: i64,
    /// Parts in arrival order (sorted when emitted).
    pub events: Vec<RecordEvent>,
    /// Repeated parts not kept (`max_events`).
    pub dropped: u64,
}

/// What is remembered of an emitted correlation, for late parts and duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmittedCorrelation {
    pub first: i64,
    pub id: JourneyId,
    pub forget_after: i64,
    /// Fingerprints of its parts' (source, id), removed from `seen` with it.
    pub fingerprints: Vec<u128>,
}

/// Everything the operator keeps for one key: at most one of `open` and `emitted` (a
/// part arriving while an emitted correlation is remembered is late, so no new one
/// opens). `seen` holds the fingerprints of the parts with an id in either; it is not
/// stored but rebuilt when a state is read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredKeyState")]
pub struct KeyState {
    pub open: Option<OpenCorrelation>,
    pub emitted: Option<EmittedCorrelation>,
    #[serde(skip_serializing)]
    pub seen: FastSet<u128>,
}

/// A [`KeyState`] as stored: without `seen`.
#[derive(Deserialize)]
struct StoredKeyState {
    open: Option<OpenCorrelation>,
    emitted: Option<EmittedCorrelation>,
}

impl From<StoredKeyState> for KeyState {
    fn from(StoredKeyState { open, emitted }: StoredKeyState) -> KeyState {
        let open_ids = open
            .iter()
            .flat_map(|o| &o.events)
            .filter_map(|e| e.id.as_deref().map(|id| fingerprint(e.source, id)));
        let emitted_ids = emitted.iter().flat_map(|e| e.fingerprints.iter().copied());
        let seen = open_ids.chain(emitted_ids).collect();
        KeyState {
            open,
            emitted,
            seen,
        }
    }
}

impl crate::state::StoredWhole for KeyState {}

impl CacheState for KeyState {
    fn is_empty(&self) -> bool {
        self.open.is_none() && self.emitted.is_none()
    }
}

/// The running `complete` operator; see the module doc for its rules.
#[derive(Debug)]
pub struct CompleteOperator {
    topology: Box<str>,
    topics: Topics,
    rules: Rules,
    retention: i64,
    include_payload: bool,
    max_events: usize,
    /// Highest watermark seen; `i64::MIN` before the first.
    watermark: i64,
    cache: KeyCache<KeyState>,
    /// One per open correlation: (close deadline, key).
    closes: BTreeSet<(i64, Arc<str>)>,
    /// One per remembered emitted correlation: (forget_after, key).
    expiries: BTreeSet<(i64, Arc<str>)>,
}

/// Whether the watermark is past a deadline (strictly; end of input passes all).
fn passed(deadline: i64, watermark: i64) -> bool {
    deadline < watermark || watermark == i64::MAX
}

/// When parts count and when a correlation closes (see the module doc).
#[derive(Debug)]
struct Rules {
    /// Source indexes of the required sources, sorted.
    required: Vec<u16>,
    /// Per source index, its deadline after the first part (ms).
    deadline: Vec<i64>,
    timeout: i64,
    grace: i64,
}

impl Rules {
    /// The deadline of a part of `source` in a correlation whose clock started at `first`.
    fn part_deadline(&self, first: i64, source: u16) -> i64 {
        let d = self
            .deadline
            .get(usize::from(source))
            .copied()
            .unwrap_or(self.timeout);
        first.saturating_add(d)
    }

    /// Required sources without a counting part among `events`.
    fn missing(&self, first: i64, events: &[RecordEvent]) -> Vec<u16> {
        self.required
            .iter()
            .copied()
            .filter(|&r| {
                !events
                    .iter()
                    .any(|e| e.source == r && e.time <= self.part_deadline(first, r))
            })
            .collect()
    }

    /// When the correlation closes INCOMPLETE: the earliest deadline among `missing`,
    /// plus grace.
    fn close_at(&self, first: i64, missing: &[u16]) -> i64 {
        missing
            .iter()
            .map(|&r| self.part_deadline(first, r))
            .min()
            .unwrap_or(first.saturating_add(self.timeout))
            .saturating_add(self.grace)
    }
}

impl CompleteOperator {
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
        let lateness = event.time.saturating_sub(deadline).max(1);
        out.push(Output::Late(LateArrival::of(
            event,
            &self.topics,
            self.watermark,
            lateness,
            would_join,
        )));
    }

    /// The first part of a key without state: opens its correlation, unless that is
    /// already due; emits it at once if this part completes it.
    fn open(&mut self, event: Event, fp: Option<u128>, out: &mut Vec<Output>) {
        let first = event.time;
        // Due already, with this part counted (it is at the clock's start, so it counts)?
        let missing: Vec<u16> = self
            .rules
            .required
            .iter()
            .copied()
            .filter(|&r| r != event.source)
            .collect();
        let close = self.rules.close_at(first, &missing);
        if passed(close, self.watermark) {
            return self.late(event, close.saturating_sub(self.rules.grace), None, out);
        }
        let (key, record) = RecordEvent::split(event);
        let key: Arc<str> = Arc::from(key);
        let mut state = KeyState::default();
        state.seen.extend(fp);
        state.open = Some(OpenCorrelation {
            first,
            events: vec![record],
            dropped: 0,
        });
        self.cache.insert(key.clone(), state);
        self.progress(key, None, out);
    }

    /// After a part joined the open correlation of `key` (whose close timer was
    /// `old_close`): emits it COMPLETE, or moves its close timer.
    fn progress(&mut self, key: Arc<str>, old_close: Option<i64>, out: &mut Vec<Output>) {
        let Some(open) = self.cache.cached(&key).and_then(|s| s.open.as_ref()) else {
            return;
        };
        let missing = self.rules.missing(open.first, &open.events);
        let close = self.rules.close_at(open.first, &missing);
        if let Some(old) = old_close {
            self.closes.remove(&(old, key.clone()));
        }
        if missing.is_empty() {
            self.emit(key, Vec::new(), out);
        } else {
            self.closes.insert((close, key));
        }
    }

    /// Emits the open correlation of `key` (its close timer already gone): COMPLETE
    /// when `missing` is empty, else INCOMPLETE; then remembers it.
    fn emit(&mut self, key: Arc<str>, missing: Vec<u16>, out: &mut Vec<Output>) {
        let mut entry = match self.cache.get_mut(&key) {
            Lookup::Found(entry) => entry,
            Lookup::Lost => return self.drop_timers(&key),
            Lookup::New => return,
        };
        let state = entry.state_mut();
        let Some(mut open) = state.open.take() else {
            return;
        };
        open.events.sort_unstable_by_key(RecordEvent::order_key);
        let first = open.first;
        let id = JourneyId::new(&self.topology, &key, first);
        let forget_after = first
            .saturating_add(self.rules.timeout)
            .saturating_add(self.rules.grace)
            .saturating_add(self.retention);
        state.emitted = Some(EmittedCorrelation {
            first,
            id,
            forget_after,
            fingerprints: open
                .events
                .iter()
                .filter_map(|e| e.id.as_deref().map(|i| fingerprint(e.source, i)))
                .collect(),
        });
        self.expiries.insert((forget_after, key.clone()));
        let waited = missing
            .iter()
            .map(|&r| self.rules.part_deadline(first, r))
            .min()
            .map(|d| d - first);
        let json = self.render(&key, id, first, &open, &missing, waited);
        out.push(Output::Correlation(CorrelationRecord {
            kind: if missing.is_empty() {
                "complete"
            } else {
                "incomplete"
            },
            id,
            key,
            json,
        }));
    }

    /// `{"kind","id","key","window":{"start","end"},"events":[…],"counts":{…},
    /// "elapsed_ms","repeated_parts":{topic: n},"missing":[topic…],"waited_ms"}`
    /// (`missing` and `waited_ms` only for `incomplete`).
    fn render(
        &self,
        key: &str,
        id: JourneyId,
        first: i64,
        open: &OpenCorrelation,
        missing: &[u16],
        waited: Option<i64>,
    ) -> Vec<u8> {
        let events = &open.events[..];
        let mut out = WindowedRecord {
            kind: if missing.is_empty() {
                "complete"
            } else {
                "incomplete"
            },
            id,
            key,
            start: first,
            end: first.saturating_add(self.rules.timeout),
            events,
            topics: &self.topics,
            include_payload: self.include_payload,
            cut_by_boundary: !missing.is_empty() && self.watermark == i64::MAX,
            dropped: open.dropped,
        }
        .to_json();
        out.pop(); // the closing brace
        let (lo, hi) = events.iter().fold((i64::MAX, i64::MIN), |(lo, hi), e| {
            (lo.min(e.time), hi.max(e.time))
        });
        let _ = write!(
            out,
            ",\"elapsed_ms\":{},\"repeated_parts\":{{",
            hi.saturating_sub(lo).max(0)
        );
        let mut comma = false;
        for (source, topic) in self.topics.iter().enumerate() {
            let n = events
                .iter()
                .filter(|e| usize::from(e.source) == source)
                .count();
            if n > 1 {
                if comma {
                    out.push(b',');
                }
                comma = true;
                push_json_str(&mut out, topic);
                let _ = write!(out, ":{n}");
            }
        }
        out.push(b'}');
        if let Some(waited) = waited {
            out.extend_from_slice(b",\"missing\":[");
            for (i, &source) in missing.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let topic = self.topics.get(usize::from(source)).map_or("?", |t| t);
                push_json_str(&mut out, topic);
            }
            let _ = write!(out, "],\"waited_ms\":{waited}");
        }
        out.push(b'}');
        out
    }

    fn forget(&mut self, key: Arc<str>) {
        let mut entry = match self.cache.get_mut(&key) {
            Lookup::Found(entry) => entry,
            Lookup::Lost => return self.drop_timers(&key),
            Lookup::New => return,
        };
        if entry.state().emitted.is_none() {
            return;
        }
        let state = entry.state_mut();
        if let Some(e) = state.emitted.take() {
            for fp in &e.fingerprints {
                state.seen.remove(fp);
            }
        }
        if state.is_empty() {
            self.cache.remove(&key);
        }
    }

    /// Rebuilds the timers of a cached key from its state.
    fn add_timers(&mut self, key: &Arc<str>) {
        let Some(state) = self.cache.cached(key) else {
            return;
        };
        let close = state.open.as_ref().map(|o| {
            self.rules
                .close_at(o.first, &self.rules.missing(o.first, &o.events))
        });
        let forget = state.emitted.as_ref().map(|e| e.forget_after);
        if let Some(c) = close {
            self.closes.insert((c, key.clone()));
        }
        if let Some(f) = forget {
            self.expiries.insert((f, key.clone()));
        }
    }
}

impl Operator for CompleteOperator {
    fn on_event(&mut self, event: Event, watermark: i64, out: &mut Vec<Output>) {
        self.on_watermark(watermark, out);
        let fp = event.id.as_deref().map(|id| fingerprint(event.source, id));
        let entry = match self.cache.get_mut(&event.key) {
            Lookup::Found(entry) => entry,
            Lookup::Lost => {
                self.drop_timers(&event.key);
                return self.open(event, fp, out);
            }
            Lookup::New => return self.open(event, fp, out),
        };
        let state = entry.state();
        if let Some(fp) = fp
            && state.seen.contains(&fp)
        {
            out.push(Output::duplicate(event));
            return;
        }
        if let Some(emitted) = &state.emitted {
            let deadline = self.rules.part_deadline(emitted.first, event.source);
            let id = emitted.id;
            return self.late(event, deadline, Some(id), out);
        }
        let Some(open) = &state.open else {
            return; // not reached: a cached state is never empty
        };
        let first = open.first;
        let deadline = self.rules.part_deadline(first, event.source);
        if event.time > deadline {
            let id = JourneyId::new(&self.topology, &event.key, first);
            return self.late(event, deadline, Some(id), out);
        }
        let old_close = self
            .rules
            .close_at(first, &self.rules.missing(first, &open.events));
        let key = entry.key().clone();
        // Scanned only at the limit: below it every part is kept.
        let keep = open.events.len() < self.max_events
            || !open.events.iter().any(|e| e.source == event.source);
        let (_, record) = RecordEvent::split(event);
        let mut entry = entry;
        let state = entry.state_mut();
        if let Some(open) = &mut state.open {
            if keep {
                state.seen.extend(fp);
                open.events.push(record);
            } else {
                // A bot order id's hundredth payment: counted, not kept.
                open.dropped += 1;
            }
        }
        self.progress(key, Some(old_close), out);
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Output>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        while let Some(first) = self.closes.first()
            && passed(first.0, watermark)
        {
            let Some((_, key)) = self.closes.pop_first() else {
                break;
            };
            let missing = match self.cache.get_mut(&key) {
                Lookup::Found(entry) => match &entry.state().open {
                    Some(o) => self.rules.missing(o.first, &o.events),
                    None => continue,
                },
                Lookup::Lost => {
                    self.drop_timers(&key);
                    continue;
                }
                Lookup::New => continue,
            };
            self.emit(key, missing, out);
        }
        while let Some(first) = self.expiries.first()
            && passed(first.0, watermark)
        {
            let Some((_, key)) = self.expiries.pop_first() else {
                break;
            };
            self.forget(key);
        }
    }

    fn open_windows(&self) -> usize {
        self.closes.len()
    }
}

impl Checkpointed for CompleteOperator {
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
            Replaced::Nothing => {}
            // Cheap enough for a recovery path: one scan of the timers per key.
            Replaced::Cached(_) | Replaced::Evicted => self.drop_timers(&key),
        }
        self.add_timers(&key);
    }
}

impl Inspect for KeyState {
    /// `missing`: the required sources without any part yet (a part past its deadline
    /// shows as present here; the record will say otherwise).
    fn open_items(&self, required: &[u16], out: &mut Vec<OpenItem>) {
        if let Some(o) = &self.open {
            out.push(OpenItem {
                start: o.first,
                events: Some(o.events.len()),
                missing: required
                    .iter()
                    .copied()
                    .filter(|r| !o.events.iter().any(|e| e.source == *r))
                    .collect(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;
    use crate::engine::testkit::{MapStore, arrivals, gen_event};

    const TOPICS: [&str; 3] = ["pay", "inv", "ship"];

    /// pay and inv required (pay within 30 ms), ship optional; timeout 100 ms.
    fn config(grace: u64) -> CompleteConfig {
        CompleteConfig {
            topology: "t".into(),
            sources: TOPICS.iter().map(|t| t.to_string()).collect(),
            required: vec!["pay".into(), "inv".into()],
            optional: vec!["ship".into()],
            timeout: Duration::from_millis(100),
            deadlines: [("pay".to_string(), Duration::from_millis(30))].into(),
            grace: Duration::from_millis(grace),
            retention: None,
            include_payload: true,
            max_events: None,
        }
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

    /// An output reduced to what the model predicts.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum Norm {
        Record {
            kind: String,
            key: String,
            id: String,
            offsets: Vec<u64>,
            missing: Vec<String>,
        },
        Late {
            key: String,
            offset: u64,
            would_join: Option<String>,
        },
        Dup {
            key: String,
            offset: u64,
        },
    }

    fn norm(out: &[Output]) -> Vec<Norm> {
        out.iter()
            .map(|o| match o {
                Output::Correlation(c) => {
                    let v: Value = serde_json::from_slice(&c.json).unwrap();
                    assert_eq!(v["kind"], c.kind);
                    assert_eq!(v["id"], c.id.to_string());
                    Norm::Record {
                        kind: c.kind.to_owned(),
                        key: c.key.to_string(),
                        id: c.id.to_string(),
                        offsets: v["events"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| e["offset"].as_u64().unwrap())
                            .collect(),
                        missing: v["missing"]
                            .as_array()
                            .map(|m| m.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
                            .unwrap_or_default(),
                    }
                }
                Output::Late(l) => Norm::Late {
                    key: l.key.clone(),
                    offset: l.offset,
                    would_join: l.would_join.map(|id| id.to_string()),
                },
                Output::Duplicate { key, offset, .. } => Norm::Dup {
                    key: key.clone(),
                    offset: *offset,
                },
                Output::Journey(_) | Output::Unjoined { .. } | Output::OverLimit { .. } => {
                    panic!("not from complete: {o:?}")
                }
            })
            .collect()
    }

    fn event_offsets(record: &Value) -> Vec<u64> {
        record["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect()
    }

    fn record(out: &[Output]) -> Value {
        match out {
            [Output::Correlation(c)] => serde_json::from_slice(&c.json).unwrap(),
            other => panic!("expected one record, got {other:?}"),
        }
    }

    #[test]
    fn complete_as_soon_as_every_required_part_arrived() {
        let mut op = config(0).build().unwrap();
        let mut out = Vec::new();
        op.on_event(ev(1, 0, "o1", 1_000, Some("i1")), i64::MIN, &mut out);
        op.on_event(ev(2, 1, "o1", 990, Some("s1")), i64::MIN, &mut out);
        assert!(out.is_empty());
        op.on_event(ev(0, 2, "o1", 1_020, Some("p1")), i64::MIN, &mut out);
        let v = record(&out);
        assert_eq!(v["kind"], "complete");
        assert_eq!(v["id"], JourneyId::new("t", "o1", 1_000).to_string());
        let offsets = event_offsets(&v);
        assert_eq!(
            offsets,
            vec![1, 0, 2],
            "chronological, the optional part included"
        );
        assert_eq!(v["elapsed_ms"], 30);
        assert_eq!(v["repeated_parts"], serde_json::json!({}));
        assert_eq!(v.get("missing"), None);
        assert_eq!(op.open_windows(), 0);
        // A part after completion is late, naming the record.
        out.clear();
        op.on_event(ev(2, 3, "o1", 1_050, Some("s2")), 1_040, &mut out);
        assert_eq!(
            norm(&out),
            vec![Norm::Late {
                key: "o1".into(),
                offset: 3,
                would_join: Some(JourneyId::new("t", "o1", 1_000).to_string())
            }]
        );
    }

    #[test]
    fn incomplete_at_the_earliest_missing_deadline_then_late_parts_name_it() {
        let mut op = config(5).build().unwrap();
        let mut out = Vec::new();
        op.on_event(ev(1, 0, "o1", 1_000, None), i64::MIN, &mut out);
        // pay is due 30 ms after the first part: closes when W > 1_030 + 5.
        op.on_watermark(1_035, &mut out);
        assert!(out.is_empty());
        op.on_watermark(1_036, &mut out);
        let v = record(&out);
        assert_eq!(v["kind"], "incomplete");
        assert_eq!(v["missing"], serde_json::json!(["pay"]));
        assert_eq!(v["waited_ms"], 30);
        assert_eq!(
            v["counts"],
            serde_json::json!({"pay": 0, "inv": 1, "ship": 0})
        );
        out.clear();
        op.on_event(ev(0, 1, "o1", 1_010, None), 1_036, &mut out);
        let [Output::Late(l)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(l.would_join, Some(JourneyId::new("t", "o1", 1_000)));
        assert_eq!(
            l.lateness_ms, 1,
            "in time for its deadline, after the record"
        );
        // Forgotten once W > 1_000 + 100 + 5 + 100: then a part opens a new one.
        out.clear();
        op.on_watermark(1_206, &mut out);
        assert_eq!(op.keys_with_state(), 0);
        op.on_event(ev(0, 2, "o1", 1_300, None), 1_206, &mut out);
        assert!(out.is_empty() && op.open_windows() == 1);
    }

    #[test]
    fn a_part_past_its_deadline_is_late_and_the_rest_waits() {
        let mut op = config(0).build().unwrap();
        let mut out = Vec::new();
        op.on_event(ev(1, 0, "o1", 1_000, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "o1", 1_031, None), i64::MIN, &mut out);
        let [Output::Late(l)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(
            (l.would_join, l.lateness_ms),
            (Some(JourneyId::new("t", "o1", 1_000)), 1)
        );
        out.clear();
        op.on_watermark(i64::MAX, &mut out);
        let v = record(&out);
        assert_eq!(
            (v["kind"].as_str(), v["cut_by_replay_boundary"].as_bool()),
            (Some("incomplete"), Some(true))
        );
    }

    #[test]
    fn repeated_parts_beyond_the_limit_are_counted_and_the_correlation_still_completes() {
        let mut c = config(0);
        c.max_events = Some(2);
        let mut op = c.build().unwrap();
        let mut out = Vec::new();
        for o in 0..4u64 {
            let id = format!("p{o}");
            op.on_event(
                ev(0, o, "bot", 1_000 + o as i64, Some(&id)),
                i64::MIN,
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:?}");
        // A dropped part was not kept: its re-send is not a duplicate but dropped again.
        op.on_event(ev(0, 9, "bot", 1_004, Some("p3")), i64::MIN, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // inv is a new source: kept although the limit is reached, and it completes.
        op.on_event(ev(1, 4, "bot", 1_005, Some("i1")), i64::MIN, &mut out);
        let v = record(&out);
        assert_eq!(v["kind"], "complete");
        let offsets = event_offsets(&v);
        assert_eq!(offsets, [0, 1, 4]);
        assert_eq!(
            (&v["truncated"], &v["dropped_events"]),
            (&serde_json::json!(true), &serde_json::json!(3))
        );
    }

    #[test]
    fn repeated_parts_are_kept_and_reported_duplicates_are_not() {
        let mut op = config(0).build().unwrap();
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "o1", 1_000, Some("p1")), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "o1", 1_001, Some("p1")), i64::MIN, &mut out);
        op.on_event(ev(0, 2, "o1", 1_002, Some("p2")), i64::MIN, &mut out);
        assert_eq!(
            norm(&out),
            vec![Norm::Dup {
                key: "o1".into(),
                offset: 1
            }]
        );
        out.clear();
        op.on_event(ev(1, 3, "o1", 1_003, Some("i1")), i64::MIN, &mut out);
        let v = record(&out);
        assert_eq!(v["repeated_parts"], serde_json::json!({"pay": 2}));
        assert_eq!(
            v["counts"],
            serde_json::json!({"pay": 2, "inv": 1, "ship": 0})
        );
    }

    #[test]
    fn a_part_opening_a_correlation_already_due_is_late() {
        let mut op = config(0).build().unwrap();
        let mut out = Vec::new();
        // inv first: pay still missing, due at 1_030.
        op.on_event(ev(1, 0, "o1", 1_000, None), 1_031, &mut out);
        // pay first: inv missing, due at 1_100.
        op.on_event(ev(0, 1, "o2", 1_000, None), 1_031, &mut out);
        assert_eq!(
            norm(&out),
            vec![Norm::Late {
                key: "o1".into(),
                offset: 0,
                would_join: None
            }]
        );
        assert_eq!(op.open_windows(), 1);
    }

    #[test]
    fn configuration_errors_name_the_topology() {
        let mut c = config(0);
        c.optional.clear();
        assert_eq!(
            c.build().unwrap_err().to_string(),
            "topology `t`, correlation complete: source `ship` is neither required nor optional"
        );
        let mut c = config(0);
        c.required = vec!["nope".into()];
        assert_eq!(
            c.build().unwrap_err().to_string(),
            "topology `t`, correlation complete: `nope` in required is not a source of the topology"
        );
        let mut c = config(0);
        c.timeout = Duration::ZERO;
        assert_eq!(
            c.build().unwrap_err().to_string(),
            "topology `t`, correlation complete: `timeout` must be between 1ms and 100 years, got 0ns"
        );
    }

    /// The rules of the module doc, applied naively: every key scanned on every step.
    struct Model {
        wm: i64,
        keys: BTreeMap<String, MKey>,
        out: Vec<Norm>,
    }

    #[derive(Default)]
    struct MKey {
        open: Option<(i64, Vec<Event>)>,
        emitted: Option<Remembered>,
    }

    /// (first, forget_after, (source, id) of its parts)
    type Remembered = (i64, i64, Vec<(u16, String)>);

    const DEADLINE: [i64; 3] = [30, 100, 100];
    const REQUIRED: [u16; 2] = [0, 1];

    fn missing(first: i64, events: &[Event]) -> Vec<u16> {
        REQUIRED
            .iter()
            .copied()
            .filter(|&r| {
                !events
                    .iter()
                    .any(|e| e.source == r && e.time <= first + DEADLINE[usize::from(r)])
            })
            .collect()
    }

    fn close(first: i64, missing: &[u16], grace: i64) -> i64 {
        missing
            .iter()
            .map(|&r| first + DEADLINE[usize::from(r)])
            .min()
            .unwrap_or(first + 100)
            + grace
    }

    impl Model {
        fn emit(&mut self, key: &str, grace: i64) {
            let k = self.keys.get_mut(key).unwrap();
            let (first, mut events) = k.open.take().unwrap();
            let miss = missing(first, &events);
            events.sort_by_key(|e| (e.time, e.source, e.partition, e.offset));
            let ids = events
                .iter()
                .filter_map(|e| e.id.as_deref().map(|i| (e.source, i.to_owned())))
                .collect();
            k.emitted = Some((first, first + 100 + grace + 100, ids));
            self.out.push(Norm::Record {
                kind: if miss.is_empty() {
                    "complete"
                } else {
                    "incomplete"
                }
                .into(),
                key: key.into(),
                id: JourneyId::new("t", key, first).to_string(),
                offsets: events.iter().map(|e| e.offset).collect(),
                missing: miss
                    .iter()
                    .map(|&r| TOPICS[usize::from(r)].to_owned())
                    .collect(),
            });
        }

        fn advance(&mut self, w: i64, grace: i64) {
            self.wm = self.wm.max(w);
            let wm = self.wm;
            let mut due: Vec<(i64, String)> = self
                .keys
                .iter()
                .filter_map(|(key, k)| {
                    let (first, events) = k.open.as_ref()?;
                    let c = close(*first, &missing(*first, events), grace);
                    passed(c, wm).then(|| (c, key.clone()))
                })
                .collect();
            due.sort();
            for (_, key) in due {
                self.emit(&key, grace);
            }
            for k in self.keys.values_mut() {
                if k.emitted.as_ref().is_some_and(|e| passed(e.1, wm)) {
                    k.emitted = None;
                }
            }
            self.keys
                .retain(|_, k| k.open.is_some() || k.emitted.is_some());
        }

        fn on_event(&mut self, e: Event, w: i64, grace: i64) {
            self.advance(w, grace);
            let wm = self.wm;
            let k = self.keys.entry(e.key.clone()).or_default();
            let held: Vec<(u16, String)> = match (&k.open, &k.emitted) {
                (Some((_, events)), _) => events
                    .iter()
                    .filter_map(|x| x.id.as_deref().map(|i| (x.source, i.to_owned())))
                    .collect(),
                (_, Some((_, _, ids))) => ids.clone(),
                _ => Vec::new(),
            };
            let dup =
                e.id.as_ref()
                    .is_some_and(|id| held.contains(&(e.source, id.to_string())));
            let late = |w: Option<i64>| Norm::Late {
                key: e.key.clone(),
                offset: e.offset,
                would_join: w.map(|f| JourneyId::new("t", &e.key, f).to_string()),
            };
            if dup {
                self.out.push(Norm::Dup {
                    key: e.key.clone(),
                    offset: e.offset,
                });
            } else if let Some((first, _, _)) = &k.emitted {
                self.out.push(late(Some(*first)));
            } else if let Some((first, events)) = &mut k.open {
                if e.time > *first + DEADLINE[usize::from(e.source)] {
                    let f = *first;
                    self.out.push(late(Some(f)));
                } else {
                    events.push(e.clone());
                    if missing(*first, events).is_empty() {
                        self.emit(&e.key, grace);
                    }
                }
            } else {
                let miss: Vec<u16> = REQUIRED
                    .iter()
                    .copied()
                    .filter(|&r| r != e.source)
                    .collect();
                if passed(close(e.time, &miss, grace), wm) {
                    self.out.push(late(None));
                } else {
                    k.open = Some((e.time, vec![e.clone()]));
                    if miss.is_empty() {
                        self.emit(&e.key, grace);
                    }
                }
            }
            self.keys
                .retain(|_, k| k.open.is_some() || k.emitted.is_some());
        }
    }

    /// Feeds `events` with watermark = largest time seen − bound, then end of input;
    /// with `evict`, drains and evicts everything after every event.
    fn run(op: &mut CompleteOperator, events: &[Event], bound: i64, evict: bool) -> Vec<Output> {
        let store = evict.then(|| MapStore::attached_to(op));
        let mut out = Vec::new();
        let mut max = i64::MIN;
        for (i, e) in events.iter().enumerate() {
            let w = max.saturating_sub(bound);
            max = max.max(e.time);
            op.on_event(e.clone(), w, &mut out);
            if let Some(store) = &store {
                store.drain(op, i as u64 + 1);
                op.evict(0, i as u64 + 1);
            }
        }
        op.on_watermark(i64::MAX, &mut out);
        out
    }

    fn model(events: &[Event], bound: i64, grace: i64) -> Vec<Norm> {
        let mut m = Model {
            wm: i64::MIN,
            keys: BTreeMap::new(),
            out: Vec::new(),
        };
        let mut max = i64::MIN;
        for e in events {
            let w = max.saturating_sub(bound);
            max = max.max(e.time);
            m.on_event(e.clone(), w, grace);
        }
        m.advance(i64::MAX, grace);
        m.out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn matches_the_model_on_shuffled_late_and_repeated_input(
            gens in prop::collection::vec(gen_event(), 0..60),
            bound in 0i64..40,
            grace in 0i64..20,
            with_late in any::<bool>(),
            evict in any::<bool>(),
        ) {
            let events = arrivals(&gens, bound, with_late);
            let mut op = config(grace as u64).build().unwrap();
            let out = run(&mut op, &events, bound, evict);
            let got = norm(&out);
            prop_assert_eq!(&got, &model(&events, bound, grace));
            // Accounting: every event in exactly one record, late report or duplicate.
            let mut fates: Vec<u64> = got
                .iter()
                .flat_map(|n| match n {
                    Norm::Record { offsets, .. } => offsets.clone(),
                    Norm::Late { offset, .. } | Norm::Dup { offset, .. } => vec![*offset],
                })
                .collect();
            fates.sort_unstable();
            let all: Vec<u64> = events.iter().map(|e| e.offset).collect::<BTreeSet<_>>().into_iter().collect();
            prop_assert_eq!(fates, all);
            prop_assert_eq!((op.keys_with_state(), op.open_windows()), (0, 0));
        }
    }
}
