//! The `session` correlation kind (customer journeys): per key, all sources merged,
//! a session is a maximal run of events whose consecutive event times are at most
//! `gap` apart; its window is `[first time, last time + gap)`.
//!
//! Rules (docs/semantics.md, "Correlation: session", gives the reasons):
//! - The watermark `W` means every event older than `W` has arrived; an event at
//!   exactly `W` is on time. A session can still be joined by an event at its window
//!   end (exactly `gap` apart joins), so it closes — one journey, state dropped — once
//!   `W > end + grace`; `W = i64::MAX` (end of input) closes everything.
//! - An event joins every open session of its key it touches (`first − gap ≤ t ≤
//!   last + gap`), merging two of them when it bridges them; such an event is never
//!   late, however old. An event touching no open session starts one, unless that new
//!   session would already be due: then it is late.
//! - An event touching an emitted session that is still remembered is late, with
//!   `would_join` naming it (the earliest one when it touches two), even if it also
//!   touches an open session: a published journey is never amended, and journeys of a
//!   key stay more than `gap` apart, i.e. they are exactly the sessions of the events
//!   they contain (within the retention limit below).
//! - Emitted sessions are remembered (window, id, event-id fingerprints) until
//!   `W > end + grace + retention` (retention defaults to `gap`). As long as no event
//!   arrives more than `grace + retention` behind the watermark, the journeys of a key
//!   are exactly the sessions of the events they contain. Beyond that an old event
//!   that touches an open session still joins it (Flink's rule for merging windows),
//!   even if it also touches a forgotten journey.
//! - De-duplication: a (source, id) already accepted into an open or remembered
//!   session of the same key is a duplicate. It is checked before lateness.
//! - Watermark work touches only due sessions: two ordered timer sets, never a scan
//!   of the keys. Per-key state is a [`KeyState`] (serde) that a state store can
//!   persist and [`Checkpointed::restore_key`] can load back.
//! - Emission order on one watermark: by (window end, key, window start) — with
//!   `max_duration`, by (close deadline, key, window start), see below.
//!
//! `max_duration` (`M`, optional, at least `gap`) splits endless sessions. A session
//! never spans `M` or more of event time: an event *fits* a session when adding it
//! keeps `last − first < M`. An event joins the session whose range contains it, else
//! the session just before it if it touches and fits it, else the one just after it
//! (it bridges the two only if the merged session fits too); an event that touches
//! sessions but fits none starts a new session, even within `gap` of them.
//! So a steady stream is cut at its first event, then at the first event at or after
//! `start + M`, and so on. A split session can no longer be joined after
//! `first + M − 1`, so its window is `[first, min(last + gap, first + M))` and it
//! closes once `W > min(last + gap, first + M − 1) + grace` — possibly before its
//! `gap` runs out. Late reports likewise only name a remembered journey the event
//! would have fitted. The split depends on arrival order only through which
//! sessions exist when an event arrives, so the same input sequence always gives the
//! same journeys; consecutive journeys of a key may then be less than `gap` apart
//! (never overlapping). Journeys carry no extra field: a capped window is recognisable
//! by `end − start = M`. Emission on one watermark follows the close deadlines, so a
//! split session is emitted as if its end were `first + M − 1`. Without `M` every
//! rule above is unchanged (`M = ∞`).
//! `M < gap` is rejected: such a "session" could never last one gap, which is
//! almost certainly a unit mistake in the topology.
//!
//! Write-behind state: the per-key states live in a [`KeyCache`] (its module doc gives
//! the guarantees: what a drain reports, which keys are evicted, when the loader is
//! asked), and the runtime drives it through [`Checkpointed`]. What is particular to
//! sessions:
//! - Every mutation of a key's state (new or joined event, merge, emit, forget) marks
//!   it dirty; duplicates and late events change nothing and mark nothing. A key whose
//!   last session is forgotten leaves the cache once its stored chunks are deleted (at
//!   the next drain, if it has any), and its stored head with it.
//! - Timers stay in memory for every key, cached or evicted. An event or a due timer
//!   of an evicted key reads it back first. If the loader has nothing for an evicted
//!   key (a storage problem the runtime reports itself), the key is treated as having
//!   no state and its timers are dropped, so timers never point at missing state.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cache::{CacheState, KeyCache, Lookup, Replaced};
use super::{
    Checkpointed, FastMap, FastSet, Journey, JourneyId, LateArrival, Operator, Output, RecordEvent,
    Topics, fingerprint, id_tag,
};
use crate::decode::Event;
use crate::state::{Persist, StateError, StateWriter};

/// Longest accepted `gap`, `grace`, `retention` or `max_duration`: 100 years. Event
/// times stay within years 0000 to 9999, so `time + gap + grace + retention` can never
/// overflow.
pub const MAX_SESSION_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

fn default_true() -> bool {
    true
}

/// The `session` correlation of one topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// The topology's name; part of every journey id.
    pub topology: String,
    /// The topic of each source, by source index.
    pub sources: Vec<String>,
    /// Largest distance between consecutive events of one session (whole ms).
    pub gap: Duration,
    /// How long past its window end a session waits for out-of-order events.
    #[serde(default)]
    pub grace: Duration,
    /// How long past its close (watermark > end + grace) an emitted session is
    /// remembered for late reports (`would_join`) and de-duplication; default `gap`.
    /// Journeys are exactly the sessions of their events as long as no event arrives
    /// more than `grace + retention` behind the watermark.
    #[serde(default)]
    pub retention: Option<Duration>,
    /// Longest span of one session (at least `gap`); longer runs are split (module
    /// doc). None: unbounded.
    #[serde(default)]
    pub max_duration: Option<Duration>,
    /// Whether journeys embed each event's payload.
    #[serde(default = "default_true")]
    pub include_payload: bool,
    /// Events kept per open session (at least 1); None: unbounded.
    #[serde(default)]
    pub max_events: Option<u64>,
}

/// An invalid session configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionConfigError {
    #[error("topology `{topology}`, correlation session: `gap` must be at least 1ms, got {got:?}")]
    GapTooSmall { topology: String, got: Duration },
    #[error(
        "topology `{topology}`, correlation session: `{field}` must be at most 100 years, got {got:?}"
    )]
    TooLong {
        topology: String,
        field: &'static str,
        got: Duration,
    },
    #[error(
        "topology `{topology}`, correlation session: `max_duration` must be at least `gap` ({gap:?}), got {got:?}"
    )]
    MaxDurationBelowGap {
        topology: String,
        gap: Duration,
        got: Duration,
    },
    #[error("topology `{topology}`, correlation session: {count} sources, expected 1 to 65536")]
    SourceCount { topology: String, count: usize },
}

impl SessionConfig {
    /// Sessions of `gap` over `sources`, every other field at its topology default: no
    /// grace, retention `gap`, no `max_duration`, payloads included, no event limit.
    pub fn with_gap(topology: &str, sources: &[&str], gap: Duration) -> SessionConfig {
        SessionConfig {
            topology: topology.into(),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            gap,
            grace: Duration::ZERO,
            retention: None,
            max_duration: None,
            include_payload: true,
            max_events: None,
        }
    }

    /// Checks the configuration and makes the operator. Sub-millisecond parts of
    /// durations are dropped (event times are whole milliseconds).
    pub fn build(self) -> Result<SessionOperator, SessionConfigError> {
        let topology = &self.topology;
        if self.gap.as_millis() == 0 {
            return Err(SessionConfigError::GapTooSmall {
                topology: topology.clone(),
                got: self.gap,
            });
        }
        let retention = self.retention.unwrap_or(self.gap);
        for (field, got) in [
            ("gap", Some(self.gap)),
            ("grace", Some(self.grace)),
            ("retention", Some(retention)),
            ("max_duration", self.max_duration),
        ] {
            if let Some(got) = got
                && got > MAX_SESSION_DURATION
            {
                return Err(SessionConfigError::TooLong {
                    topology: topology.clone(),
                    field,
                    got,
                });
            }
        }
        if let Some(got) = self.max_duration
            && got.as_millis() < self.gap.as_millis()
        {
            return Err(SessionConfigError::MaxDurationBelowGap {
                topology: topology.clone(),
                gap: self.gap,
                got,
            });
        }
        if self.sources.is_empty() || self.sources.len() > usize::from(u16::MAX) + 1 {
            return Err(SessionConfigError::SourceCount {
                topology: topology.clone(),
                count: self.sources.len(),
            });
        }
        // All bounded by MAX_SESSION_DURATION above, so the casts are exact.
        let gap = self.gap.as_millis() as i64;
        let grace = self.grace.as_millis() as i64;
        let retention = self.retention.map_or(gap, |r| r.as_millis() as i64);
        let max_span = self.max_duration.map_or(i64::MAX, |m| m.as_millis() as i64);
        Ok(SessionOperator {
            topics: self.sources.into_iter().map(Arc::from).collect(),
            topology: self.topology.into(),
            gap,
            grace,
            retention,
            max_span,
            include_payload: self.include_payload,
            max_events: self.max_events.map_or(usize::MAX, |m| {
                usize::try_from(m.max(1)).unwrap_or(usize::MAX)
            }),
            watermark: i64::MIN,
            cache: KeyCache::new(),
            closes: BTreeSet::new(),
            stale: FastMap::default(),
            stale_total: 0,
            expiries: BTreeSet::new(),
        })
    }
}

/// An open session: `first ≤ last`, events in arrival order (sorted when emitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    pub first: i64,
    pub last: i64,
    pub events: Vec<RecordEvent>,
    /// Events of the session not kept: beyond `max_events` (module doc).
    pub dropped: u64,
    /// `events[..stored]` are in the key's stored chunks, the rest not yet.
    pub stored: usize,
}

impl OpenSession {
    /// A session of one event.
    pub(crate) fn new(t: i64, event: RecordEvent) -> OpenSession {
        OpenSession {
            first: t,
            last: t,
            events: vec![event],
            dropped: 0,
            stored: 0,
        }
    }

    /// The fingerprints of its events with an id. Hashed again when the session is
    /// emitted rather than kept: 16 bytes per open event (plus a vector's slack) cost
    /// more than hashing each id a second time. On the journey benchmark the hashing
    /// at emit takes 2.6% of the CPU time, and dropping the kept fingerprints (with the
    /// other savings of the same change) gave 0.96x the wall time and 6% less peak RSS.
    fn fingerprints(&self) -> impl Iterator<Item = u128> + '_ {
        self.events
            .iter()
            .filter_map(|e| e.id.as_deref().map(|id| fingerprint(e.source, id)))
    }
}

/// Appends an event to a session, growing the vector by half its size when full rather
/// than doubling it: a session's events are most of what the operator holds, and
/// doubling leaves a quarter of the room unused on average (a session of 10 events in
/// room for 16); half-size steps leave a sixth, for a few more (small) reallocations.
fn push_event(events: &mut Vec<RecordEvent>, event: RecordEvent) {
    if events.len() == events.capacity() {
        events.reserve_exact((events.capacity() / 2).max(3));
    }
    events.push(event);
}

/// What is remembered of an emitted session, for late arrivals and de-duplication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmittedSession {
    pub first: i64,
    pub last: i64,
    pub id: JourneyId,
    /// Forgotten once the watermark is past this (re-checked then, see module doc).
    pub forget_after: i64,
    /// Fingerprints of the (source, id) of its events, removed from `seen` with it.
    pub fingerprints: Vec<u128>,
}

/// Everything the operator keeps for one key.
///
/// Invariants: `open` and `emitted` are each sorted by `first`; their sessions never
/// overlap, and without `max_duration` any two of either list are more than `gap`
/// apart; every session spans less than `max_duration`; `seen`, when built, holds
/// exactly the fingerprints of the events with an id in `open` and `emitted`.
///
/// Stored form ([`Persist`]): each event is written once, in a chunk of the events new
/// at a checkpoint; the head (session bounds, remembered sessions, chunk ids) is small.
/// The stored chunks hold exactly the events of the open sessions — after an emit
/// while other sessions stay open, or after `max_events` dropped kept events, they are
/// rewritten as one chunk (`rewrite`); once no session is open they are deleted — so a
/// read-back assigns every chunked event to the open session whose bounds contain it.
/// `seen` is not stored: it follows from the rest, and is rebuilt when read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyState {
    pub open: Vec<OpenSession>,
    pub emitted: Vec<EmittedSession>,
    /// The de-duplication index, built only once the key holds more than
    /// [`SEEN_SCAN_MAX`] ids ([`KeyState::check_id`]); until then a duplicate is
    /// found by a scan of the key's events and remembered fingerprints.
    pub seen: Option<Box<FastSet<u128>>>,
    /// Ids of the stored chunks, in id order.
    pub chunks: Vec<u32>,
    /// The next chunk id (ids are never reused while the key has state).
    pub next_chunk: u32,
    /// The stored chunks hold events that are no longer open: rewrite them.
    pub rewrite: bool,
}

impl super::Inspect for KeyState {
    fn open_items(&self, _: &[u16], out: &mut Vec<super::OpenItem>) {
        out.extend(self.open.iter().map(|s| super::OpenItem {
            start: s.first,
            events: Some(s.events.len()),
            missing: Vec::new(),
        }));
    }
}

/// An open session as its key's head stores it: its events are in the chunks.
#[derive(Serialize, Deserialize)]
struct StoredSession {
    first: i64,
    last: i64,
    dropped: u64,
    /// How many of the chunks' events are this session's (a consistency check).
    events: u64,
}

/// A [`KeyState`]'s head: borrowed from the state when written, owned when read back.
#[derive(Serialize, Deserialize)]
struct Head<'a> {
    open: Vec<StoredSession>,
    emitted: Cow<'a, [EmittedSession]>,
    chunks: Cow<'a, [u32]>,
    next_chunk: u32,
}

impl Persist for KeyState {
    const CHUNKED: bool = true;

    fn write(&mut self, w: &mut StateWriter<'_>) -> Result<(), StateError> {
        // Emitting a session with stored events sets `rewrite`, so once no session is
        // open every chunk goes here too.
        if self.rewrite {
            for id in self.chunks.drain(..) {
                w.delete_chunk(id);
            }
            for s in &mut self.open {
                s.stored = 0;
            }
            self.rewrite = false;
        }
        let fresh: Vec<&RecordEvent> = self
            .open
            .iter()
            .flat_map(|s| &s.events[s.stored..])
            .collect();
        if !fresh.is_empty() {
            let id = self.next_chunk;
            w.chunk(id, &fresh)?;
            self.chunks.push(id);
            // After 2³² checkpoints that touched one key; ids only need to differ from
            // the few live ones, and a chunk is rewritten long before its id comes back.
            self.next_chunk = id.wrapping_add(1);
            for s in &mut self.open {
                s.stored = s.events.len();
            }
        }
        if self.is_empty() {
            w.delete();
            return Ok(());
        }
        w.head(&Head {
            open: self
                .open
                .iter()
                .map(|s| StoredSession {
                    first: s.first,
                    last: s.last,
                    dropped: s.dropped,
                    events: s.events.len() as u64,
                })
                .collect(),
            emitted: Cow::Borrowed(&self.emitted),
            chunks: Cow::Borrowed(&self.chunks),
            next_chunk: self.next_chunk,
        })
    }

    fn read(head: &[u8], chunks: &[(u32, Vec<u8>)]) -> Result<Self, String> {
        let head: Head<'_> = postcard::from_bytes(head).map_err(|e| e.to_string())?;
        let ids: Vec<u32> = chunks.iter().map(|(id, _)| *id).collect();
        if ids[..] != *head.chunks {
            return Err(format!(
                "the head lists chunks {:?}, the store holds {ids:?}",
                head.chunks
            ));
        }
        let mut open: Vec<OpenSession> = head
            .open
            .iter()
            .map(|s| OpenSession {
                first: s.first,
                last: s.last,
                events: Vec::new(),
                dropped: s.dropped,
                stored: 0,
            })
            .collect();
        for (id, bytes) in chunks {
            let events: Vec<RecordEvent> =
                postcard::from_bytes(bytes).map_err(|e| format!("chunk {id}: {e}"))?;
            for e in events {
                let i = open.partition_point(|s| s.first <= e.time);
                match i.checked_sub(1).map(|i| &mut open[i]) {
                    Some(s) if e.time <= s.last => s.events.push(e),
                    _ => {
                        return Err(format!(
                            "chunk {id} holds an event at {} in no open session",
                            e.time
                        ));
                    }
                }
            }
        }
        for (s, stored) in open.iter_mut().zip(&head.open) {
            if s.events.len() as u64 != stored.events {
                return Err(format!(
                    "the session from {} has {} events in the chunks, the head says {}",
                    s.first,
                    s.events.len(),
                    stored.events
                ));
            }
            s.stored = s.events.len();
        }
        let mut state = KeyState {
            open,
            emitted: head.emitted.into_owned(),
            seen: None,
            chunks: head.chunks.into_owned(),
            next_chunk: head.next_chunk,
            rewrite: false,
        };
        if state.ids() > SEEN_SCAN_MAX {
            state.build_seen();
        }
        Ok(state)
    }
}

/// A key holding at most this many ids (open events and remembered fingerprints) finds
/// duplicates by scanning them rather than in a hash set: a set costs about 30 bytes per
/// id and a hundred per key, which is most of a typical session's overhead beyond its
/// events (`cargo bench --bench memory`), while a scan of a few dozen ids compares the
/// 16-bit tags kept in the events (an id's bytes only on a tag match) and the remembered
/// fingerprints. Beyond it, a set keeps each check O(1) for a key with a huge session;
/// it stays until the key's state goes, even if the key shrinks again.
const SEEN_SCAN_MAX: usize = 32;

impl KeyState {
    /// Whether `(source, id)` is already in an open or remembered session of the key.
    /// Its fingerprint is computed only when needed: open events compare their ids
    /// themselves.
    fn check_id(&self, source: u16, id: &str) -> IdCheck {
        if let Some(seen) = &self.seen {
            return if seen.contains(&fingerprint(source, id)) {
                IdCheck::Duplicate
            } else {
                IdCheck::New { scanned: 0 }
            };
        }
        let (mut scanned, tag) = (0, id_tag(id));
        for e in self.open.iter().flat_map(|s| &s.events) {
            if e.is(source, id, tag) {
                return IdCheck::Duplicate;
            }
            scanned += usize::from(e.id.is_some());
        }
        if !self.emitted.is_empty() {
            let fp = fingerprint(source, id);
            for s in &self.emitted {
                if s.fingerprints.contains(&fp) {
                    return IdCheck::Duplicate;
                }
                scanned += s.fingerprints.len();
            }
        }
        IdCheck::New { scanned }
    }

    /// Ids the key holds: open events with an id and remembered fingerprints.
    fn ids(&self) -> usize {
        let open = self.open.iter().flat_map(|s| &s.events);
        open.filter(|e| e.id.is_some()).count()
            + self
                .emitted
                .iter()
                .map(|s| s.fingerprints.len())
                .sum::<usize>()
    }

    /// Builds the de-duplication index from the key's events and remembered sessions.
    fn build_seen(&mut self) {
        let open = self.open.iter().flat_map(|s| s.fingerprints());
        let emitted = self
            .emitted
            .iter()
            .flat_map(|s| s.fingerprints.iter().copied());
        self.seen = Some(Box::new(open.chain(emitted).collect()));
    }

    /// Indexes an event about to be added, for which [`KeyState::check_id`] scanned
    /// `scanned` ids: the index is built once the key will hold more than
    /// [`SEEN_SCAN_MAX`] ids, and then holds the event's id too.
    fn index_new(&mut self, event: &RecordEvent, scanned: usize) {
        if self.seen.is_none() && scanned >= SEEN_SCAN_MAX {
            self.build_seen();
        }
        if let (Some(seen), Some(id)) = (&mut self.seen, event.id()) {
            seen.insert(fingerprint(event.source, id));
        }
    }

    /// Takes remembered fingerprints out of the index, if the key has one.
    fn unindex(&mut self, fps: impl IntoIterator<Item = u128>) {
        if let Some(seen) = &mut self.seen {
            for fp in fps {
                seen.remove(&fp);
            }
        }
    }

    /// Starts a session of one event at index `at` of `open`.
    fn start_session(&mut self, at: usize, t: i64, event: RecordEvent, scanned: usize) {
        self.index_new(&event, scanned);
        // Most keys hold one session at a time; a first insert would reserve room for 4.
        if self.open.is_empty() {
            self.open.reserve_exact(1);
        }
        self.open.insert(at, OpenSession::new(t, event));
    }
}

/// What a key holds of an incoming event's id.
enum IdCheck {
    Duplicate,
    /// Not held; `scanned` ids were compared (0 when the key has an index).
    New {
        scanned: usize,
    },
}

impl CacheState for KeyState {
    /// A key with neither open nor remembered sessions nor stored chunks has no state
    /// (`seen` is then empty too, by the invariant). Chunks keep a key until a write
    /// has deleted them, so a key never leaves the store with chunks behind.
    fn is_empty(&self) -> bool {
        self.open.is_empty() && self.emitted.is_empty() && self.chunks.is_empty()
    }
}

/// A timer: (deadline, key, session first time). Ordered by deadline first, which
/// for close timers (`end + grace`, grace fixed) is the required emission order.
type Timer = (i64, Arc<str>, i64);

/// The running session operator; see the module doc for its rules.
#[derive(Debug)]
pub struct SessionOperator {
    topology: Box<str>,
    topics: Topics,
    gap: i64,
    grace: i64,
    retention: i64,
    /// `max_duration` in ms; `i64::MAX` when unbounded.
    max_span: i64,
    include_payload: bool,
    /// Events kept per open session.
    max_events: usize,
    /// Highest watermark seen; `i64::MIN` before the first.
    watermark: i64,
    /// The keys' states, cached over the store.
    cache: KeyCache<KeyState>,
    /// Close timers: (deadline, key, first). Every open session has exactly one whose
    /// deadline is at most its close deadline: an event that moves the session's end
    /// leaves its timer alone (moving it cost a tree removal and insertion per event),
    /// and a timer taken early is set again at the session's real deadline, so sessions
    /// still close in deadline order. A session whose start moves, or that is merged
    /// into the one before it, leaves behind a *stale* timer, whose `first` starts no
    /// session of the key; it is dropped when taken, always before the key's session
    /// closes (its deadline is at most that session's).
    closes: BTreeSet<Timer>,
    /// Stale close timers per key, and in all (so open windows are counted exactly).
    stale: FastMap<Arc<str>, usize>,
    stale_total: usize,
    /// One per remembered emitted session: (forget_after, key, first).
    expiries: BTreeSet<Timer>,
}

/// Whether the watermark is past a deadline (see the module doc for why strictly).
fn passed(deadline: i64, watermark: i64) -> bool {
    deadline < watermark || watermark == i64::MAX
}

/// The close deadline of a session: the last event time that can still join it,
/// plus grace.
fn close_deadline(gap: i64, grace: i64, max_span: i64, first: i64, last: i64) -> i64 {
    last.saturating_add(gap)
        .min(first.saturating_add(max_span - 1))
        .saturating_add(grace)
}

/// Where an event at `t` goes in a list of sessions (sorted by first, disjoint).
enum Place {
    /// Joins the session at this index.
    Join(usize),
    /// Joins none: a new session would be inserted at this index.
    New(usize),
}

/// Places an event at `t` in `list`: into the session containing `t`, else into the
/// neighbour before it, else the one after it, the first that `accepts` it (touched
/// and fits). Joining only a neighbour keeps the sessions disjoint; without
/// `max_duration` the two neighbours are the only sessions `t` can touch.
fn place<S>(
    list: &[S],
    t: i64,
    span: impl Fn(&S) -> (i64, i64),
    accepts: impl Fn(i64, i64) -> bool,
) -> Place {
    let p = list.partition_point(|s| span(s).0 <= t);
    if let Some(prev) = p.checked_sub(1).and_then(|i| list.get(i)) {
        let (first, last) = span(prev);
        if t <= last || accepts(first, last) {
            return Place::Join(p - 1);
        }
    }
    match list.get(p).map(span) {
        Some((first, last)) if accepts(first, last) => Place::Join(p),
        _ => Place::New(p),
    }
}

impl SessionOperator {
    /// The highest watermark seen.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Emitted sessions still remembered for late arrivals and duplicates.
    pub fn remembered_sessions(&self) -> usize {
        self.expiries.len()
    }

    /// The state of one key if it is cached (None for an evicted key).
    pub fn key_state(&self, key: &str) -> Option<&KeyState> {
        self.cache.cached(key)
    }

    /// Removes every timer of `key` (a scan: only for keys whose state is not there).
    fn drop_timers(&mut self, key: &str) {
        self.closes.retain(|t| &*t.1 != key);
        self.expiries.retain(|t| &*t.1 != key);
        if let Some(n) = self.stale.remove(key) {
            self.stale_total -= n;
        }
    }

    /// Notes that a close timer of `key` became stale (see [`SessionOperator::closes`]).
    fn mark_stale(&mut self, key: &Arc<str>) {
        *self.stale.entry(key.clone()).or_default() += 1;
        self.stale_total += 1;
    }

    /// A stale close timer of `key` was taken.
    fn stale_taken(&mut self, key: &str) {
        if let Some(n) = self.stale.get_mut(key) {
            *n -= 1;
            self.stale_total -= 1;
            if *n == 0 {
                self.stale.remove(key);
            }
        }
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

    /// The first event of a key without state (never seen, all of it dropped, or lost
    /// by the store): starts its first session unless that is already due.
    fn start_key(&mut self, event: Event, own_deadline: i64, out: &mut Vec<Output>) {
        if passed(own_deadline, self.watermark) {
            return self.late(event, own_deadline, None, out);
        }
        let t = event.time;
        let (key, record) = RecordEvent::split(event);
        let key: Arc<str> = Arc::from(key);
        let mut state = KeyState::default();
        state.start_session(0, t, record, 0);
        self.closes.insert((own_deadline, key.clone(), t));
        self.cache.insert(key, state);
    }

    /// Emits the open session of `key` starting at `first` (its close timer has just
    /// been taken) and starts remembering it.
    fn emit(&mut self, key: Arc<str>, first: i64, deadline: i64, out: &mut Vec<Output>) {
        let (gap, grace, max_span) = (self.gap, self.grace, self.max_span);
        let mut entry = match self.cache.get_mut(&key) {
            Lookup::Found(entry) => entry,
            Lookup::Lost => return self.drop_timers(&key),
            Lookup::New => return self.stale_taken(&key),
        };
        let Ok(i) = entry.state().open.binary_search_by_key(&first, |s| s.first) else {
            return self.stale_taken(&key);
        };
        let s = &entry.state().open[i];
        let due = close_deadline(gap, grace, max_span, s.first, s.last);
        if due != deadline {
            // Taken early: the session grew since its timer was set.
            self.closes.insert((due, key, first));
            return;
        }
        let state = entry.state_mut();
        let mut session = state.open.remove(i);
        // Its stored events would otherwise be read back into no session (or into a
        // later one that happens to span their times).
        state.rewrite |= session.stored > 0;
        session.events.sort_unstable_by_key(RecordEvent::order_key);
        let id = JourneyId::new(&self.topology, &key, first);
        let end = session
            .last
            .saturating_add(gap)
            .min(first.saturating_add(max_span));
        let forget_after = close_deadline(gap, grace, max_span, first, session.last)
            .saturating_add(self.retention);
        // Room for exactly its ids, and for one remembered session: collecting (or a
        // first insert) would reserve for 4 and grow by doubling, a third of the
        // fingerprints' room and three sessions' unused while the journey is remembered.
        let mut fingerprints = Vec::with_capacity(session.events.len());
        fingerprints.extend(session.fingerprints());
        fingerprints.shrink_to_fit();
        if state.emitted.is_empty() {
            state.emitted.reserve_exact(1);
        }
        let at = state.emitted.partition_point(|s| s.first < first);
        state.emitted.insert(
            at,
            EmittedSession {
                first,
                last: session.last,
                id,
                forget_after,
                fingerprints,
            },
        );
        self.expiries.insert((forget_after, key.clone(), first));
        out.push(Output::Journey(Journey {
            id,
            key,
            start: first,
            end,
            events: session.events,
            topics: self.topics.clone(),
            include_payload: self.include_payload,
            // Only end of input closes anything at +infinity: every session the data's
            // watermark made due was emitted by an earlier, finite watermark.
            cut_by_boundary: self.watermark == i64::MAX,
            dropped: session.dropped,
        }));
    }

    /// Forgets the emitted session of `key` starting at `first` (its expiry timer has
    /// just been taken), and the key when nothing else is left of it.
    fn forget(&mut self, key: Arc<str>, first: i64) {
        let mut entry = match self.cache.get_mut(&key) {
            Lookup::Found(entry) => entry,
            Lookup::Lost => return self.drop_timers(&key),
            Lookup::New => return,
        };
        let Ok(i) = entry
            .state()
            .emitted
            .binary_search_by_key(&first, |s| s.first)
        else {
            return;
        };
        let state = entry.state_mut();
        let session = state.emitted.remove(i);
        state.unindex(session.fingerprints);
        if state.is_empty() {
            self.cache.remove(&key);
        }
    }
}

impl Checkpointed for SessionOperator {
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
            // Its close timers may be early or stale, so they are found the slow way (a
            // restore over a key in memory is not a hot path).
            Replaced::Cached(_) | Replaced::Evicted => self.drop_timers(&key),
            Replaced::Nothing => {}
        }
        let (gap, grace, max_span) = (self.gap, self.grace, self.max_span);
        if let Some(state) = self.cache.cached(&key) {
            for s in &state.open {
                let deadline = close_deadline(gap, grace, max_span, s.first, s.last);
                self.closes.insert((deadline, key.clone(), s.first));
            }
            for s in &state.emitted {
                self.expiries.insert((s.forget_after, key.clone(), s.first));
            }
        }
    }
}

impl Operator for SessionOperator {
    fn on_event(&mut self, event: Event, watermark: i64, out: &mut Vec<Output>) {
        self.on_watermark(watermark, out);
        let (gap, grace, max_span, wm) = (self.gap, self.grace, self.max_span, self.watermark);
        let t = event.time;
        let own_deadline = close_deadline(gap, grace, max_span, t, t);

        let mut entry = match self.cache.get_mut(&event.key) {
            Lookup::Found(entry) => entry,
            Lookup::Lost => {
                self.drop_timers(&event.key);
                return self.start_key(event, own_deadline, out);
            }
            Lookup::New => return self.start_key(event, own_deadline, out),
        };

        let state = entry.state();
        let scanned = match event.id.as_deref() {
            Some(id) => match state.check_id(event.source, id) {
                IdCheck::Duplicate => {
                    out.push(Output::duplicate(event));
                    return;
                }
                IdCheck::New { scanned } => scanned,
            },
            None => 0,
        };

        let close_at = |first: i64, last: i64| close_deadline(gap, grace, max_span, first, last);
        let touches =
            |first: i64, last: i64| first.saturating_sub(gap) <= t && t <= last.saturating_add(gap);
        // Sessions never span max_span or more (always true without max_duration).
        let fits = |first: i64, last: i64| last.max(t) - first.min(t) < max_span;
        let accepts = |first: i64, last: i64| touches(first, last) && fits(first, last);
        if let Place::Join(e) = place(&state.emitted, t, |s| (s.first, s.last), accepts) {
            // The earliest session it would join: had the event come in time, the
            // merged session would have started there and kept that session's id.
            let emitted = &state.emitted[e];
            let (id, deadline) = (emitted.id, close_at(emitted.first, emitted.last));
            return self.late(event, deadline, Some(id), out);
        }

        let key = entry.key().clone();
        let i = match place(&entry.state().open, t, |s| (s.first, s.last), accepts) {
            Place::Join(i) => i,
            Place::New(at) => {
                if passed(own_deadline, wm) {
                    return self.late(event, own_deadline, None, out);
                }
                let (_, record) = RecordEvent::split(event);
                entry.state_mut().start_session(at, t, record, scanned);
                self.closes.insert((own_deadline, key, t));
                return;
            }
        };

        let state = entry.state_mut();
        let (old_first, old_last) = (state.open[i].first, state.open[i].last);
        // Only an event past the end of the session it joins can reach the next one.
        let bridges = t > old_last
            && state.open.get(i + 1).is_some_and(|next| {
                touches(next.first, next.last) && next.last - old_first < max_span
            });
        let max_events = self.max_events;
        let mut stale = 0;
        if bridges {
            let next = state.open.remove(i + 1);
            // Its timer is left to go stale.
            stale += 1;
            let session = &mut state.open[i];
            session.last = next.last;
            // Stored events first, so `stored` still counts a prefix.
            let fresh = session.events.split_off(session.stored);
            let mut next_events = next.events;
            let next_fresh = next_events.split_off(next.stored);
            session.events.extend(next_events);
            session.stored += next.stored;
            session.events.extend(fresh);
            session.events.extend(next_fresh);
            session.dropped += next.dropped;
            if session.events.len() > max_events {
                state.rewrite |= session.stored > 0;
                // Keep the earliest, deterministically; the rest is counted, and no
                // longer remembered for de-duplication.
                session.events.sort_unstable_by_key(RecordEvent::order_key);
                for gone in session.events.drain(max_events..) {
                    session.dropped += 1;
                    if let (Some(seen), Some(id)) = (&mut state.seen, &gone.id) {
                        seen.remove(&fingerprint(gone.source, id));
                    }
                }
            }
        }
        let session = &mut state.open[i];
        session.first = session.first.min(t);
        session.last = session.last.max(t);
        if session.events.len() < max_events {
            let (_, record) = RecordEvent::split(event);
            state.index_new(&record, scanned);
            push_event(&mut state.open[i].events, record);
        } else {
            // A bot key's endless session keeps its window moving but not its events.
            session.dropped += 1;
        }
        let first = state.open[i].first;
        if first != old_first {
            // The old timer is left to go stale; a later end needs no new one.
            stale += 1;
            self.closes
                .insert((close_at(first, state.open[i].last), key.clone(), first));
        }
        for _ in 0..stale {
            self.mark_stale(&key);
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Output>) {
        self.watermark = self.watermark.max(watermark);
        let wm = self.watermark;
        // Closes first: a session emitted here may be forgotten in the same pass
        // (always at end of input).
        while self.closes.first().is_some_and(|t| passed(t.0, wm)) {
            let Some((deadline, key, first)) = self.closes.pop_first() else {
                break;
            };
            self.emit(key, first, deadline, out);
        }
        while self.expiries.first().is_some_and(|t| passed(t.0, wm)) {
            let Some((_, key, first)) = self.expiries.pop_first() else {
                break;
            };
            self.forget(key, first);
        }
    }

    fn open_windows(&self) -> usize {
        // Never below zero by construction; a miscount must not take the shard down.
        self.closes.len().saturating_sub(self.stale_total)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::engine::testkit::{MapStore, arrivals, gen_event};

    const TOPOLOGY: &str = "customer-journey";

    fn config(gap_ms: u64, grace_ms: u64) -> SessionConfig {
        SessionConfig {
            grace: Duration::from_millis(grace_ms),
            ..SessionConfig::with_gap(
                TOPOLOGY,
                &["page.viewed", "cart.updated", "order.placed"],
                Duration::from_millis(gap_ms),
            )
        }
    }

    fn op(gap_ms: u64, grace_ms: u64) -> SessionOperator {
        config(gap_ms, grace_ms).build().unwrap()
    }

    fn op_retaining(gap_ms: u64, grace_ms: u64, retention_ms: u64) -> SessionOperator {
        let mut c = config(gap_ms, grace_ms);
        c.retention = Some(Duration::from_millis(retention_ms));
        c.build().unwrap()
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

    fn op_keeping(gap_ms: u64, max_events: u64) -> SessionOperator {
        let mut c = config(gap_ms, 0);
        c.max_events = Some(max_events);
        c.build().unwrap()
    }

    #[test]
    fn events_beyond_the_limit_are_counted_not_kept() {
        let mut op = op_keeping(10, 3);
        let mut out = Vec::new();
        for o in 0..5u64 {
            op.on_event(
                ev(0, o, "k", 100 + o as i64, Some(&format!("e{o}"))),
                0,
                &mut out,
            );
        }
        // A dropped event is not remembered: its re-send is dropped again, not a duplicate.
        op.on_event(ev(0, 5, "k", 104, Some("e4")), 0, &mut out);
        assert_eq!(op.key_state("k").unwrap().open[0].events.len(), 3);
        op.on_watermark(i64::MAX, &mut out);
        let [j] = journeys(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (j.start, j.end, j.events.len(), j.dropped),
            (100, 114, 3, 3)
        );
        let v: serde_json::Value = serde_json::from_slice(&j.to_json()).unwrap();
        assert_eq!(
            (v["truncated"].as_bool(), v["dropped_events"].as_u64()),
            (Some(true), Some(3))
        );
        assert!(out.iter().all(|o| !matches!(o, Output::Duplicate { .. })));
    }

    #[test]
    fn a_merge_over_the_limit_keeps_the_earliest_events() {
        let mut op = op_keeping(30, 4);
        let mut out = Vec::new();
        for (o, t) in [(0, 100), (1, 101), (2, 102), (3, 150), (4, 151), (5, 152)] {
            op.on_event(ev(0, o, "k", t, Some(&format!("e{o}"))), 0, &mut out);
        }
        op.on_event(ev(0, 6, "k", 125, Some("e6")), 0, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        let [j] = journeys(&out)[..] else {
            panic!("{out:?}")
        };
        let offsets: Vec<u64> = j.events.iter().map(|e| e.offset).collect();
        assert_eq!((offsets, j.dropped), (vec![0, 1, 2, 3], 3));
        assert_eq!((j.start, j.end), (100, 182));
    }

    #[test]
    fn a_bot_key_with_a_million_events_stays_bounded() {
        let mut op = op_keeping(1_800_000, 1_000);
        let mut out = Vec::new();
        for o in 0..1_000_000u64 {
            let t = 1_767_600_000_000 + o as i64;
            op.on_event(
                ev((o % 3) as u16, o, "bot", t, Some(&o.to_string())),
                t - 5_000,
                &mut out,
            );
            if o % 100_000 == 0 {
                let state = op.key_state("bot").unwrap();
                assert!(state.open[0].events.len() <= 1_000);
                assert!(state.seen.as_ref().map_or(o < 32, |s| s.len() <= 1_000));
            }
        }
        assert!(out.is_empty());
        op.on_watermark(i64::MAX, &mut out);
        let [j] = journeys(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!((j.events.len(), j.dropped), (1_000, 999_000));
        assert_eq!(
            j.end - j.start,
            999_999 + 1_800_000,
            "the window covers every event"
        );
        assert_eq!(op.keys_with_state(), 0);
    }

    fn journeys(out: &[Output]) -> Vec<&Journey> {
        out.iter()
            .filter_map(|o| match o {
                Output::Journey(j) => Some(j),
                _ => None,
            })
            .collect()
    }

    fn lates(out: &[Output]) -> Vec<&LateArrival> {
        out.iter()
            .filter_map(|o| match o {
                Output::Late(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    fn offsets(j: &Journey) -> Vec<u64> {
        j.events.iter().map(|e| e.offset).collect()
    }

    fn assert_empty(op: &SessionOperator) {
        assert_eq!(op.keys_with_state(), 0);
        assert_eq!(op.open_windows(), 0);
        assert_eq!(op.remembered_sessions(), 0);
    }

    #[test]
    fn events_exactly_gap_apart_join_and_one_more_splits() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 110, None), 100, &mut out);
        op.on_event(ev(0, 2, "k", 121, None), 110, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        let js = journeys(&out);
        assert_eq!(js.len(), 2);
        assert_eq!(
            (js[0].start, js[0].end, offsets(js[0])),
            (100, 120, vec![0, 1])
        );
        assert_eq!(
            (js[1].start, js[1].end, offsets(js[1])),
            (121, 131, vec![2])
        );
        assert_empty(&op);
    }

    #[test]
    fn closes_only_once_the_watermark_is_past_end_plus_grace() {
        let mut op = op(10, 5);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_watermark(115, &mut out);
        assert!(out.is_empty());
        assert_eq!(op.open_windows(), 1);
        // An event at exactly the window end still joins at watermark 115.
        op.on_event(ev(0, 1, "k", 110, None), 115, &mut out);
        op.on_watermark(125, &mut out);
        assert!(out.is_empty());
        op.on_watermark(126, &mut out);
        let js = journeys(&out);
        assert_eq!(
            (js[0].start, js[0].end, offsets(js[0])),
            (100, 120, vec![0, 1])
        );
    }

    #[test]
    fn bridging_event_merges_two_open_sessions() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_event(ev(1, 0, "k", 120, None), i64::MIN, &mut out);
        assert_eq!(op.open_windows(), 2);
        op.on_event(ev(2, 0, "k", 110, None), i64::MIN, &mut out);
        assert_eq!(op.open_windows(), 1);
        op.on_watermark(i64::MAX, &mut out);
        let js = journeys(&out);
        assert_eq!(js.len(), 1);
        assert_eq!((js[0].start, js[0].end), (100, 130));
        let sources: Vec<u16> = js[0].events.iter().map(|e| e.source).collect();
        assert_eq!(sources, vec![0, 2, 1]);
    }

    #[test]
    fn event_older_than_watermark_joining_an_open_session_is_not_late() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 108, None), i64::MIN, &mut out);
        // Watermark 115: window [100, 118) still open; an event at 95 joins it.
        op.on_event(ev(0, 2, "k", 95, None), 115, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        let js = journeys(&out);
        assert_eq!(js.len(), 1);
        assert_eq!((js[0].start, offsets(js[0])), (95, vec![2, 0, 1]));
        assert!(lates(&out).is_empty());
    }

    #[test]
    fn identical_times_are_ordered_by_source_partition_offset() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        let mut a = ev(2, 5, "k", 100, None);
        a.partition = 1;
        let mut b = ev(0, 9, "k", 100, None);
        b.partition = 3;
        let mut c = ev(0, 2, "k", 100, None);
        c.partition = 3;
        let d = ev(1, 1, "k", 100, None);
        for e in [a, b, c, d] {
            op.on_event(e, i64::MIN, &mut out);
        }
        op.on_watermark(i64::MAX, &mut out);
        let order: Vec<(u16, u32, u64)> = journeys(&out)[0]
            .events
            .iter()
            .map(|e| (e.source, e.partition, e.offset))
            .collect();
        assert_eq!(order, vec![(0, 3, 2), (0, 3, 9), (1, 0, 1), (2, 1, 5)]);
    }

    #[test]
    fn late_event_bridging_two_emitted_sessions_names_the_earlier() {
        let mut op = op_retaining(10, 0, 50);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 120, None), i64::MIN, &mut out);
        op.on_watermark(131, &mut out);
        let ids: Vec<JourneyId> = journeys(&out).iter().map(|j| j.id).collect();
        assert_eq!(ids.len(), 2);
        out.clear();
        op.on_event(ev(1, 7, "k", 110, Some("x")), 131, &mut out);
        assert_eq!(
            out,
            vec![Output::Late(LateArrival {
                topic: "cart.updated".into(),
                source: 1,
                partition: 0,
                offset: 7,
                key: "k".into(),
                id: Some("x".into()),
                time: 110,
                watermark: 131,
                // The first session closed once the watermark passed 110.
                lateness_ms: 21,
                would_join: Some(ids[0]),
            })]
        );
        op.on_watermark(i64::MAX, &mut out);
        assert_empty(&op);
    }

    #[test]
    fn event_touching_a_remembered_session_is_late_even_when_its_own_window_is_not() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_watermark(111, &mut out);
        let id = journeys(&out)[0].id;
        out.clear();
        // Own window [108, 118) is not due at 111, but it would have joined [100, 110).
        op.on_event(ev(0, 1, "k", 108, None), 111, &mut out);
        let l = lates(&out);
        assert_eq!(
            (l.len(), l[0].would_join, l[0].lateness_ms),
            (1, Some(id), 1)
        );
        out.clear();
        // After the memory (gap past the close) an event there opens a new session
        // only if not due itself; this one is due, so it is late without would_join.
        op.on_watermark(121, &mut out);
        assert_eq!(op.remembered_sessions(), 0);
        op.on_event(ev(0, 2, "k", 105, None), 121, &mut out);
        let l = lates(&out);
        assert_eq!((l[0].would_join, l[0].lateness_ms), (None, 6));
        assert_empty(&op);
    }

    #[test]
    fn beyond_retention_an_old_event_joins_the_open_session_it_touches() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        // [100, 110) closes after 110 and is forgotten after 120 (retention = gap).
        op.on_event(ev(0, 1, "k", 118, None), 121, &mut out);
        assert_eq!(op.remembered_sessions(), 0);
        // 11 behind the watermark, more than grace + retention: it would have joined
        // the forgotten journey, but it touches the open [118, 128) and joins it.
        op.on_event(ev(0, 2, "k", 109, None), 121, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        let windows: Vec<(i64, i64, Vec<u64>)> = journeys(&out)
            .iter()
            .map(|j| (j.start, j.end, offsets(j)))
            .collect();
        assert_eq!(windows, vec![(100, 110, vec![0]), (109, 128, vec![2, 1])]);
    }

    #[test]
    fn duplicates_are_counted_while_their_session_is_remembered() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, Some("a")), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 100, Some("a")), i64::MIN, &mut out);
        // Same id on another source or key is not a duplicate.
        op.on_event(ev(1, 2, "k", 101, Some("a")), i64::MIN, &mut out);
        op.on_event(ev(0, 3, "j", 100, Some("a")), i64::MIN, &mut out);
        op.on_watermark(111, &mut out);
        op.on_event(ev(0, 4, "k", 100, Some("a")), 111, &mut out);
        let dups: Vec<u64> = out
            .iter()
            .filter_map(|o| match o {
                Output::Duplicate { offset, id, .. } => {
                    assert_eq!(id, "a");
                    Some(*offset)
                }
                _ => None,
            })
            .collect();
        assert_eq!(dups, vec![1, 4]);
        out.clear();
        op.on_watermark(122, &mut out);
        op.on_event(ev(0, 5, "k", 100, Some("a")), 122, &mut out);
        assert_eq!(lates(&out).len(), 1);
        assert_empty(&op);
    }

    #[test]
    fn emission_order_is_end_key_start_and_state_empties_at_end_of_input() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        for (o, key, t) in [(0, "b", 100), (1, "a", 100), (2, "a", 50), (3, "c", 90)] {
            op.on_event(ev(0, o, key, t, None), i64::MIN, &mut out);
        }
        assert_eq!(op.open_windows(), 4);
        op.on_watermark(i64::MAX, &mut out);
        let order: Vec<(i64, &str, i64)> = journeys(&out)
            .iter()
            .map(|j| (j.end, &*j.key, j.start))
            .collect();
        assert_eq!(
            order,
            vec![
                (60, "a", 50),
                (100, "c", 90),
                (110, "a", 100),
                (110, "b", 100)
            ]
        );
        assert_empty(&op);
    }

    #[test]
    fn journey_json_shape() {
        let mut op = op(1_800_000, 0);
        let mut out = Vec::new();
        let t0 = 1_767_600_000_000;
        let mut a = ev(0, 3, "c-1", t0, Some("e1"));
        a.payload = r#"{"customer_id":"c-1","ts":1767600000000}"#.into();
        let mut b = ev(2, 4, "c-1", t0 + 60_000, None);
        b.partition = 1;
        b.payload = r#"{"customer_id":"c-1","total":9.5}"#.into();
        op.on_event(b, i64::MIN, &mut out);
        op.on_event(a, i64::MIN, &mut out);
        op.on_watermark(t0 + 7_200_000, &mut out);
        let j = journeys(&out)[0];
        assert!(!j.cut_by_boundary, "closed by the data's watermark");
        let id = JourneyId::new(TOPOLOGY, "c-1", t0);
        assert_eq!(j.id, id);
        let expected = format!(
            concat!(
                r#"{{"kind":"journey","id":"{}","key":"c-1","#,
                r#""window":{{"start":"2026-01-05T08:00:00.000Z","end":"2026-01-05T08:31:00.000Z"}},"#,
                r#""events":[{{"topic":"page.viewed","partition":0,"offset":3,"id":"e1","#,
                r#""time":"2026-01-05T08:00:00.000Z","payload":{{"customer_id":"c-1","ts":1767600000000}}}},"#,
                r#"{{"topic":"order.placed","partition":1,"offset":4,"id":null,"#,
                r#""time":"2026-01-05T08:01:00.000Z","payload":{{"customer_id":"c-1","total":9.5}}}}],"#,
                r#""counts":{{"page.viewed":1,"cart.updated":0,"order.placed":1}}}}"#
            ),
            id
        );
        assert_eq!(String::from_utf8(j.to_json()).unwrap(), expected);
        let mut without = j.clone();
        without.include_payload = false;
        let value: serde_json::Value = serde_json::from_slice(&without.to_json()).unwrap();
        assert_eq!(value["events"][0].get("payload"), None);
        assert_eq!(value["events"][1]["topic"], "order.placed");

        // A session still open at the end of input is closed by it, and says so.
        op.on_event(ev(0, 5, "c-2", t0 + 7_300_000, None), i64::MIN, &mut out);
        out.clear();
        op.on_watermark(i64::MAX, &mut out);
        let cut = journeys(&out)[0];
        assert!(cut.cut_by_boundary);
        let text = String::from_utf8(cut.to_json()).unwrap();
        assert!(
            text.ends_with(r#""counts":{"page.viewed":1,"cart.updated":0,"order.placed":0},"cut_by_replay_boundary":true}"#),
            "{text}"
        );
    }

    #[test]
    fn late_arrival_json_shape() {
        let late = LateArrival {
            topic: "cart.updated".into(),
            source: 1,
            partition: 2,
            offset: 41,
            key: "c-\"7\"".into(),
            id: Some("e-9".into()),
            time: 1_767_600_000_000,
            watermark: 1_767_603_600_250,
            lateness_ms: 1_800_250,
            would_join: Some(JourneyId(0xabc)),
        };
        assert_eq!(
            String::from_utf8(late.to_json()).unwrap(),
            concat!(
                r#"{"kind":"late_arrival","topic":"cart.updated","partition":2,"offset":41,"#,
                r#""key":"c-\"7\"","id":"e-9","time":"2026-01-05T08:00:00.000Z","#,
                r#""watermark":"2026-01-05T09:00:00.250Z","lateness_ms":1800250,"#,
                r#""would_join":"00000000000000000000000000000abc"}"#
            )
        );
    }

    #[test]
    fn watermark_never_goes_back() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        op.on_watermark(500, &mut out);
        op.on_event(ev(0, 0, "k", 100, None), 0, &mut out);
        assert_eq!(op.watermark(), 500);
        assert_eq!(lates(&out)[0].watermark, 500);
    }

    #[test]
    fn key_state_round_trips_through_the_store_and_restore() {
        let mut a = op(10, 0);
        let mut b = op(10, 0);
        let mut out = Vec::new();
        for (o, t) in [(0, 100), (1, 130), (2, 105)] {
            a.on_event(ev(0, o, "k", t, Some(&o.to_string())), i64::MIN, &mut out);
        }
        a.on_watermark(116, &mut out);
        let store = MapStore::default();
        let mut written = a.key_state("k").unwrap().clone();
        store.put("k", &mut written);
        let state: KeyState = store.stored("k").unwrap();
        assert_eq!(state, written);
        assert_eq!(state.seen, a.key_state("k").unwrap().seen);
        b.on_watermark(116, &mut out);
        b.restore_key("k", state);
        let tail = |op: &mut SessionOperator| {
            let mut out = Vec::new();
            op.on_event(ev(0, 3, "k", 101, Some("1")), 116, &mut out);
            op.on_event(ev(0, 4, "k", 135, None), 116, &mut out);
            op.on_watermark(i64::MAX, &mut out);
            out
        };
        let (out_a, out_b) = (tail(&mut a), tail(&mut b));
        assert_eq!(out_a, out_b);
        // "1" is the id of the open session's event at 130: a duplicate.
        assert_eq!(out_a.len(), 2);
        assert!(matches!(&out_a[0], Output::Duplicate { offset: 3, .. }));
        assert_eq!(offsets(journeys(&out_a)[0]), vec![1, 4]);
        assert_empty(&a);
        // b's key came with a stored chunk: it leaves once a drain has deleted it.
        store.drain(&mut b, 1);
        assert_empty(&b);
        assert!(store.is_empty());
    }

    #[test]
    fn each_event_is_stored_once_and_chunks_hold_exactly_the_open_events() {
        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        let chunks = |store: &MapStore| -> Vec<u32> {
            store
                .chunks
                .lock()
                .unwrap()
                .keys()
                .map(|(_, id)| *id)
                .collect()
        };
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 103, None), i64::MIN, &mut out);
        store.drain(&mut op, 1);
        op.on_event(ev(0, 2, "k", 106, None), i64::MIN, &mut out);
        store.drain(&mut op, 2);
        // Two chunks: the first two events, then the third alone.
        assert_eq!(chunks(&store), vec![0, 1]);
        let second = store.chunks.lock().unwrap()[&("k".to_string(), 1)].clone();
        let second: Vec<RecordEvent> = postcard::from_bytes(&second).unwrap();
        assert_eq!(second.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![2]);
        // A second session of the key, then the first one closes while it stays open:
        // what is left is rewritten as one chunk holding only the open session's events.
        op.on_event(ev(0, 3, "k", 140, None), i64::MIN, &mut out);
        store.drain(&mut op, 3);
        assert_eq!(chunks(&store), vec![0, 1, 2]);
        op.on_watermark(117, &mut out);
        assert_eq!(journeys(&out).len(), 1);
        store.drain(&mut op, 4);
        assert_eq!(chunks(&store), vec![3]);
        let read: KeyState = store.stored("k").unwrap();
        assert_eq!(read.open, op.key_state("k").unwrap().open);
        let kept: Vec<u64> = read.open[0].events.iter().map(|e| e.offset).collect();
        assert_eq!(kept, vec![3]);
        // The last open session closes: no chunk is left, the head remembers it.
        op.on_watermark(151, &mut out);
        store.drain(&mut op, 5);
        assert_eq!(chunks(&store), Vec::<u32>::new());
        assert_eq!(store.keys(), vec!["k".to_string()]);
        // Forgotten: nothing is left at all.
        op.on_watermark(i64::MAX, &mut out);
        store.drain(&mut op, 6);
        assert!(store.is_empty());
    }

    #[test]
    fn a_read_back_that_does_not_add_up_is_an_error_not_a_guess() {
        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 103, None), i64::MIN, &mut out);
        store.drain(&mut op, 1);
        let head = store.states.lock().unwrap()["k"].clone();
        let chunk = store.chunks.lock().unwrap()[&("k".to_string(), 0)].clone();
        assert_eq!(
            KeyState::read(&head, &[]).unwrap_err(),
            "the head lists chunks [0], the store holds []"
        );
        assert_eq!(
            KeyState::read(&head, &[(0, chunk.clone()), (1, chunk)]).unwrap_err(),
            "the head lists chunks [0], the store holds [0, 1]"
        );
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: SessionConfig =
            serde_json::from_str(r#"{"topology":"t","sources":["a"],"gap":{"secs":60,"nanos":0}}"#)
                .unwrap();
        assert_eq!(
            (c.grace, c.retention, c.max_duration),
            (Duration::ZERO, None, None)
        );
        assert!(c.include_payload);
        let err = serde_json::from_str::<SessionConfig>(
            r#"{"topology":"t","sources":["a"],"gap":{"secs":60,"nanos":0},"gapp":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("unknown field `gapp`"), "{err}");
    }

    #[test]
    fn config_errors() {
        let mut c = config(0, 0);
        assert_eq!(
            c.clone().build().unwrap_err().to_string(),
            "topology `customer-journey`, correlation session: `gap` must be at least 1ms, got 0ns"
        );
        c.gap = Duration::from_secs(60);
        c.grace = MAX_SESSION_DURATION + Duration::from_secs(1);
        assert_eq!(
            c.clone().build().unwrap_err().to_string(),
            "topology `customer-journey`, correlation session: `grace` must be at most 100 years, got 3153600001s"
        );
        c.grace = Duration::ZERO;
        c.max_duration = Some(Duration::from_secs(59));
        assert_eq!(
            c.clone().build().unwrap_err().to_string(),
            "topology `customer-journey`, correlation session: `max_duration` must be at least `gap` (60s), got 59s"
        );
        c.max_duration = Some(MAX_SESSION_DURATION + Duration::from_secs(1));
        assert_eq!(
            c.clone().build().unwrap_err().to_string(),
            "topology `customer-journey`, correlation session: `max_duration` must be at most 100 years, got 3153600001s"
        );
        // Equal to the gap is allowed; sub-millisecond parts are dropped first.
        c.max_duration = Some(Duration::from_micros(60_000_999));
        assert!(c.clone().build().is_ok());
        c.max_duration = None;
        c.sources.clear();
        assert_eq!(
            c.build().unwrap_err().to_string(),
            "topology `customer-journey`, correlation session: 0 sources, expected 1 to 65536"
        );
    }

    // ---- write-behind and eviction ----

    fn reported(keys: &[(&str, bool)]) -> Vec<(String, bool)> {
        keys.iter().map(|(k, s)| (k.to_string(), *s)).collect()
    }

    #[test]
    fn drain_changes_reports_exactly_the_changed_keys() {
        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        for (o, key, t) in [(0, "a", 100), (1, "b", 100), (2, "c", 130), (3, "a", 105)] {
            op.on_event(ev(0, o, key, t, Some(&o.to_string())), i64::MIN, &mut out);
        }
        assert_eq!(
            store.drain(&mut op, 1),
            reported(&[("a", true), ("b", true), ("c", true)])
        );
        assert_eq!(store.drain(&mut op, 2), vec![]);
        // A duplicate changes nothing.
        op.on_event(ev(0, 4, "a", 101, Some("0")), 100, &mut out);
        op.on_watermark(116, &mut out);
        assert_eq!(journeys(&out).len(), 2);
        // Closing a and b changed them; c did not change.
        assert_eq!(
            store.drain(&mut op, 3),
            reported(&[("a", true), ("b", true)])
        );
        // Nor does a late event.
        op.on_event(ev(0, 5, "b", 50, None), 116, &mut out);
        assert_eq!(lates(&out).len(), 1);
        assert_eq!(store.drain(&mut op, 4), vec![]);
        // a and b are forgotten (gone), c emitted (changed); d appears and vanishes
        // between two drains: the store never had it.
        op.on_event(ev(0, 6, "d", 140, None), 116, &mut out);
        op.on_watermark(141, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(
            store.drain(&mut op, 5),
            reported(&[("a", false), ("b", false), ("c", false)])
        );
        assert!(store.keys().is_empty());
        assert_eq!(store.drain(&mut op, 6), vec![]);
        assert_eq!(store.loads(), 0);
        assert_empty(&op);
    }

    #[test]
    fn a_key_gone_and_back_between_drains_is_reported_with_its_new_state() {
        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        store.drain(&mut op, 1);
        // Emitted after 110, forgotten after 120, then a new session.
        op.on_watermark(121, &mut out);
        op.on_event(ev(0, 1, "k", 200, None), 121, &mut out);
        assert_eq!(store.drain(&mut op, 2), reported(&[("k", true)]));
        let stored: KeyState = store.stored("k").unwrap();
        assert_eq!(&stored, op.key_state("k").unwrap());
        assert_eq!(stored.open[0].first, 200);
    }

    #[test]
    fn evict_never_takes_a_dirty_or_uncommitted_key() {
        let mut op = op(10, 0);
        let mut out = Vec::new();
        for (o, key) in [(0, "a"), (1, "b"), (2, "c")] {
            op.on_event(ev(0, o, key, 100, None), i64::MIN, &mut out);
        }
        // Without a loader nothing is evicted.
        assert_eq!(op.evict(0, u64::MAX), 0);
        let store = MapStore::attached_to(&mut op);
        assert_eq!(op.evict(0, u64::MAX), 0, "all dirty");
        store.drain(&mut op, 1);
        op.on_event(ev(0, 3, "a", 105, None), i64::MIN, &mut out);
        assert_eq!(op.evict(0, 0), 0, "drained at 1, committed 0");
        assert_eq!(op.evict(0, 1), 2, "b and c; a is dirty");
        assert_eq!(op.key_state("b"), None);
        assert!(op.key_state("a").is_some());
        assert_eq!((op.cached_keys(), op.keys_with_state()), (1, 3));
        assert_eq!(store.drain(&mut op, 2), reported(&[("a", true)]));
        assert_eq!(op.evict(0, 1), 0, "a drained at 2");
        assert_eq!(op.evict(0, 2), 1);
        assert_eq!((op.cached_keys(), op.keys_with_state()), (0, 3));
        assert_eq!(store.loads(), 0);
    }

    #[test]
    fn evict_takes_the_least_recently_drained_first_and_stops_at_max_cached() {
        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "x", 100, None), i64::MIN, &mut out);
        store.drain(&mut op, 1);
        op.on_event(ev(0, 1, "y", 100, None), i64::MIN, &mut out);
        op.on_event(ev(0, 2, "z", 100, None), i64::MIN, &mut out);
        store.drain(&mut op, 2);
        // Drained again at 3, so x is now the most recent.
        op.on_event(ev(0, 3, "x", 101, None), i64::MIN, &mut out);
        store.drain(&mut op, 3);
        assert_eq!(op.evict(3, 3), 0);
        assert_eq!(op.evict(1, 3), 2);
        assert!(op.key_state("x").is_some());
        assert_eq!(op.key_state("y").or(op.key_state("z")), None);
    }

    #[test]
    fn restored_keys_are_clean_and_evictable_at_any_committed_epoch() {
        let mut a = op(10, 0);
        let mut out = Vec::new();
        a.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        let mut state = a.key_state("k").unwrap().clone();
        let mut b = op(10, 0);
        let store = MapStore::attached_to(&mut b);
        store.put("k", &mut state);
        b.restore_key("k", state);
        assert_eq!(b.evict(0, 0), 1);
        assert_eq!(store.drain(&mut b, 1), vec![]);
        b.on_watermark(i64::MAX, &mut out);
        let js = journeys(&out);
        assert_eq!((js.len(), offsets(js[0])), (1, vec![0]));
        assert_eq!(store.loads(), 1);
        assert_eq!(store.drain(&mut b, 2), reported(&[("k", false)]));
        assert_empty(&b);
    }

    #[test]
    fn restoring_an_evicted_key_replaces_its_state_and_timers() {
        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        let old = op.key_state("k").unwrap().clone();
        op.on_event(ev(0, 1, "k", 200, None), i64::MIN, &mut out);
        store.drain(&mut op, 1);
        assert_eq!(op.evict(0, 1), 1);
        op.restore_key("k", old);
        assert_eq!(
            (op.open_windows(), op.cached_keys(), op.keys_with_state()),
            (1, 1, 1)
        );
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(windows(&out), vec![(100, 110, vec![0])]);
        assert_eq!(store.loads(), 0);
        assert_empty(&op);
    }

    #[test]
    fn a_timer_of_an_evicted_key_emits_the_same_journey() {
        let feed = |op: &mut SessionOperator, out: &mut Vec<Output>| {
            op.on_event(ev(0, 0, "k", 100, Some("a")), i64::MIN, out);
            op.on_event(ev(1, 1, "k", 104, None), i64::MIN, out);
            op.on_event(ev(2, 2, "j", 150, None), i64::MIN, out);
        };
        let mut plain = op(10, 0);
        let mut want = Vec::new();
        feed(&mut plain, &mut want);
        plain.on_watermark(115, &mut want);
        plain.on_event(ev(0, 3, "k", 100, Some("a")), 115, &mut want);
        plain.on_watermark(i64::MAX, &mut want);

        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut got = Vec::new();
        feed(&mut op, &mut got);
        store.drain(&mut op, 1);
        assert_eq!(op.evict(0, 1), 2);
        assert_eq!(op.open_windows(), 2, "timers stay in memory");
        // The close timer of k reads it back; j stays evicted.
        op.on_watermark(115, &mut got);
        assert_eq!((store.loads(), op.cached_keys()), (1, 1));
        store.drain(&mut op, 2);
        assert_eq!(op.evict(0, 2), 1);
        // The duplicate is recognised from the stored fingerprints.
        op.on_event(ev(0, 3, "k", 100, Some("a")), 115, &mut got);
        op.on_watermark(i64::MAX, &mut got);
        assert_eq!(got, want);
        assert_eq!(journeys(&got).len(), 2);
        assert!(matches!(got[1], Output::Duplicate { offset: 3, .. }));
        store.drain(&mut op, 3);
        assert_empty(&op);
        assert!(store.is_empty());
    }

    #[test]
    fn new_keys_never_call_the_loader() {
        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "old", 100, None), i64::MIN, &mut out);
        store.drain(&mut op, 1);
        assert_eq!(op.evict(0, 1), 1);
        for o in 1..50 {
            op.on_event(ev(0, o, &format!("new{o}"), 100, None), i64::MIN, &mut out);
        }
        assert_eq!(store.loads(), 0);
        op.on_event(ev(0, 50, "old", 101, None), i64::MIN, &mut out);
        assert_eq!(store.loads(), 1);
        assert_eq!(op.keys_with_state(), 50);
    }

    #[test]
    fn a_missing_stored_state_means_no_state_and_drops_the_timers() {
        let mut op = op(10, 0);
        let store = MapStore::attached_to(&mut op);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "j", 100, None), i64::MIN, &mut out);
        op.on_event(ev(0, 2, "j", 200, None), i64::MIN, &mut out);
        store.drain(&mut op, 1);
        assert_eq!(op.evict(0, 1), 2);
        store.clear();
        // j's event finds nothing stored: j starts afresh, its old timers are gone.
        op.on_event(ev(0, 3, "j", 150, None), i64::MIN, &mut out);
        assert_eq!((op.open_windows(), op.keys_with_state()), (2, 2));
        // k's close timer finds nothing: no journey, no panic.
        op.on_watermark(i64::MAX, &mut out);
        let js = journeys(&out);
        assert_eq!(js.len(), 1);
        assert_eq!(
            ((*js[0].key).to_owned(), offsets(js[0])),
            ("j".into(), vec![3])
        );
        assert_empty(&op);
    }

    // ---- max_duration ----

    fn op_max(gap_ms: u64, grace_ms: u64, max_ms: u64) -> SessionOperator {
        let mut c = config(gap_ms, grace_ms);
        c.max_duration = Some(Duration::from_millis(max_ms));
        c.build().unwrap()
    }

    fn windows(out: &[Output]) -> Vec<(i64, i64, Vec<u64>)> {
        journeys(out)
            .iter()
            .map(|j| (j.start, j.end, offsets(j)))
            .collect()
    }

    #[test]
    fn max_duration_splits_at_the_first_event_that_would_not_fit() {
        let mut op = op_max(10, 0, 30);
        let mut out = Vec::new();
        for (o, t) in [(0, 0), (1, 8), (2, 16), (3, 24), (4, 30), (5, 38)] {
            op.on_event(ev(0, o, "k", t, None), i64::MIN, &mut out);
        }
        // [0, 24] cannot take 30 (30 − 0 ≥ 30): it can be joined up to 29 only, so it
        // closes once the watermark is past 29, before its gap runs out (34).
        op.on_watermark(29, &mut out);
        assert!(out.is_empty());
        op.on_watermark(30, &mut out);
        assert_eq!(windows(&out), vec![(0, 30, vec![0, 1, 2, 3])]);
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(
            windows(&out),
            vec![(0, 30, vec![0, 1, 2, 3]), (30, 48, vec![4, 5])]
        );
        assert_empty(&op);
    }

    #[test]
    fn max_duration_bridges_only_when_the_merged_session_fits() {
        for (max, want) in [
            (30, vec![(0, 30, vec![0, 2, 1])]),
            (20, vec![(0, 20, vec![0, 2]), (20, 30, vec![1])]),
        ] {
            let mut op = op_max(10, 0, max);
            let mut out = Vec::new();
            op.on_event(ev(0, 0, "k", 0, None), i64::MIN, &mut out);
            op.on_event(ev(0, 1, "k", 20, None), i64::MIN, &mut out);
            op.on_event(ev(0, 2, "k", 10, None), i64::MIN, &mut out);
            op.on_watermark(i64::MAX, &mut out);
            assert_eq!(windows(&out), want, "max_duration {max}");
        }
    }

    #[test]
    fn max_duration_late_reports_name_only_a_journey_the_event_would_fit() {
        let mut op = op_max(10, 0, 20);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 0, None), i64::MIN, &mut out);
        op.on_event(ev(0, 1, "k", 10, None), i64::MIN, &mut out);
        op.on_watermark(20, &mut out);
        let id = journeys(&out)[0].id;
        assert_eq!(windows(&out), vec![(0, 20, vec![0, 1])]);
        out.clear();
        op.on_event(ev(0, 2, "k", 19, None), 20, &mut out);
        let l = lates(&out);
        assert_eq!(
            (l.len(), l[0].would_join, l[0].lateness_ms),
            (1, Some(id), 1)
        );
        out.clear();
        // 20 touches [0, 10] but would make it span 20: it starts the next session.
        op.on_event(ev(0, 3, "k", 20, None), 20, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(windows(&out), vec![(20, 30, vec![3])]);
    }

    #[test]
    fn an_endless_session_is_cut_into_max_duration_journeys() {
        let (gap, max) = (10, 100);
        let mut op = op_max(gap, 0, max);
        let mut out = Vec::new();
        let mut wm = i64::MIN;
        for o in 0..200u64 {
            let t = (o * gap / 2) as i64;
            op.on_event(ev((o % 3) as u16, o, "k", t, None), wm, &mut out);
            wm = t;
        }
        op.on_watermark(i64::MAX, &mut out);
        let js = journeys(&out);
        assert_eq!(js.len(), 10);
        for (n, j) in js.iter().enumerate() {
            let start = n as i64 * 100;
            assert_eq!((j.start, j.end, j.events.len()), (start, start + 100, 20));
            assert_eq!(j.id, JourneyId::new(TOPOLOGY, "k", start));
        }
        let ids: BTreeSet<JourneyId> = js.iter().map(|j| j.id).collect();
        assert_eq!(ids.len(), 10);
        assert_empty(&op);
    }

    // ---- reference model and property tests ----

    type Shape = (String, i64, i64, JourneyId, Vec<(u16, u32, u64)>);

    /// Sessions of accepted events: per key, sorted chronologically, split where
    /// consecutive times are more than `gap` apart.
    fn model(gap: i64, events: &[Event]) -> Vec<Shape> {
        let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for e in events {
            by_key.entry(&e.key).or_default().push(e);
        }
        let mut sessions = Vec::new();
        for (key, mut evs) in by_key {
            evs.sort_by_key(|e| (e.time, e.source, e.partition, e.offset));
            let mut current: Vec<&Event> = Vec::new();
            for e in evs {
                if let Some(last) = current.last()
                    && e.time - last.time > gap
                {
                    sessions.push(shape(key, gap, &current));
                    current.clear();
                }
                current.push(e);
            }
            if !current.is_empty() {
                sessions.push(shape(key, gap, &current));
            }
        }
        sessions
    }

    fn shape(key: &str, gap: i64, evs: &[&Event]) -> Shape {
        let start = evs[0].time;
        let end = evs[evs.len() - 1].time + gap;
        let id = JourneyId::new(TOPOLOGY, key, start);
        let order = evs
            .iter()
            .map(|e| (e.source, e.partition, e.offset))
            .collect();
        (key.to_string(), start, end, id, order)
    }

    fn journey_shape(j: &Journey) -> Shape {
        let order = j
            .events
            .iter()
            .map(|e| (e.source, e.partition, e.offset))
            .collect();
        (j.key.to_string(), j.start, j.end, j.id, order)
    }

    struct Run {
        outputs: Vec<Output>,
        /// The most any event was behind the watermark when it arrived.
        max_behind: i64,
        /// Journeys in the order emitted, grouped by call.
        calls: Vec<Vec<Journey>>,
    }

    /// Feeds events in arrival order; the watermark after each event is the largest
    /// time seen minus `bound`; then end of input.
    fn run(op: &mut SessionOperator, arrivals: &[Event], bound: i64) -> Run {
        run_with(op, arrivals, bound, |_| {})
    }

    /// [`run`], calling `between` after every operator call.
    fn run_with(
        op: &mut SessionOperator,
        arrivals: &[Event],
        bound: i64,
        mut between: impl FnMut(&mut SessionOperator),
    ) -> Run {
        let mut outputs = Vec::new();
        let mut calls = Vec::new();
        let mut wm = i64::MIN;
        let mut max_seen = i64::MIN;
        let mut max_behind = i64::MIN;
        let mut collect = |out: Vec<Output>, outputs: &mut Vec<Output>| {
            calls.push(journeys(&out).into_iter().cloned().collect::<Vec<_>>());
            outputs.extend(out);
        };
        for e in arrivals {
            max_seen = max_seen.max(e.time);
            if wm > i64::MIN {
                max_behind = max_behind.max(wm - e.time);
            }
            let mut out = Vec::new();
            op.on_event(e.clone(), wm, &mut out);
            collect(out, &mut outputs);
            between(op);
            wm = max_seen - bound;
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
            max_behind,
            calls,
        }
    }

    /// [`run`], draining the state into `store` and evicting down to `max_cached` keys
    /// after every `every`-th operator call; returns the run and the last epoch drained.
    fn run_evicting(
        op: &mut SessionOperator,
        store: &MapStore,
        arrivals: &[Event],
        bound: i64,
        every: usize,
        max_cached: usize,
    ) -> (Run, u64) {
        let (mut calls, mut epoch) = (0, 0);
        let run = run_with(op, arrivals, bound, |op| {
            calls += 1;
            if calls % every == 0 {
                epoch += 1;
                store.drain(op, epoch);
                op.evict(max_cached, epoch);
                // Everything was just drained and committed: all of it may go.
                assert!(op.cached_keys() <= max_cached);
            }
        });
        (run, epoch)
    }

    /// The records a session operator accepts: every one without an id, and the first
    /// arrival of each (key, source, id).
    fn first_arrivals(arrivals: &[Event]) -> Vec<Event> {
        let mut first = BTreeSet::new();
        arrivals
            .iter()
            .filter(|e| match &e.id {
                Some(id) => first.insert((e.key.clone(), e.source, id.clone())),
                None => true,
            })
            .cloned()
            .collect()
    }

    /// Every record ends in exactly one journey, late report or duplicate; returns
    /// the records accepted into journeys.
    fn check_accounting(arrivals: &[Event], outputs: &[Output]) -> Vec<Event> {
        let mut fate: BTreeMap<u64, &str> = BTreeMap::new();
        let mut place = |offset: u64, what: &'static str| {
            assert_eq!(
                fate.insert(offset, what),
                None,
                "offset {offset} accounted twice"
            );
        };
        for o in outputs {
            match o {
                Output::Journey(j) => j.events.iter().for_each(|e| place(e.offset, "journey")),
                Output::Late(l) => place(l.offset, "late"),
                Output::Duplicate { offset, .. } => place(*offset, "duplicate"),
                Output::Correlation(c) => panic!("a session emits journeys, got {}", c.kind),
                Output::Unjoined { .. } | Output::OverLimit { .. } => {
                    panic!("a session never reports {o:?}")
                }
            }
        }
        assert_eq!(fate.len(), arrivals.len());
        arrivals
            .iter()
            .filter(|e| fate.get(&e.offset) == Some(&"journey"))
            .cloned()
            .collect()
    }

    /// Journeys are emitted in order; with `exact`, they are exactly the model's
    /// sessions of the accepted events, otherwise each is at least a valid session.
    fn check_journeys(gap: i64, accepted: &[Event], run: &Run, exact: bool) {
        let mut got: Vec<Shape> = journeys(&run.outputs)
            .into_iter()
            .map(journey_shape)
            .collect();
        got.sort();
        for call in &run.calls {
            let order: Vec<(i64, &str, i64)> =
                call.iter().map(|j| (j.end, &*j.key, j.start)).collect();
            assert!(order.is_sorted(), "emission order {order:?}");
        }
        if !exact {
            for j in journeys(&run.outputs) {
                let times: Vec<i64> = j.events.iter().map(|e| e.time).collect();
                assert!(times.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= gap));
                assert_eq!((j.start, j.end), (times[0], times[times.len() - 1] + gap));
                assert_eq!(j.id, JourneyId::new(TOPOLOGY, &j.key, j.start));
            }
            return;
        }
        let mut want = model(gap, accepted);
        want.sort();
        assert_eq!(got, want);
        // A re-sent record is never accepted twice.
        let mut ids = BTreeSet::new();
        for e in accepted {
            if let Some(id) = &e.id {
                assert!(
                    ids.insert((e.key.clone(), e.source, id.clone())),
                    "{id} twice"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn in_bound_disorder_matches_the_model(
            gens in prop::collection::vec(gen_event(), 0..60),
            gap in 1i64..40,
            grace in 0i64..20,
            bound in 0i64..30,
        ) {
            let arrivals = arrivals(&gens, bound, false);
            let mut op = op(gap as u64, grace as u64);
            let run = run(&mut op, &arrivals, bound);
            prop_assert!(lates(&run.outputs).is_empty());
            let accepted = check_accounting(&arrivals, &run.outputs);
            prop_assert_eq!(&accepted, &first_arrivals(&arrivals));
            check_journeys(gap, &accepted, &run, true);
            assert_empty(&op);
        }

        /// One key with up to a few hundred ids: duplicates are found by the scan, then
        /// by the index once the key passes SEEN_SCAN_MAX ids, and by an index rebuilt
        /// from the store after an eviction, alike.
        #[test]
        fn duplicates_are_found_by_the_scan_and_by_the_index_alike(
            mut gens in prop::collection::vec(gen_event(), 0..300),
            gap in 1i64..400,
            bound in 0i64..30,
            retention in 0i64..400,
            every in 1usize..80,
        ) {
            for g in &mut gens {
                g.key = 0;
            }
            let arrivals = arrivals(&gens, bound, false);
            let plain = run(&mut op_retaining(gap as u64, 0, retention as u64), &arrivals, bound);
            let accepted = check_accounting(&arrivals, &plain.outputs);
            prop_assert_eq!(&accepted, &first_arrivals(&arrivals));
            check_journeys(gap, &accepted, &plain, true);
            let mut op = op_retaining(gap as u64, 0, retention as u64);
            let store = MapStore::attached_to(&mut op);
            let evicted = run_evicting(&mut op, &store, &arrivals, bound, every, 0).0;
            prop_assert_eq!(&evicted.outputs, &plain.outputs);
        }

        #[test]
        fn late_events_are_accounted_and_journeys_stay_sessions(
            gens in prop::collection::vec(gen_event(), 0..60),
            gap in 1i64..40,
            grace in 0i64..20,
            bound in 0i64..30,
            retention in 0i64..400,
        ) {
            let arrivals = arrivals(&gens, bound, true);
            let mut op = op_retaining(gap as u64, grace as u64, retention as u64);
            let run = run(&mut op, &arrivals, bound);
            let accepted = check_accounting(&arrivals, &run.outputs);
            // The documented guarantee: exact sessions while nothing arrives more than
            // grace + retention behind the watermark.
            check_journeys(gap, &accepted, &run, run.max_behind <= grace + retention);
            for l in lates(&run.outputs) {
                prop_assert!(l.lateness_ms >= 1, "{:?}", l);
            }
            assert_empty(&op);
        }

        #[test]
        fn write_behind_and_eviction_change_no_output(
            gens in prop::collection::vec(gen_event(), 0..60),
            gap in 1i64..40,
            grace in 0i64..20,
            bound in 0i64..30,
            retention in 0i64..400,
            extra in prop::option::of(0i64..120),
            with_late in any::<bool>(),
            every in 1usize..50,
            max_cached in 0usize..5,
            max_events in prop::option::of(1u64..6),
        ) {
            let arrivals = arrivals(&gens, bound, with_late);
            let make = || {
                let mut c = config(gap as u64, grace as u64);
                c.retention = Some(Duration::from_millis(retention as u64));
                c.max_duration = extra.map(|m| Duration::from_millis((gap + m) as u64));
                c.max_events = max_events;
                c.build().unwrap()
            };
            let plain = run(&mut make(), &arrivals, bound);
            let mut op = make();
            let store = MapStore::attached_to(&mut op);
            let (cached, epoch) = run_evicting(&mut op, &store, &arrivals, bound, every, max_cached);
            prop_assert_eq!(&cached.outputs, &plain.outputs);
            // A key leaves once its chunks are deleted, at the next drain. Then nothing
            // is left behind: no key, timer, head or chunk.
            store.drain(&mut op, epoch + 1);
            assert_empty(&op);
            prop_assert!(store.is_empty());
        }

        #[test]
        fn max_duration_journeys_are_sessions_shorter_than_it(
            gens in prop::collection::vec(gen_event(), 0..60),
            gap in 1i64..40,
            grace in 0i64..20,
            bound in 0i64..30,
            extra in 0i64..120,
            with_late in any::<bool>(),
        ) {
            let max = gap + extra;
            let arrivals = arrivals(&gens, bound, with_late);
            let mut op = op_max(gap as u64, grace as u64, max as u64);
            let got = run(&mut op, &arrivals, bound);
            check_accounting(&arrivals, &got.outputs);
            for j in journeys(&got.outputs) {
                let times: Vec<i64> = j.events.iter().map(|e| e.time).collect();
                prop_assert!(times.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= gap));
                let (first, last) = (times[0], times[times.len() - 1]);
                prop_assert!(last - first < max, "{first}..{last} spans {max} or more");
                prop_assert_eq!((j.start, j.end), (first, (last + gap).min(first + max)));
                prop_assert_eq!(j.id, JourneyId::new(TOPOLOGY, &j.key, j.start));
            }
            // Emission order: close deadline (a split session's is 1 ms before its
            // end, see the module doc), key, start.
            for call in &got.calls {
                let order: Vec<(i64, &str, i64)> = call
                    .iter()
                    .map(|j| (j.end - i64::from(j.end == j.start + max), &*j.key, j.start))
                    .collect();
                prop_assert!(order.is_sorted(), "emission order {:?}", order);
            }
            if !with_late {
                prop_assert!(lates(&got.outputs).is_empty());
                let ids: BTreeSet<JourneyId> =
                    journeys(&got.outputs).iter().map(|j| j.id).collect();
                prop_assert_eq!(ids.len(), journeys(&got.outputs).len());
            }
            assert_empty(&op);
            // The same input sequence gives the same output.
            let again = run(&mut op_max(gap as u64, grace as u64, max as u64), &arrivals, bound);
            prop_assert_eq!(&again.outputs, &got.outputs);
        }

        #[test]
        fn a_max_duration_never_reached_changes_nothing(
            gens in prop::collection::vec(gen_event(), 0..60),
            gap in 1i64..40,
            grace in 0i64..20,
            bound in 0i64..30,
        ) {
            // Event times are below 400, so no session can span 1000.
            let arrivals = arrivals(&gens, bound, true);
            let plain = run(&mut op(gap as u64, grace as u64), &arrivals, bound);
            let capped = run(&mut op_max(gap as u64, grace as u64, 1000), &arrivals, bound);
            prop_assert_eq!(&capped.outputs, &plain.outputs);
        }
    }
}
