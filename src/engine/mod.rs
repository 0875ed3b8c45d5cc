//! The correlation engine: the [`Operator`] interface every correlation kind
//! implements, and the output records operators produce ([`Output`]) with their JSON.
//!
//! An operator is plain synchronous code over `&mut self`: no clock, no I/O. Event time
//! comes from the events; the job watermark (`i64` epoch ms, `i64::MAX` = end of input,
//! see [`crate::time`]) is passed in by the runtime. The runtime turns [`Output`]s into
//! output-topic records via their `to_json` methods.
//!
//! Invariants every operator keeps (docs/semantics.md):
//! - Accounting: every event given to [`Operator::on_event`] ends in exactly one of a
//!   correlation record's events, one [`LateArrival`], one [`Output::Duplicate`] —
//!   except for `interval` joins, where an event can be in several records and one
//!   that never is ends in an [`Output::Unjoined`] count (see that module).
//! - Determinism: the outputs depend only on the sequence of calls (events and
//!   watermarks), never on hashing order, a clock or the number of shards.
//! - Record ids ([`JourneyId`]) are a hash of the topology name, the key and the
//!   window start, so the same input gives the same ids in live runs and replays.
//! - Rendered JSON embeds each event's payload verbatim (the decoder guarantees it is
//!   one JSON object) and renders times as RFC 3339 UTC with milliseconds.
//!
//! Operators keep their per-key state in a [`cache::KeyCache`] over the state store and
//! expose it to the runtime through [`Checkpointed`], so checkpointing, eviction and
//! recovery are written once for every correlation kind.

pub mod cache;
pub mod complete;
pub mod interval;
pub mod session;
#[cfg(test)]
mod testkit;
pub mod window;

use std::fmt;
use std::hash::Hasher as _;
use std::io::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128 as _, SipHasher13};

use crate::decode::{Event, EventId};

pub use cache::KeyLoader;
pub use complete::{CompleteConfig, CompleteConfigError, CompleteOperator};
pub use interval::{IntervalConfig, IntervalConfigError, IntervalOperator, LinkConfig};
pub use session::{SessionConfig, SessionConfigError, SessionOperator};
pub use window::{WindowConfig, WindowConfigError, WindowOperator};

/// A correlation operator: one correlation kind of one topology.
pub trait Operator {
    /// Handles one decoded event. `watermark` is the job watermark when the event was
    /// read; the operator first closes what that watermark makes due, exactly as
    /// [`Operator::on_watermark`] would, so results do not depend on how often the
    /// runtime calls `on_watermark`.
    fn on_event(&mut self, event: Event, watermark: i64, out: &mut Vec<Output>);
    /// Closes every window the watermark makes due and drops state it makes obsolete.
    /// A watermark lower than one already seen is treated as the one already seen.
    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Output>);
    /// Windows currently open (for metrics and `braid inspect`).
    fn open_windows(&self) -> usize;
}

/// How the runtime checkpoints an operator's per-key state (write-behind, see
/// [`cache`]): changed keys are drained at each barrier into the checkpoint, clean keys
/// of a committed checkpoint are evicted to bound memory, and evicted keys are read back
/// through the installed [`KeyLoader`].
pub trait Checkpointed {
    /// One key's state, as persisted in the state store.
    type State: crate::state::Persist + cache::CacheState + Send + 'static;
    /// The operator's key cache; the methods below are written once over it.
    fn key_cache(&self) -> &cache::KeyCache<Self::State>;
    fn key_cache_mut(&mut self) -> &mut cache::KeyCache<Self::State>;
    /// Loads a key's persisted state (replacing any it has) and rebuilds what the
    /// operator derives from it (timers). The key is then clean and evictable at any
    /// committed epoch.
    fn restore_key(&mut self, key: &str, state: Self::State);
    /// Installs the loader used for keys that are not cached. Without a loader nothing
    /// is ever evicted and no load is attempted.
    fn set_loader(&mut self, loader: Box<dyn KeyLoader<Self::State>>) {
        self.key_cache_mut().set_loader(loader);
    }
    /// Calls `f(key, Some(&mut state))` for every key whose state changed since the
    /// previous call and still has state, and `f(key, None)` for every such key whose
    /// stored state is now gone; each once, in no particular order. Afterwards these
    /// keys are clean and remembered as written at `epoch` (`epoch`s are increasing).
    /// `f` writes the state ([`crate::state::Persist::write`]), which may update it.
    fn drain_changes(&mut self, epoch: u64, f: &mut dyn FnMut(&str, Option<&mut Self::State>)) {
        self.key_cache_mut().drain(epoch, f);
    }
    /// [`Checkpointed::drain_changes`], each changed key written for a checkpoint
    /// (packed through `scratch`, a buffer the caller keeps across checkpoints).
    fn drain_writes(
        &mut self,
        epoch: u64,
        scratch: &mut Vec<u8>,
    ) -> Result<crate::state::KeyWrites, crate::state::StateError> {
        let mut writes = crate::state::KeyWrites::default();
        let mut failed = None;
        self.drain_changes(epoch, &mut |key, state| {
            let mut w = crate::state::StateWriter::new(key, &mut writes, scratch);
            match state {
                Some(s) => {
                    if let Err(e) = crate::state::Persist::write(s, &mut w) {
                        failed.get_or_insert(e);
                    }
                }
                None => w.delete(),
            }
        });
        failed.map_or(Ok(writes), Err)
    }
    /// Evicts clean keys last drained at an epoch `<= committed_epoch`, least recently
    /// drained first, until at most `max_cached` are cached; returns how many went.
    fn evict(&mut self, max_cached: usize, committed_epoch: u64) -> usize {
        self.key_cache_mut().evict(max_cached, committed_epoch)
    }
    /// Keys whose state is in memory now.
    fn cached_keys(&self) -> usize {
        self.key_cache().cached_len()
    }
    /// Keys that have any state, cached or evicted.
    fn keys_with_state(&self) -> usize {
        self.key_cache().len_with_evicted()
    }
    /// How the key cache's lookups went so far.
    fn cache_counts(&self) -> cache::CacheCounts {
        self.key_cache().counts()
    }
}

/// The hash maps and sets of the operators' per-event paths. Keys come from producers,
/// so the hasher is seeded per map (no precomputed collisions), but it is several times
/// cheaper than the standard library's SipHash on short strings and on fingerprints.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// The SipHash keys of [`fingerprint`]: fixed, as fingerprints are stored.
const FINGERPRINT_KEYS: (u64, u64) = (0x6272_6169_645f_6576, 0x656e_745f_6964_7321);

/// A 128-bit fingerprint of (source, event id), so de-duplication keeps 16 bytes per
/// event instead of a copy of the id. Distinct ids collide with probability 2⁻¹²⁸.
///
/// The hash of the bytes `source` (little-endian) then `id`, taken in one pass over a
/// copy on the stack when the id is short, as ids are: fed in two writes, SipHash
/// merges the id into the source's 2-byte tail byte by byte (with journey ids, SipHash
/// was 2.5% of a journey run's CPU time).
pub(crate) fn fingerprint(source: u16, id: &str) -> u128 {
    let h = SipHasher13::new_with_keys(FINGERPRINT_KEYS.0, FINGERPRINT_KEYS.1);
    let mut message = [0u8; 64];
    match message.get_mut(2..2 + id.len()) {
        Some(rest) => {
            rest.copy_from_slice(id.as_bytes());
            message[..2].copy_from_slice(&source.to_le_bytes());
            h.hash(&message[..2 + id.len()]).as_u128()
        }
        None => {
            let mut h = h;
            h.write(&source.to_le_bytes());
            h.write(id.as_bytes());
            h.finish128().as_u128()
        }
    }
}

/// One open window or correlation, as `braid inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenItem {
    /// Window start or first event time, epoch ms.
    pub start: i64,
    /// Events it holds so far, when the state alone tells.
    pub events: Option<usize>,
    /// Source indexes of the parts it still waits for (`complete`); empty otherwise.
    pub missing: Vec<u16>,
}

/// Implemented by every kind's per-key state, for `braid inspect`.
pub trait Inspect {
    /// Adds the key's open windows or correlations to `out`; `required` are the
    /// required sources of a `complete` correlation (empty for other kinds).
    fn open_items(&self, required: &[u16], out: &mut Vec<OpenItem>);
}

/// What an operator produces; the runtime later turns these into output-topic records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A closed correlation (kind `journey`).
    Journey(Journey),
    /// An event that arrived too late to join its correlation.
    Late(LateArrival),
    /// A repeated (source, id) of the same key within the state's retention: counted,
    /// never emitted twice.
    Duplicate {
        source: u16,
        partition: u32,
        offset: u64,
        key: String,
        id: String,
    },
    /// A correlation record of another kind (`complete`, `incomplete`, `join`,
    /// `window`), already rendered; it goes to the journeys topic like a journey.
    Correlation(CorrelationRecord),
    /// An event an `interval` join did not take into state because its key already holds
    /// `held` events (`limits.max_events_per_window`): it joins nothing, and the runtime
    /// dead-letters it (`over_limit`) so that it is not lost silently.
    OverLimit { event: Event, held: usize },
    /// An event that left an `interval` join's state without being in any record (an
    /// inner link found it no partner): counted, never emitted.
    Unjoined {
        source: u16,
        partition: u32,
        offset: u64,
        key: String,
    },
}

impl Output {
    /// The duplicate count for `event`.
    pub fn duplicate(event: Event) -> Output {
        let Event {
            source,
            partition,
            offset,
            key,
            id,
            ..
        } = event;
        Output::Duplicate {
            source,
            partition,
            offset,
            key,
            id: id.map(|id| id.to_string()).unwrap_or_default(),
        }
    }
}

/// A rendered correlation record: its kind, deterministic id, key and JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationRecord {
    /// The record's `kind` field, e.g. `"complete"`.
    pub kind: &'static str,
    pub id: JourneyId,
    pub key: Arc<str>,
    /// One JSON object (the runtime appends its `producer` stamp to it).
    pub json: Vec<u8>,
}

/// A deterministic correlation-record id: 128 bits, rendered as 32 lower-case hex
/// digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JourneyId(pub u128);

impl JourneyId {
    /// SipHash-1-3 (128-bit, fixed keys) of the topology name, the key and the window
    /// start. Each string is length-prefixed so `("ab", "c")` and `("a", "bc")` differ.
    pub fn new(topology: &str, key: &str, start: i64) -> JourneyId {
        let mut h = SipHasher13::new_with_keys(0x6272_6169_645f_6a6f, 0x7572_6e65_795f_6964);
        h.write(&(topology.len() as u64).to_le_bytes());
        h.write(topology.as_bytes());
        h.write(&(key.len() as u64).to_le_bytes());
        h.write(key.as_bytes());
        h.write(&start.to_le_bytes());
        JourneyId(h.finish128().as_u128())
    }

    /// Appends the id as its `Display` form (32 lowercase hex digits), cheaply: every
    /// output record carries one.
    pub(crate) fn push_hex(self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.extend(
            (0..32)
                .rev()
                .map(|i| HEX[((self.0 >> (i * 4)) & 0xf) as usize]),
        );
    }
}

impl fmt::Display for JourneyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// An event inside a correlation record (the event minus its key, which the record
/// carries once).
///
/// Stored (postcard) as its six public fields, in order; the id's tag is not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredEvent")]
pub struct RecordEvent {
    /// Index of the source in the topology.
    pub source: u16,
    pub partition: u32,
    pub offset: u64,
    /// Event time, epoch ms.
    pub time: i64,
    /// Inline when short ([`EventId`]), so a scan of a session's ids stays in its events.
    id: Option<EventId>,
    /// The raw JSON object text of the record.
    pub payload: Box<str>,
    /// [`id_tag`] of the id (0 without one), in what would be padding: a scan for a
    /// duplicate compares the bytes of an id only when its tag matches, so it reads no
    /// other event's id from memory.
    #[serde(skip_serializing)]
    id_tag: u16,
}

/// A [`RecordEvent`] as chunks store it.
#[derive(Deserialize)]
struct StoredEvent {
    source: u16,
    partition: u32,
    offset: u64,
    time: i64,
    id: Option<Box<str>>,
    payload: Box<str>,
}

impl From<StoredEvent> for RecordEvent {
    fn from(e: StoredEvent) -> RecordEvent {
        RecordEvent::new(
            e.source,
            e.partition,
            e.offset,
            e.time,
            e.id.map(EventId::from),
            e.payload,
        )
    }
}

/// A 16-bit digest of an event id (fixed-seed foldhash; in memory only, never stored).
pub(crate) fn id_tag(id: &str) -> u16 {
    use std::hash::BuildHasher as _;
    (foldhash::fast::FixedState::default().hash_one(id) >> 48) as u16
}

impl RecordEvent {
    pub fn new(
        source: u16,
        partition: u32,
        offset: u64,
        time: i64,
        id: Option<EventId>,
        payload: Box<str>,
    ) -> RecordEvent {
        RecordEvent {
            id_tag: id.as_deref().map_or(0, id_tag),
            source,
            partition,
            offset,
            time,
            id,
            payload,
        }
    }

    /// The event's id, if its source has an id pointer and the record a value there.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Whether this is the event `(source, id)`; `tag` is [`id_tag`] of `id`.
    pub(crate) fn is(&self, source: u16, id: &str, tag: u16) -> bool {
        self.id_tag == tag && self.source == source && self.id() == Some(id)
    }

    /// Moves the fields out of a decoded event; the key is returned separately so
    /// nothing is copied.
    pub fn split(event: Event) -> (String, RecordEvent) {
        let Event {
            source,
            partition,
            offset,
            key,
            time,
            id,
            payload,
        } = event;
        (
            key,
            RecordEvent::new(source, partition, offset, time, id, payload),
        )
    }

    /// Where the event sits in the input: (source index, partition, offset); unique
    /// per event.
    pub fn at(&self) -> (u16, u32, u64) {
        (self.source, self.partition, self.offset)
    }

    /// Chronological order of events in a record: time, then source index,
    /// partition, offset.
    pub fn order_key(&self) -> (i64, u16, u32, u64) {
        (self.time, self.source, self.partition, self.offset)
    }
}

/// The names of a topology's source topics, by source index; shared by every record.
pub type Topics = Arc<[Arc<str>]>;

/// A closed session: `{"kind":"journey","id","key","window":{"start","end"},
/// "events":[{"topic","partition","offset","id","time","payload"}…],"counts":{topic: n}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journey {
    pub id: JourneyId,
    pub key: Arc<str>,
    /// Window start (first event time), epoch ms, inclusive.
    pub start: i64,
    /// Window end (last event time + gap), epoch ms, exclusive.
    pub end: i64,
    /// In chronological order ([`RecordEvent::order_key`]).
    pub events: Vec<RecordEvent>,
    /// Source topic names, to render `topic` and `counts`.
    pub topics: Topics,
    /// Whether `to_json` embeds each event's payload.
    pub include_payload: bool,
    /// Closed by the end of a bounded run or replay (watermark +infinity), not by the
    /// watermark of the data: rendered as `"cut_by_replay_boundary":true`, absent
    /// otherwise.
    pub cut_by_boundary: bool,
    /// Events of the session not kept (`limits.max_events_per_window`): rendered as
    /// `"truncated":true,"dropped_events":n` when not 0.
    pub dropped: u64,
}

impl Journey {
    /// The journey output record (see the type's doc). `counts` lists every source
    /// topic in source order, zeros included, so its shape does not depend on the
    /// data.
    pub fn to_json(&self) -> Vec<u8> {
        self.record().to_json()
    }

    /// [`Journey::to_json`], split into parts of at most `limit` bytes
    /// ([`WindowedRecord::to_json_parts`]).
    pub fn to_json_parts(&self, limit: usize) -> Vec<Vec<u8>> {
        self.record().to_json_parts(limit)
    }

    fn record(&self) -> WindowedRecord<'_> {
        WindowedRecord {
            kind: "journey",
            id: self.id,
            key: &self.key,
            start: self.start,
            end: self.end,
            events: &self.events,
            topics: &self.topics,
            include_payload: self.include_payload,
            cut_by_boundary: self.cut_by_boundary,
            dropped: self.dropped,
        }
    }
}

/// The shape shared by correlation records over a window of events (`journey`,
/// `window`): `{"kind","id","key","window":{"start","end"},"events":[{"topic",
/// "partition","offset","id","time","payload"}…],"counts":{topic: n}}`, plus
/// `"cut_by_replay_boundary":true` when the end of input closed it. `counts` lists every
/// source topic in source order, zeros included, so the shape does not depend on the data.
pub struct WindowedRecord<'a> {
    pub kind: &'a str,
    pub id: JourneyId,
    pub key: &'a str,
    pub start: i64,
    pub end: i64,
    /// In chronological order ([`RecordEvent::order_key`]).
    pub events: &'a [RecordEvent],
    pub topics: &'a Topics,
    pub include_payload: bool,
    pub cut_by_boundary: bool,
    /// Events not kept (a limit); rendered when not 0.
    pub dropped: u64,
}

impl WindowedRecord<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        self.render(self.events, None)
    }

    /// The record as one JSON object if it fits in `limit` bytes, else as parts that
    /// each fit: every part is a whole record of the same id, key, window and counts
    /// (of all events), with `"part":{"index":i,"of":n}` and a consecutive run of the
    /// events in their order. A part holds at least one event, so a single event
    /// larger than the limit makes a part larger than the limit.
    pub fn to_json_parts(&self, limit: usize) -> Vec<Vec<u8>> {
        let whole = self.to_json();
        if whole.len() <= limit || self.events.len() < 2 {
            return vec![whole];
        }
        let overhead = self
            .render(&[], Some((self.events.len(), self.events.len())))
            .len();
        let room = limit.saturating_sub(overhead);
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut start, mut size) = (0, 0);
        for (i, e) in self.events.iter().enumerate() {
            let mut one = Vec::new();
            push_event_json(
                &mut one,
                &topic_name(self.topics, e.source),
                e,
                self.include_payload,
            );
            let len = one.len() + 1;
            if i > start && size + len > room {
                runs.push(start..i);
                (start, size) = (i, 0);
            }
            size += len;
        }
        runs.push(start..self.events.len());
        let of = runs.len();
        runs.into_iter()
            .enumerate()
            .map(|(i, run)| self.render(&self.events[run], Some((i + 1, of))))
            .collect()
    }

    /// `events` (all or a part's) with counts over all of `self.events`.
    fn render(&self, events: &[RecordEvent], part: Option<(usize, usize)>) -> Vec<u8> {
        // Sized so that neither rendering nor the outbox's stamp has to grow it: growing
        // a journey of several KB copied it once or twice more, and every reallocation
        // touched fresh memory.
        let event_bytes: usize = events
            .iter()
            .map(|e| {
                let topic = self
                    .topics
                    .get(usize::from(e.source))
                    .map_or(8, |t| t.len());
                let payload = if self.include_payload {
                    e.payload.len()
                } else {
                    0
                };
                EVENT_JSON_FIXED + topic + e.id.as_deref().map_or(0, str::len) + payload
            })
            .sum();
        let counts: usize = self.topics.iter().map(|t| t.len() + 24).sum();
        let mut out = Vec::with_capacity(RECORD_JSON_FIXED + self.key.len() + counts + event_bytes);
        out.extend_from_slice(b"{\"kind\":");
        push_json_str(&mut out, self.kind);
        out.extend_from_slice(b",\"id\":\"");
        self.id.push_hex(&mut out);
        out.extend_from_slice(b"\",\"key\":");
        push_json_str(&mut out, self.key);
        out.extend_from_slice(b",\"window\":{\"start\":");
        push_json_time(&mut out, self.start);
        out.extend_from_slice(b",\"end\":");
        push_json_time(&mut out, self.end);
        out.push(b'}');
        if let Some((index, of)) = part {
            let _ = write!(out, ",\"part\":{{\"index\":{index},\"of\":{of}}}");
        }
        out.extend_from_slice(b",\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_event_json(
                &mut out,
                &topic_name(self.topics, e.source),
                e,
                self.include_payload,
            );
        }
        out.extend_from_slice(b"],\"counts\":{");
        // Sources are few; a topic named twice (rejected by topology validation) is
        // summed under its first position rather than repeated as a JSON member.
        let mut first = true;
        for (index, topic) in self.topics.iter().enumerate() {
            if self.topics[..index].contains(topic) {
                continue;
            }
            let n = self
                .events
                .iter()
                .filter(|e| self.topics.get(usize::from(e.source)) == Some(topic))
                .count();
            if !first {
                out.push(b',');
            }
            first = false;
            push_json_str(&mut out, topic);
            let _ = write!(out, ":{n}");
        }
        out.push(b'}');
        if self.cut_by_boundary {
            out.extend_from_slice(b",\"cut_by_replay_boundary\":true");
        }
        if self.dropped > 0 {
            let _ = write!(
                out,
                ",\"truncated\":true,\"dropped_events\":{}",
                self.dropped
            );
        }
        out.push(b'}');
        out
    }
}

/// An event that could not join its correlation because the watermark had passed:
/// `{"kind":"late_arrival","topic","partition","offset","key","id","time",
/// "watermark","lateness_ms","would_join"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateArrival {
    pub topic: Arc<str>,
    pub source: u16,
    pub partition: u32,
    pub offset: u64,
    pub key: String,
    pub id: Option<EventId>,
    /// Event time, epoch ms.
    pub time: i64,
    /// The job watermark when the event arrived (`i64::MAX` after end of input).
    pub watermark: i64,
    /// How far the watermark was past the last moment the event could still have
    /// been accepted (always ≥ 1 ms; the operator defines that moment).
    pub lateness_ms: i64,
    /// The already-emitted record the event would have joined, when known.
    pub would_join: Option<JourneyId>,
}

impl LateArrival {
    /// The report for `event`, late by `lateness_ms` (what that means is the kind's
    /// rule) when the watermark was `watermark`.
    pub fn of(
        event: Event,
        topics: &Topics,
        watermark: i64,
        lateness_ms: i64,
        would_join: Option<JourneyId>,
    ) -> LateArrival {
        let topic = match topics.get(usize::from(event.source)) {
            Some(t) => t.clone(),
            None => Arc::from(format!("#{}", event.source)),
        };
        LateArrival {
            topic,
            source: event.source,
            partition: event.partition,
            offset: event.offset,
            key: event.key,
            id: event.id,
            time: event.time,
            watermark,
            lateness_ms,
            would_join,
        }
    }

    /// The late-arrival output record (see the type's doc). After end of input
    /// (`watermark == i64::MAX`) `watermark` and `lateness_ms` are `null`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"kind\":\"late_arrival\",\"topic\":");
        push_json_str(&mut out, &self.topic);
        let _ = write!(
            out,
            ",\"partition\":{},\"offset\":{},\"key\":",
            self.partition, self.offset
        );
        push_json_str(&mut out, &self.key);
        out.extend_from_slice(b",\"id\":");
        match &self.id {
            Some(id) => push_json_str(&mut out, id),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"time\":");
        push_json_time(&mut out, self.time);
        out.extend_from_slice(b",\"watermark\":");
        if self.watermark == i64::MAX {
            out.extend_from_slice(b"null,\"lateness_ms\":null");
        } else {
            push_json_time(&mut out, self.watermark);
            let _ = write!(out, ",\"lateness_ms\":{}", self.lateness_ms);
        }
        out.extend_from_slice(b",\"would_join\":");
        match self.would_join {
            Some(id) => {
                let _ = write!(out, "\"{id}\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        out
    }
}

/// The topic of a source index; an index the topology does not have (a runtime bug,
/// never bad data) is named `#N` rather than panicking.
fn topic_name(topics: &Topics, source: u16) -> std::borrow::Cow<'_, str> {
    match topics.get(usize::from(source)) {
        Some(t) => std::borrow::Cow::Borrowed(t),
        None => std::borrow::Cow::Owned(format!("#{source}")),
    }
}

/// Whether any of the 8 bytes of `w` must be escaped in a JSON string (`"`, `\\` or a
/// control character): the classic exact tests for a zero byte and a byte below n.
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero_in(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_in(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (quote | backslash | control) != 0
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Ids, keys and topics rarely need escaping: skip 8 bytes at a time to the first
    // word that might (byte by byte, this was 2% of a journey run's CPU time).
    let mut clean = 0;
    while let Some(word) = bytes.get(clean..clean + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        if word_needs_escape(w) {
            break;
        }
        clean += 8;
    }
    out.extend_from_slice(&bytes[..clean]);
    let mut start = clean;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Bytes of an event's JSON besides its topic, id and payload, at most: the member
/// names and punctuation, 30 digits of partition and offset, the quoted time.
const EVENT_JSON_FIXED: usize = 120;
/// Bytes of a record's JSON besides its key, counts and events, with room for the
/// outbox's producer stamp (`,"producer":{"job":…,"seq":…}`) and a part marker.
const RECORD_JSON_FIXED: usize = 512;

/// Appends one event of a record: `{"topic","partition","offset","id","time"}` plus
/// `"payload"` (the raw JSON object) when payloads are on.
fn push_event_json(out: &mut Vec<u8>, topic: &str, e: &RecordEvent, include_payload: bool) {
    out.extend_from_slice(b"{\"topic\":");
    push_json_str(out, topic);
    // Every event of every record: integers without the formatting machinery.
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b",\"partition\":");
    out.extend_from_slice(n.format(e.partition).as_bytes());
    out.extend_from_slice(b",\"offset\":");
    out.extend_from_slice(n.format(e.offset).as_bytes());
    out.extend_from_slice(b",\"id\":");
    match &e.id {
        Some(id) => push_json_str(out, id),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"time\":");
    push_json_time(out, e.time);
    if include_payload {
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(e.payload.as_bytes());
    }
    out.push(b'}');
}

/// Appends an epoch-ms time as a quoted RFC 3339 UTC string with milliseconds. Every
/// event of every record renders its time, so years 1 to 9999 take a direct path (a
/// civil-from-days conversion into a fixed buffer); other times go through chrono, and
/// times outside chrono's range (not produced by the decoder) are rendered as the number.
fn push_json_time(out: &mut Vec<u8>, ms: i64) {
    const FIRST: i64 = -62_135_596_800_000; // 0001-01-01T00:00:00.000Z
    const LAST: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    if (FIRST..=LAST).contains(&ms) {
        let (year, month, day) = civil_from_days(ms.div_euclid(86_400_000));
        let in_day = ms.rem_euclid(86_400_000);
        let fields = [
            (year as u32, 4),
            (month, 2),
            (day, 2),
            ((in_day / 3_600_000) as u32, 2),
            ((in_day / 60_000 % 60) as u32, 2),
            ((in_day / 1_000 % 60) as u32, 2),
            ((in_day % 1_000) as u32, 3),
        ];
        let mut buf = *b"\"0000-00-00T00:00:00.000Z\"";
        let mut at = 1;
        for (value, width) in fields {
            let mut v = value;
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
            at += width + 1;
        }
        out.extend_from_slice(&buf);
        return;
    }
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => {
            let _ = write!(out, "\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
        }
        None => {
            let _ = write!(out, "{ms}");
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`), for years 1 to 9999.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// `sizes[i]` bytes of payload for event i, alternating over two sources.
    fn events(sizes: &[usize]) -> Vec<RecordEvent> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                RecordEvent::new(
                    (i % 2) as u16,
                    0,
                    i as u64,
                    1_000 + i as i64,
                    Some(format!("e{i}").into()),
                    format!("{{\"p\":\"{}\"}}", "x".repeat(n)).into(),
                )
            })
            .collect()
    }

    fn record<'a>(events: &'a [RecordEvent], topics: &'a Topics) -> WindowedRecord<'a> {
        WindowedRecord {
            kind: "journey",
            id: JourneyId(7),
            key: "bot",
            start: 1_000,
            end: 9_000,
            events,
            topics,
            include_payload: true,
            cut_by_boundary: false,
            dropped: 3,
        }
    }

    /// Checks the parts against the whole record; returns them parsed.
    fn check_parts(r: &WindowedRecord<'_>, limit: usize) -> Vec<Value> {
        let parts = r.to_json_parts(limit);
        let whole: Value = serde_json::from_slice(&r.to_json()).unwrap();
        let parsed: Vec<Value> = parts
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect();
        if parts.len() == 1 {
            assert_eq!(parsed[0], whole, "a record that fits is not split");
            return parsed;
        }
        let mut events = Vec::new();
        for (i, (bytes, part)) in parts.iter().zip(&parsed).enumerate() {
            let mut rest = part.clone();
            let mine = rest["events"].as_array().unwrap().clone();
            assert!(!mine.is_empty());
            assert!(
                bytes.len() <= limit || mine.len() == 1,
                "part {i}: {} bytes",
                bytes.len()
            );
            assert_eq!(
                rest["part"],
                serde_json::json!({"index": i + 1, "of": parts.len()})
            );
            events.extend(mine);
            // Apart from its events and its place, a part is the whole record.
            let obj = rest.as_object_mut().unwrap();
            obj.remove("part");
            obj.remove("events");
            let mut expected = whole.clone();
            expected.as_object_mut().unwrap().remove("events");
            assert_eq!(rest, expected);
        }
        assert_eq!(
            &Value::from(events),
            &whole["events"],
            "every event once, in order"
        );
        parsed
    }

    #[test]
    fn oversized_records_are_split_into_parts_that_fit() {
        let topics: Topics = vec![Arc::from("page.viewed"), Arc::from("order.placed")].into();
        let evs = events(&[100; 50]);
        let r = record(&evs, &topics);
        let whole = r.to_json();
        assert_eq!(r.to_json_parts(whole.len()), vec![whole.clone()]);
        let parts = check_parts(&r, 1_000);
        assert!(parts.len() > 5, "{}", parts.len());
        assert_eq!(
            parts[0]["counts"],
            serde_json::json!({"page.viewed": 25, "order.placed": 25})
        );
        assert_eq!(parts[0]["dropped_events"], 3);
        // An event larger than the limit is a part of its own.
        let evs = events(&[10, 5_000, 10, 10]);
        let parts = check_parts(&record(&evs, &topics), 1_000);
        assert_eq!(
            parts
                .iter()
                .map(|p| p["events"].as_array().unwrap().len())
                .collect::<Vec<_>>(),
            [1, 1, 2]
        );
    }

    proptest::proptest! {
        /// Stored fingerprints (remembered sessions) must keep their values: the one-pass
        /// hash equals SipHash-1-3 fed the source and the id in two writes, at every id
        /// length, on both sides of the stack copy's limit.
        #[test]
        fn a_fingerprint_is_siphash_of_the_source_then_the_id(source in proptest::num::u16::ANY, id in "[a-z0-9é-]{0,70}") {
            let mut h = SipHasher13::new_with_keys(FINGERPRINT_KEYS.0, FINGERPRINT_KEYS.1);
            h.write(&source.to_le_bytes());
            h.write(id.as_bytes());
            proptest::prop_assert_eq!(fingerprint(source, &id), h.finish128().as_u128());
        }
    }

    /// Values of the two-write form before the one-pass one, for the stored fingerprints.
    #[test]
    fn a_fingerprint_has_not_changed() {
        assert_eq!(
            (fingerprint(0, "pv-3"), fingerprint(2, &"x".repeat(100))),
            (
                0xec0d6d8176dcdd7820889e3cf48a2f56,
                0x8739483f8060b544848a5d0e826e5527
            )
        );
    }

    proptest::proptest! {
        #[test]
        fn parts_hold_every_event_once_and_fit(
            sizes in proptest::collection::vec(0usize..600, 0..40),
            limit in 300usize..4_000,
        ) {
            let topics: Topics = vec![Arc::from("a"), Arc::from("b")].into();
            let evs = events(&sizes);
            check_parts(&record(&evs, &topics), limit);
        }
    }

    proptest::proptest! {
        #[test]
        fn times_render_like_chrono(ms in -70_000_000_000_000i64..260_000_000_000_000) {
            let mut fast = Vec::new();
            push_json_time(&mut fast, ms);
            let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            let expected = format!("\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
            proptest::prop_assert_eq!(String::from_utf8(fast).unwrap(), expected);
        }
    }

    #[test]
    fn time_rendering_edges() {
        for (ms, text) in [
            (0, "\"1970-01-01T00:00:00.000Z\""),
            (-1, "\"1969-12-31T23:59:59.999Z\""),
            (951_782_400_000, "\"2000-02-29T00:00:00.000Z\""),
            (-62_135_596_800_000, "\"0001-01-01T00:00:00.000Z\""),
            (253_402_300_799_999, "\"9999-12-31T23:59:59.999Z\""),
            (253_402_300_800_000, "\"+10000-01-01T00:00:00.000Z\""),
            (i64::MAX, "9223372036854775807"),
        ] {
            let mut out = Vec::new();
            push_json_time(&mut out, ms);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{ms}");
        }
    }

    #[test]
    fn journey_id_is_stable_and_separates_fields() {
        let id = JourneyId::new("customer-journey", "c-1", 1_767_600_000_000);
        assert_eq!(
            id,
            JourneyId::new("customer-journey", "c-1", 1_767_600_000_000)
        );
        assert_eq!(id.to_string().len(), 32);
        for id in [
            id,
            JourneyId(0),
            JourneyId(u128::MAX),
            JourneyId(0xabc << 64),
        ] {
            let mut hex = Vec::new();
            id.push_hex(&mut hex);
            assert_eq!(String::from_utf8(hex).unwrap(), format!("{id}"));
        }
        assert_ne!(JourneyId::new("ab", "c", 0), JourneyId::new("a", "bc", 0));
        assert_ne!(
            id,
            JourneyId::new("customer-journey", "c-1", 1_767_600_000_001)
        );
        // Pinned so a change of the hash (which would change every published id) is
        // noticed.
        assert_eq!(JourneyId::new("t", "k", 0).to_string(), JOURNEY_ID_T_K_0);
    }

    const JOURNEY_ID_T_K_0: &str = "6554f0da4c42a10e907c9238bc7e595f";

    #[test]
    fn json_strings_are_escaped() {
        let mut out = Vec::new();
        push_json_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(String::from_utf8(out).unwrap(), r#""a\"b\\c\nd\u0001é""#);
        let value: serde_json::Value = serde_json::from_str(r#""a\"b\\c\nd\u0001é""#).unwrap();
        assert_eq!(value, "a\"b\\c\nd\u{1}é");
    }

    proptest::proptest! {
        /// Any string, escapes at any position of the 8-byte words: the same JSON
        /// value back, and the escapes serde_json would write.
        #[test]
        fn json_strings_round_trip_through_serde(s in "[a-z\"\\\\\u{0}-\u{1f}é\u{7f}]{0,40}") {
            let mut out = Vec::new();
            push_json_str(&mut out, &s);
            let back: String = serde_json::from_slice(&out).unwrap();
            proptest::prop_assert_eq!(&back, &s);
            let theirs = serde_json::to_string(&s).unwrap();
            proptest::prop_assert_eq!(out.len(), theirs.len());
        }
    }

    #[test]
    fn times_render_as_rfc3339_millis_utc() {
        let mut out = Vec::new();
        push_json_time(&mut out, 1_767_600_000_123);
        push_json_time(&mut out, -1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""2026-01-05T08:00:00.123Z""1969-12-31T23:59:59.999Z""#
        );
    }

    /// Chunks written before the id's tag existed read back, and the tag read back is
    /// the id's, so a read-back event is found as a duplicate.
    #[test]
    fn an_event_is_stored_as_its_six_fields_and_reads_back_with_its_tag() {
        let e = RecordEvent::new(2, 7, 9, -5, Some("e-1".into()), "{}".into());
        let fields = (2u16, 7u32, 9u64, -5i64, Some("e-1"), "{}");
        let bytes = postcard::to_allocvec(&e).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&fields).unwrap());
        let back: RecordEvent = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, e);
        assert!(back.is(2, "e-1", id_tag("e-1")));
        assert!(!back.is(1, "e-1", id_tag("e-1")) && !back.is(2, "e-2", id_tag("e-2")));
        // An id too long to be kept inline is stored and read back the same way.
        let long = "order-2026-01-05-000000042-payment";
        let e = RecordEvent::new(2, 7, 9, -5, Some(long.into()), "{}".into());
        let bytes = postcard::to_allocvec(&e).unwrap();
        assert_eq!(
            bytes,
            postcard::to_allocvec(&(2u16, 7u32, 9u64, -5i64, Some(long), "{}")).unwrap()
        );
        let back: RecordEvent = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((back.id(), &back), (Some(long), &e));
        // What an open event costs, before its payload's bytes (the id is inline).
        assert_eq!(std::mem::size_of::<RecordEvent>(), 64);
    }

    #[test]
    fn late_arrival_after_end_of_input_has_null_watermark() {
        let late = LateArrival {
            topic: "a".into(),
            source: 0,
            partition: 1,
            offset: 2,
            key: "k".into(),
            id: None,
            time: 0,
            watermark: i64::MAX,
            lateness_ms: i64::MAX,
            would_join: None,
        };
        assert_eq!(
            String::from_utf8(late.to_json()).unwrap(),
            r#"{"kind":"late_arrival","topic":"a","partition":1,"offset":2,"key":"k","id":null,"time":"1970-01-01T00:00:00.000Z","watermark":null,"lateness_ms":null,"would_join":null}"#
        );
    }
}
