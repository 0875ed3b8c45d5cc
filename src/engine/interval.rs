//! The `interval` correlation kind: Kafka Streams / Flink interval joins, chainable.
//!
//! A chain `T0 ⋈ T1 ⋈ … ⋈ Tn` is a list of links; link `j` joins the events of its
//! `right` topic to the rows built so far, through the event of its `left` topic (a
//! topic already in the chain): `left.time − before ≤ right.time ≤ left.time + after`,
//! both ends inclusive. Per key, the rows are evaluated left-deep:
//! - rows₀ = one row per event of `T0`;
//! - rowsⱼ₊₁ = every row `r` extended by every matching event of link `j`'s right topic;
//!   a row without a match is extended by *null* when the link is `left` or `outer`
//!   (and dropped when it is `inner`); for `outer`, every right event that matches no
//!   row also forms a row of nulls and itself. A row whose left event is null matches
//!   nothing.
//!
//! Rules (docs/semantics.md, "Correlation: interval", gives the reasons):
//! - A full row without nulls is emitted eagerly, when its last event arrives (like
//!   Kafka Streams); every combination once, so many-to-many matches give several
//!   records.
//! - A row with nulls is emitted once it is decided: every null in it is final, i.e.
//!   the watermark has passed the time after which no on-time event could fill it —
//!   `left.time + after + grace` for a missing right side; `right.time + before + S +
//!   grace` for a missing left side at a link, `S` the sum of `before + after` of the
//!   links before it (a new event can still complete an upstream row that reaches it) —
//!   strictly as in every kind. It is never emitted before: never an "unmatched"
//!   record that is matched later (KAFKA-10847).
//! - An event that matched at a link keeps that fact (sticky bits in [`Held`]), so its
//!   partner leaving the state first never makes it look unmatched.
//! - An event is late when the watermark is past its time plus grace (`W > t +
//!   grace`): a row it would join may already be decided, and a published record is
//!   never amended. Late events get a report with no `would_join`.
//! - De-duplication: a (source, id) already held for the key is a duplicate.
//! - An event is kept until `W > t + H`, `H` = grace plus the sum of every link's
//!   `before + after` — by then every row it can be part of is decided. An event that
//!   leaves without having been in any record (an inner link found it no partner) is
//!   reported as [`Output::Unjoined`]: counted, never silently gone.
//!
//! Accounting: every event ends in at least one join record, or one late report, or
//! one duplicate count, or one unjoined count. Watermark work touches only keys with a
//! due timer (their earliest pending decision or departure). Per-key state lives in a
//! [`KeyCache`]; a key's rows are recomputed from its held events when it is due, so the
//! state is just the events, their flags and the rows already emitted with nulls.

use std::collections::BTreeSet;
use std::hash::Hasher as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128 as _, SipHasher13};

use super::cache::{CacheState, KeyCache, Lookup, Replaced};
use super::{
    Checkpointed, CorrelationRecord, FastSet, Inspect, JourneyId, LateArrival, OpenItem, Operator,
    Output, RecordEvent, Topics, fingerprint, push_event_json, push_json_str,
};
use crate::decode::Event;
use crate::topology::JoinType;

const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// One link of the chain, by topic name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkConfig {
    pub left: String,
    pub right: String,
    pub before: Duration,
    pub after: Duration,
    pub join_type: JoinType,
}

/// The `interval` operator's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalConfig {
    /// The topology's name; part of every record id.
    pub topology: String,
    /// The topic of each source, by source index.
    pub sources: Vec<String>,
    pub links: Vec<LinkConfig>,
    pub grace: Duration,
    pub include_payload: bool,
    /// Events held per key; an event beyond it is [`Output::OverLimit`], not held (a
    /// bot key would otherwise make every arrival join against all of its events).
    #[serde(default)]
    pub max_events: Option<u64>,
}

/// An invalid `interval` configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalConfigError {
    #[error("topology `{topology}`, correlation interval: no join")]
    NoLinks { topology: String },
    #[error(
        "topology `{topology}`, correlation interval: join {link}: `{topic}` is not a source of the topology"
    )]
    UnknownTopic {
        topology: String,
        link: usize,
        topic: String,
    },
    #[error(
        "topology `{topology}`, correlation interval: join {link}: left `{left}` must be in the chain already and right `{right}` must not"
    )]
    BadChain {
        topology: String,
        link: usize,
        left: String,
        right: String,
    },
    #[error("topology `{topology}`, correlation interval: source `{topic}` is in no join")]
    Unused { topology: String, topic: String },
    #[error(
        "topology `{topology}`, correlation interval: durations must be at most 100 years in total"
    )]
    TooLong { topology: String },
    #[error("topology `{topology}`, correlation interval: {links} joins, at most 63")]
    TooManyLinks { topology: String, links: usize },
}

/// A link in chain positions.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// Chain position of the left topic (< the right's, which is `j + 1`).
    left: usize,
    before: i64,
    after: i64,
    join_type: JoinType,
    /// The sum of `before + after` over the links before this one: how far apart in
    /// time the events of one row reaching this link can be.
    span_before: i64,
}

impl IntervalConfig {
    /// Checks the chain and makes the operator (durations in whole ms).
    pub fn build(self) -> Result<IntervalOperator, IntervalConfigError> {
        let topology = self.topology.clone();
        let first = self
            .links
            .first()
            .ok_or_else(|| IntervalConfigError::NoLinks {
                topology: topology.clone(),
            })?;
        let index = |link: usize, topic: &str| {
            self.sources.iter().position(|s| s == topic).ok_or_else(|| {
                IntervalConfigError::UnknownTopic {
                    topology: topology.clone(),
                    link,
                    topic: topic.to_owned(),
                }
            })
        };
        if self.links.len() > 63 {
            return Err(IntervalConfigError::TooManyLinks {
                topology,
                links: self.links.len(),
            });
        }
        // Chain position → source index.
        let mut chain = vec![index(0, &first.left)?];
        let mut links = Vec::new();
        let mut total = Duration::ZERO;
        for (j, l) in self.links.iter().enumerate() {
            let left = index(j, &l.left)?;
            let right = index(j, &l.right)?;
            let Some(left_pos) = chain.iter().position(|&s| s == left) else {
                return Err(IntervalConfigError::BadChain {
                    topology,
                    link: j,
                    left: l.left.clone(),
                    right: l.right.clone(),
                });
            };
            if chain.contains(&right) {
                return Err(IntervalConfigError::BadChain {
                    topology,
                    link: j,
                    left: l.left.clone(),
                    right: l.right.clone(),
                });
            }
            chain.push(right);
            links.push(Link {
                left: left_pos,
                before: l.before.as_millis() as i64,
                after: l.after.as_millis() as i64,
                join_type: l.join_type,
                span_before: total.as_millis() as i64,
            });
            total += l.before + l.after;
        }
        total += self.grace;
        if total > MAX_DURATION {
            return Err(IntervalConfigError::TooLong { topology });
        }
        if let Some(unused) = (0..self.sources.len()).find(|s| !chain.contains(s)) {
            return Err(IntervalConfigError::Unused {
                topology,
                topic: self.sources[unused].clone(),
            });
        }
        let mut position = vec![0usize; self.sources.len()];
        for (pos, &source) in chain.iter().enumerate() {
            position[source] = pos;
        }
        Ok(IntervalOperator {
            topology: self.topology.into(),
            topics: self.sources.into_iter().map(Arc::from).collect(),
            chain,
            position,
            links,
            grace: self.grace.as_millis() as i64,
            horizon: total.as_millis() as i64,
            include_payload: self.include_payload,
            max_events: self
                .max_events
                .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
            watermark: i64::MIN,
            cache: KeyCache::new(),
            timers: BTreeSet::new(),
        })
    }
}

/// An event held for joining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub event: RecordEvent,
    /// It has been in at least one emitted record.
    pub in_record: bool,
    /// Bit `j`: it has matched a right event of link `j` as that link's left side.
    /// Sticky, so that the partner leaving first (events leave at their own horizon)
    /// never makes it look unmatched.
    pub matched_as_left: u64,
    /// Bit `j`: it has matched a row at link `j` as that link's right side.
    pub matched_as_right: u64,
}

/// Everything the operator keeps for one key: its held events (arrival order), the
/// rows with nulls already emitted (by their events' positions), and its timer.
/// `seen` (the fingerprints of the held ids) is rebuilt when a state is read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredKeyState")]
pub struct KeyState {
    pub events: Vec<Held>,
    pub emitted_partial: Vec<Vec<Option<(u16, u32, u64)>>>,
    /// The key's pending timer, if any.
    pub timer: Option<i64>,
    #[serde(skip_serializing)]
    pub seen: FastSet<u128>,
}

#[derive(Deserialize)]
struct StoredKeyState {
    events: Vec<Held>,
    emitted_partial: Vec<Vec<Option<(u16, u32, u64)>>>,
    timer: Option<i64>,
}

impl From<StoredKeyState> for KeyState {
    fn from(s: StoredKeyState) -> KeyState {
        let seen = s
            .events
            .iter()
            .filter_map(|h| {
                h.event
                    .id
                    .as_deref()
                    .map(|id| fingerprint(h.event.source, id))
            })
            .collect();
        KeyState {
            events: s.events,
            emitted_partial: s.emitted_partial,
            timer: s.timer,
            seen,
        }
    }
}

impl crate::state::StoredWhole for KeyState {}

impl CacheState for KeyState {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl Inspect for KeyState {
    /// One item per held event (the join's unit of state).
    fn open_items(&self, _: &[u16], out: &mut Vec<OpenItem>) {
        out.extend(self.events.iter().map(|h| OpenItem {
            start: h.event.time,
            events: Some(1),
            missing: Vec::new(),
        }));
    }
}

/// The running `interval` operator; see the module doc for its rules.
#[derive(Debug)]
pub struct IntervalOperator {
    topology: Box<str>,
    topics: Topics,
    /// Chain position → source index.
    chain: Vec<usize>,
    /// Source index → chain position.
    position: Vec<usize>,
    /// Link `j` adds chain position `j + 1`.
    links: Vec<Link>,
    grace: i64,
    /// How long an event is kept after its time (module doc: `H`).
    horizon: i64,
    include_payload: bool,
    max_events: usize,
    watermark: i64,
    cache: KeyCache<KeyState>,
    /// One per key with held events: (when it is next due, key).
    timers: BTreeSet<(i64, Arc<str>)>,
}

fn passed(deadline: i64, watermark: i64) -> bool {
    deadline < watermark || watermark == i64::MAX
}

/// A row: per chain position, the index of its event in the key's held events.
type Row = Vec<Option<usize>>;

/// Per held event, the links at which it matched now: (as left, as right) bit sets.
type Marks = Vec<(u64, u64)>;

impl IntervalOperator {
    /// Every full row of the held events, with the time from which it is decided
    /// (`i64::MIN` for a row without nulls); and, per held event, the links at which it
    /// matched now as left and as right side (to make the sticky bits of [`Held`]).
    fn rows(&self, events: &[Held]) -> (Vec<(Row, i64)>, Marks) {
        let mut marks = vec![(0u64, 0u64); events.len()];
        let at = |pos: usize| {
            events
                .iter()
                .enumerate()
                .filter(move |(_, h)| self.position[usize::from(h.event.source)] == pos)
                .map(|(i, _)| i)
        };
        let mut rows: Vec<(Row, i64)> = at(0).map(|i| (vec![Some(i)], i64::MIN)).collect();
        for (j, link) in self.links.iter().enumerate() {
            let mut next = Vec::new();
            let rights: Vec<usize> = at(j + 1).collect();
            let mut right_matched = vec![false; rights.len()];
            for (row, decided) in &rows {
                let left = row[link.left].map(|i| events[i].event.time);
                let mut matched = false;
                if let Some(lt) = left {
                    for (k, &r) in rights.iter().enumerate() {
                        let rt = events[r].event.time;
                        if lt.saturating_sub(link.before) <= rt
                            && rt <= lt.saturating_add(link.after)
                        {
                            matched = true;
                            right_matched[k] = true;
                            if let Some(l) = row[link.left] {
                                marks[l].0 |= 1 << j;
                            }
                            marks[r].1 |= 1 << j;
                            let mut row = row.clone();
                            row.push(Some(r));
                            next.push((row, *decided));
                        }
                    }
                }
                let had_match =
                    row[link.left].is_some_and(|i| events[i].matched_as_left & (1 << j) != 0);
                if !matched && !had_match && link.join_type != JoinType::Inner {
                    let final_at = left.map_or(i64::MIN, |lt| {
                        lt.saturating_add(link.after).saturating_add(self.grace)
                    });
                    let mut row = row.clone();
                    row.push(None);
                    next.push((row, (*decided).max(final_at)));
                }
            }
            if link.join_type == JoinType::Outer {
                for (k, &r) in rights.iter().enumerate() {
                    if !right_matched[k] && events[r].matched_as_right & (1 << j) == 0 {
                        let mut row = vec![None; j + 1];
                        row.push(Some(r));
                        // A row able to reach it can still form while an event
                        // within `span_before` of its left event may arrive.
                        let final_at = events[r]
                            .event
                            .time
                            .saturating_add(link.before)
                            .saturating_add(link.span_before)
                            .saturating_add(self.grace);
                        next.push((row, final_at));
                    }
                }
            }
            rows = next;
        }
        (rows, marks)
    }

    fn row_refs(events: &[Held], row: &Row) -> Vec<Option<(u16, u32, u64)>> {
        row.iter()
            .map(|i| i.map(|i| events[i].event.at()))
            .collect()
    }

    fn render(&self, key: &str, events: &[Held], row: &Row) -> (JourneyId, Vec<u8>) {
        let mut h = SipHasher13::new_with_keys(0x6272_6169_645f_6a6f, 0x696e_5f72_6f77_7321);
        h.write(&(self.topology.len() as u64).to_le_bytes());
        h.write(self.topology.as_bytes());
        h.write(&(key.len() as u64).to_le_bytes());
        h.write(key.as_bytes());
        for at in Self::row_refs(events, row) {
            match at {
                Some((s, p, o)) => {
                    h.write(&[1]);
                    h.write(&s.to_le_bytes());
                    h.write(&p.to_le_bytes());
                    h.write(&o.to_le_bytes());
                }
                None => h.write(&[0]),
            }
        }
        let id = JourneyId(h.finish128().as_u128());
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"kind\":\"join\",\"id\":\"");
        let _ = write!(out, "{id}\",\"key\":");
        push_json_str(&mut out, key);
        out.extend_from_slice(b",\"events\":[");
        for (pos, i) in row.iter().enumerate() {
            if pos > 0 {
                out.push(b',');
            }
            let Some(i) = i else {
                out.extend_from_slice(b"null");
                continue;
            };
            push_event_json(
                &mut out,
                &self.topics[self.chain[pos]],
                &events[*i].event,
                self.include_payload,
            );
        }
        let matched = row.iter().all(Option::is_some);
        let _ = write!(out, "],\"matched\":{matched}}}");
        (id, out)
    }

    /// Emits `row`; marks its events as in a record.
    fn emit(&self, key: &Arc<str>, state: &mut KeyState, row: &Row, out: &mut Vec<Output>) {
        let (id, json) = self.render(key, &state.events, row);
        for i in row.iter().flatten() {
            state.events[*i].in_record = true;
        }
        if row.iter().any(Option::is_none) {
            state
                .emitted_partial
                .push(Self::row_refs(&state.events, row));
        }
        out.push(Output::Correlation(CorrelationRecord {
            kind: "join",
            id,
            key: key.clone(),
            json,
        }));
    }

    /// Decides what the watermark makes due for one key: emits decided rows with nulls
    /// not emitted yet, lets go of events past the horizon, and returns the key's next
    /// due time (None when it holds nothing).
    fn settle(&self, key: &Arc<str>, state: &mut KeyState, out: &mut Vec<Output>) -> Option<i64> {
        let w = self.watermark;
        let mut next = i64::MAX;
        for (row, decided) in self.rows(&state.events).0 {
            if decided == i64::MIN {
                continue; // no nulls: emitted when its last event arrived
            }
            if passed(decided, w) {
                let refs = Self::row_refs(&state.events, &row);
                if !state.emitted_partial.contains(&refs) {
                    self.emit(key, state, &row, out);
                }
            } else {
                next = next.min(decided);
            }
        }
        let horizon = self.horizon;
        let mut gone = Vec::new();
        state.events.retain(|h| {
            let leaves = passed(h.event.time.saturating_add(horizon), w);
            if leaves {
                gone.push((h.event.at(), h.in_record, h.event.id.clone()));
            }
            !leaves
        });
        for (at, in_record, id) in gone {
            if let Some(id) = &id {
                state.seen.remove(&fingerprint(at.0, id));
            }
            if !in_record {
                out.push(Output::Unjoined {
                    source: at.0,
                    partition: at.1,
                    offset: at.2,
                    key: key.to_string(),
                });
            }
            // Rows with nulls that held it can no longer recur.
            state
                .emitted_partial
                .retain(|refs| !refs.contains(&Some(at)));
        }
        for h in &state.events {
            next = next.min(h.event.time.saturating_add(horizon));
        }
        (!state.events.is_empty()).then_some(next)
    }

    fn set_timer(&mut self, key: &Arc<str>, old: Option<i64>, new: Option<i64>) {
        if old != new {
            if let Some(t) = old {
                self.timers.remove(&(t, key.clone()));
            }
            if let Some(t) = new {
                self.timers.insert((t, key.clone()));
            }
        }
    }

    fn drop_timers(&mut self, key: &str) {
        self.timers.retain(|t| &*t.1 != key);
    }

    fn late(&self, event: Event, out: &mut Vec<Output>) {
        let lateness = self
            .watermark
            .saturating_sub(event.time.saturating_add(self.grace))
            .max(1);
        out.push(Output::Late(LateArrival::of(
            event,
            &self.topics,
            self.watermark,
            lateness,
            None,
        )));
    }

    /// Adds a held event to `key`'s state (a new state when `state` is None), emits the
    /// rows it completes, and updates the key's timer.
    fn accept(
        &mut self,
        key: Arc<str>,
        mut state: KeyState,
        event: RecordEvent,
        fp: Option<u128>,
        out: &mut Vec<Output>,
    ) {
        let old = state.timer;
        state.seen.extend(fp);
        state.events.push(Held {
            event,
            in_record: false,
            matched_as_left: 0,
            matched_as_right: 0,
        });
        let new_index = state.events.len() - 1;
        let w = self.watermark;
        let (rows, marks) = self.rows(&state.events);
        for (h, (left, right)) in state.events.iter_mut().zip(marks) {
            h.matched_as_left |= left;
            h.matched_as_right |= right;
        }
        for (row, decided) in rows {
            if !row.contains(&Some(new_index)) {
                continue;
            }
            // Rows without nulls at once; rows with nulls only if already decided.
            if decided == i64::MIN || passed(decided, w) {
                self.emit(&key, &mut state, &row, out);
            }
        }
        let next = self.settle(&key, &mut state, out);
        state.timer = next;
        self.set_timer(&key, old, next);
        if state.is_empty() {
            self.cache.remove(&key);
        } else {
            self.cache.insert(key, state);
        }
    }
}

impl Operator for IntervalOperator {
    fn on_event(&mut self, event: Event, watermark: i64, out: &mut Vec<Output>) {
        self.on_watermark(watermark, out);
        if passed(event.time.saturating_add(self.grace), self.watermark) {
            return self.late(event, out);
        }
        let fp = event.id.as_deref().map(|id| fingerprint(event.source, id));
        let state = match self.cache.get_mut(&event.key) {
            Lookup::Found(entry) => {
                if fp.is_some_and(|fp| entry.state().seen.contains(&fp)) {
                    out.push(Output::duplicate(event));
                    return;
                }
                let held = entry.state().events.len();
                if held >= self.max_events {
                    out.push(Output::OverLimit { event, held });
                    return;
                }
                self.cache.remove(&event.key)
            }
            Lookup::Lost => {
                self.drop_timers(&event.key);
                None
            }
            Lookup::New => None,
        };
        let (key, record) = RecordEvent::split(event);
        self.accept(Arc::from(key), state.unwrap_or_default(), record, fp, out);
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Output>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        while let Some(first) = self.timers.first()
            && passed(first.0, watermark)
        {
            let Some((_, key)) = self.timers.pop_first() else {
                break;
            };
            // Taken out and put back: settling needs the operator and the state at once.
            let mut state = match self.cache.get_mut(&key) {
                Lookup::Found(_) => match self.cache.remove(&key) {
                    Some(state) => state,
                    None => continue,
                },
                Lookup::Lost => {
                    self.drop_timers(&key);
                    continue;
                }
                Lookup::New => continue,
            };
            let next = self.settle(&key, &mut state, out);
            state.timer = next;
            if let Some(t) = next {
                self.timers.insert((t, key.clone()));
            }
            if !state.is_empty() {
                self.cache.insert(key, state);
            }
        }
    }

    fn open_windows(&self) -> usize {
        self.timers.len()
    }
}

impl Checkpointed for IntervalOperator {
    type State = KeyState;

    fn key_cache(&self) -> &KeyCache<KeyState> {
        &self.cache
    }

    fn key_cache_mut(&mut self) -> &mut KeyCache<KeyState> {
        &mut self.cache
    }

    fn restore_key(&mut self, key: &str, state: KeyState) {
        let (key, replaced) = self.cache.restore(key, state);
        if !matches!(replaced, Replaced::Nothing) {
            self.drop_timers(&key);
        }
        if let Some(t) = self.cache.cached(&key).and_then(|s| s.timer) {
            self.timers.insert((t, key));
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

    fn link(left: &str, right: &str, before: u64, after: u64, t: JoinType) -> LinkConfig {
        LinkConfig {
            left: left.into(),
            right: right.into(),
            before: Duration::from_millis(before),
            after: Duration::from_millis(after),
            join_type: t,
        }
    }

    fn config(links: Vec<LinkConfig>, grace: u64) -> IntervalConfig {
        IntervalConfig {
            topology: "t".into(),
            sources: vec!["a".into(), "b".into(), "c".into()],
            links,
            grace: Duration::from_millis(grace),
            include_payload: true,
            max_events: None,
        }
    }

    /// a ⋈ b within 5 both ways (`t0`), then b ⋈ c within 0..10 (`t1`).
    fn chain(t0: JoinType, t1: JoinType, grace: u64) -> IntervalOperator {
        config(
            vec![link("a", "b", 5, 5, t0), link("b", "c", 0, 10, t1)],
            grace,
        )
        .build()
        .unwrap()
    }

    fn ev(source: u16, offset: u64, key: &str, time: i64) -> Event {
        Event {
            source,
            partition: 0,
            offset,
            key: key.into(),
            time,
            id: Some(format!("e{offset}").into()),
            payload: "{}".into(),
        }
    }

    /// Records as (key, per chain position the offset or None).
    fn rows(out: &[Output]) -> Vec<(String, Vec<Option<u64>>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Correlation(c) => {
                    let v: Value = serde_json::from_slice(&c.json).unwrap();
                    assert_eq!(v["kind"], "join");
                    let events: Vec<Option<u64>> = v["events"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["offset"].as_u64())
                        .collect();
                    assert_eq!(v["matched"], events.iter().all(Option::is_some));
                    Some((c.key.to_string(), events))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_key_holds_at_most_max_events_and_the_rest_are_handed_back() {
        let mut c = config(vec![link("a", "b", 5, 5, JoinType::Inner)], 0);
        c.sources.pop();
        c.max_events = Some(3);
        let mut op = c.build().unwrap();
        let mut out = Vec::new();
        for o in 0..6u64 {
            op.on_event(ev((o % 2) as u16, o, "bot", 100), i64::MIN, &mut out);
        }
        op.on_event(ev(1, 6, "other", 100), i64::MIN, &mut out);
        let over: Vec<(u64, usize)> = out
            .iter()
            .filter_map(|o| match o {
                Output::OverLimit { event, held } => Some((event.offset, *held)),
                _ => None,
            })
            .collect();
        assert_eq!(over, [(3, 3), (4, 3), (5, 3)]);
        // Only held events joined: a0 with b1, a2 with b1; the other key is untouched.
        assert_eq!(
            rows(&out),
            vec![
                ("bot".into(), vec![Some(0), Some(1)]),
                ("bot".into(), vec![Some(2), Some(1)])
            ]
        );
        // A re-sent held event is still a duplicate, not over the limit.
        out.clear();
        op.on_event(ev(0, 0, "bot", 100), i64::MIN, &mut out);
        assert!(matches!(out[..], [Output::Duplicate { .. }]), "{out:?}");
    }

    #[test]
    fn window_bounds_are_inclusive() {
        let mut op = config(vec![link("a", "b", 5, 7, JoinType::Inner)], 0);
        op.sources.pop();
        let mut op = op.build().unwrap();
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100), i64::MIN, &mut out);
        for (o, t) in [(1, 94), (2, 95), (3, 107), (4, 108)] {
            op.on_event(ev(1, o, "k", t), i64::MIN, &mut out);
        }
        assert_eq!(
            rows(&out),
            vec![
                ("k".into(), vec![Some(0), Some(2)]),
                ("k".into(), vec![Some(0), Some(3)])
            ]
        );
        out.clear();
        op.on_watermark(i64::MAX, &mut out);
        let unjoined: Vec<u64> = out
            .iter()
            .filter_map(|o| match o {
                Output::Unjoined { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect();
        assert_eq!(unjoined, vec![1, 4], "no partner, counted");
        assert_eq!(op.keys_with_state(), 0);
    }

    #[test]
    fn kafka_10847_no_spurious_unmatched_record() {
        // A left join: `a` at 100 may be matched by `b` up to 105 (after 5), so it is
        // undecided until the watermark passes 105 + grace 2.
        let mut op = config(vec![link("a", "b", 5, 5, JoinType::Left)], 2);
        op.sources.pop();
        let mut op = op.build().unwrap();
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100), 90, &mut out);
        op.on_watermark(107, &mut out);
        assert!(out.is_empty(), "undecided at W = 107: {out:?}");
        // The match comes out of order but in time (105 + 2 is not behind 107).
        op.on_event(ev(1, 1, "k", 105), 107, &mut out);
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(rows(&out), vec![("k".into(), vec![Some(0), Some(1)])]);

        // Without a match: exactly one unmatched record, once W > 107.
        let mut op = config(vec![link("a", "b", 5, 5, JoinType::Left)], 2);
        op.sources.pop();
        let mut op = op.build().unwrap();
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100), 90, &mut out);
        op.on_watermark(107, &mut out);
        assert!(out.is_empty());
        op.on_watermark(108, &mut out);
        assert_eq!(rows(&out), vec![("k".into(), vec![Some(0), None])]);
        op.on_watermark(i64::MAX, &mut out);
        assert_eq!(rows(&out).len(), 1, "emitted once");
    }

    #[test]
    fn outer_join_reports_unmatched_rights_after_their_window() {
        let mut op = config(vec![link("a", "b", 5, 5, JoinType::Outer)], 0);
        op.sources.pop();
        let mut op = op.build().unwrap();
        let mut out = Vec::new();
        op.on_event(ev(1, 0, "k", 100), 90, &mut out);
        // An `a` up to 105 could still match it.
        op.on_watermark(105, &mut out);
        assert!(out.is_empty());
        op.on_watermark(106, &mut out);
        assert_eq!(rows(&out), vec![("k".into(), vec![None, Some(0)])]);
    }

    #[test]
    fn chains_emit_matches_eagerly_and_partial_rows_once_decided() {
        let mut op = chain(JoinType::Inner, JoinType::Left, 0);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100), 90, &mut out); // a
        op.on_event(ev(1, 1, "k", 103), 90, &mut out); // b
        assert!(out.is_empty(), "(a, b) waits for c");
        op.on_event(ev(2, 2, "k", 110), 90, &mut out); // c: 103..113
        assert_eq!(
            rows(&out),
            vec![("k".into(), vec![Some(0), Some(1), Some(2)])]
        );
        out.clear();
        op.on_event(ev(1, 3, "k", 98), 95, &mut out); // another b, no c for it
        op.on_watermark(108, &mut out);
        assert!(out.is_empty(), "b at 98 may get a c until 108");
        op.on_watermark(109, &mut out);
        assert_eq!(rows(&out), vec![("k".into(), vec![Some(0), Some(3), None])]);
        out.clear();
        op.on_watermark(i64::MAX, &mut out);
        assert!(rows(&out).is_empty());
        assert_eq!(op.keys_with_state(), 0);
    }

    #[test]
    fn late_and_duplicate_events() {
        let mut op = chain(JoinType::Inner, JoinType::Inner, 3);
        let mut out = Vec::new();
        op.on_event(ev(0, 0, "k", 100), 100, &mut out);
        op.on_event(ev(0, 0, "k", 100), 100, &mut out);
        op.on_event(ev(0, 1, "k", 96), 100, &mut out);
        op.on_event(ev(0, 2, "k", 97), 100, &mut out);
        let kinds: Vec<&str> = out
            .iter()
            .map(|o| match o {
                Output::Duplicate { .. } => "dup",
                Output::Late(l) => {
                    assert_eq!((l.offset, l.lateness_ms, l.would_join), (1, 1, None));
                    "late"
                }
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, vec!["dup", "late"], "97 + 3 is not behind 100");
    }

    #[test]
    fn state_leaves_with_the_watermark_alone() {
        let mut op = chain(JoinType::Left, JoinType::Outer, 1);
        let mut out = Vec::new();
        for (o, k, t) in [(0, "x", 100), (1, "y", 200)] {
            op.on_event(ev(0, o, k, t), 0, &mut out);
        }
        assert_eq!(op.keys_with_state(), 2);
        // H = 5 + 5 + 0 + 10 + 1 = 21: x leaves once W > 121, with its record.
        op.on_watermark(122, &mut out);
        assert_eq!(op.keys_with_state(), 1);
        assert_eq!(rows(&out), vec![("x".into(), vec![Some(0), None, None])]);
        op.on_watermark(222, &mut out);
        assert_eq!((op.keys_with_state(), op.open_windows()), (0, 0));
    }

    #[test]
    fn configuration_errors() {
        let c = config(vec![link("a", "b", 1, 1, JoinType::Inner)], 0);
        assert_eq!(
            c.build().unwrap_err().to_string(),
            "topology `t`, correlation interval: source `c` is in no join"
        );
        let c = config(
            vec![
                link("a", "b", 1, 1, JoinType::Inner),
                link("c", "a", 1, 1, JoinType::Inner),
            ],
            0,
        );
        assert_eq!(
            c.build().unwrap_err().to_string(),
            "topology `t`, correlation interval: join 1: left `c` must be in the chain already and right `a` must not"
        );
    }

    /// The batch result over every accepted event of a key: left-deep, as the module
    /// doc defines it, with rows as offsets per chain position.
    fn batch_model(
        events: &[Event],
        links: &[(usize, i64, i64, JoinType)],
    ) -> Vec<(String, Vec<Option<u64>>)> {
        let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for e in events {
            by_key.entry(&e.key).or_default().push(e);
        }
        let mut out = Vec::new();
        for (key, evs) in by_key {
            let of = |pos: u16| evs.iter().filter(move |e| e.source == pos);
            let mut rows: Vec<Vec<Option<&Event>>> = of(0).map(|e| vec![Some(*e)]).collect();
            for (j, &(left, before, after, t)) in links.iter().enumerate() {
                let mut next = Vec::new();
                let rights: Vec<&Event> = of(j as u16 + 1).copied().collect();
                let fits =
                    |l: &Event, r: &Event| l.time - before <= r.time && r.time <= l.time + after;
                for row in &rows {
                    let ms: Vec<&Event> = match row[left] {
                        Some(l) => rights.iter().copied().filter(|r| fits(l, r)).collect(),
                        None => vec![],
                    };
                    for r in &ms {
                        let mut x = row.clone();
                        x.push(Some(*r));
                        next.push(x);
                    }
                    if ms.is_empty() && t != JoinType::Inner {
                        let mut x = row.clone();
                        x.push(None);
                        next.push(x);
                    }
                }
                if t == JoinType::Outer {
                    for r in &rights {
                        if !rows.iter().any(|row| row[left].is_some_and(|l| fits(l, r))) {
                            let mut x = vec![None; j + 1];
                            x.push(Some(*r));
                            next.push(x);
                        }
                    }
                }
                rows = next;
            }
            out.extend(rows.into_iter().map(|r| {
                (
                    key.to_owned(),
                    r.iter().map(|e| e.map(|e| e.offset)).collect(),
                )
            }));
        }
        out.sort();
        out
    }

    fn join_type() -> impl Strategy<Value = JoinType> {
        prop_oneof![
            Just(JoinType::Inner),
            Just(JoinType::Left),
            Just(JoinType::Outer)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn in_bound_disorder_matches_the_batch_join(
            gens in prop::collection::vec(gen_event(), 0..40),
            bound in 0i64..30,
            grace in 0i64..10,
            w0 in 0i64..30,
            w1 in 0i64..30,
            t0 in join_type(),
            t1 in join_type(),
            second_from_a in any::<bool>(),
            evict in any::<bool>(),
            with_late in any::<bool>(),
        ) {
            let events = arrivals(&gens, bound, with_late);
            let left1 = if second_from_a { "a" } else { "b" };
            let mut op = config(
                vec![
                    link("a", "b", w0 as u64, w1 as u64, t0),
                    link(left1, "c", w1 as u64, w0 as u64, t1),
                ],
                grace as u64,
            )
            .build()
            .unwrap();
            let store = evict.then(|| MapStore::attached_to(&mut op));
            let mut out = Vec::new();
            let mut max = i64::MIN;
            let mut late = BTreeSet::new();
            for (i, e) in events.iter().enumerate() {
                let w = max.saturating_sub(bound);
                max = max.max(e.time);
                if passed(e.time + grace, w) {
                    late.insert(e.offset);
                }
                op.on_event(e.clone(), w, &mut out);
                if let Some(store) = &store {
                    store.drain(&mut op, i as u64 + 1);
                    op.evict(0, i as u64 + 1);
                }
            }
            op.on_watermark(i64::MAX, &mut out);
            // Late events are reported and otherwise ignored; of the others, the first
            // arrival of each (key, source, id) is accepted, the rest are duplicates.
            let reported: BTreeSet<u64> = out.iter().filter_map(|o| match o {
                Output::Late(l) => Some(l.offset),
                _ => None,
            }).collect();
            prop_assert_eq!(&reported, &late);
            prop_assert!(with_late || late.is_empty());
            let mut first = BTreeSet::new();
            let accepted: Vec<Event> = events
                .iter()
                .filter(|e| !late.contains(&e.offset))
                .filter(|e| e.id.as_ref().is_none_or(|id| first.insert((e.key.clone(), e.source, id.clone()))))
                .cloned()
                .collect();
            let mut got = rows(&out);
            got.sort();
            let links = [
                (0, w0, w1, t0),
                (if second_from_a { 0 } else { 1 }, w1, w0, t1),
            ];
            prop_assert_eq!(&got, &batch_model(&accepted, &links));
            // Accounting: every accepted event in a record or counted unjoined, once.
            let in_records: BTreeSet<u64> = got.iter().flat_map(|(_, r)| r.iter().flatten().copied()).collect();
            let unjoined: Vec<u64> = out.iter().filter_map(|o| match o {
                Output::Unjoined { offset, .. } => Some(*offset),
                _ => None,
            }).collect();
            prop_assert!(unjoined.iter().all(|o| !in_records.contains(o)));
            prop_assert_eq!(in_records.len() + unjoined.len(), accepted.len());
            let dups = out.iter().filter(|o| matches!(o, Output::Duplicate { .. })).count();
            prop_assert_eq!(dups, events.len() - late.len() - accepted.len());
            prop_assert_eq!((op.keys_with_state(), op.open_windows()), (0, 0));
        }
    }
}
