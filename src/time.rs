//! Event time and watermarks: per source partition and for the whole job.
//!
//! [`Watermarks`] tracks every registered partition of every source. It has no clock:
//! event time comes from the events passed to [`Watermarks::observe`], processing
//! time (`now_ms`, epoch ms) is injected by the caller on every call.
//!
//! Rules (docs/semantics.md, "Event time and watermarks", explains the choices):
//! - A partition's watermark is the largest event time it has shown minus the
//!   out-of-orderness bound; `i64::MIN` until its first event. It never decreases.
//! - A partition is *idle* when it is caught up (its reader is at the end of its log)
//!   and silent: no event for at least the idle timeout of processing time, counted
//!   from its last event, or from when it was registered (start-up or restore) if it
//!   has had none since. A partition that is not caught up is never idle, so one that
//!   simply has not been read yet holds the job back; an empty one stops holding it
//!   back one idle timeout after start-up.
//! - The job watermark is the minimum over the partitions that are not idle. When
//!   every partition is idle it is the maximum of their watermarks: everything has
//!   been read, and that is the furthest event time any source has proven.
//! - The job watermark never decreases: not when an idle partition wakes up with an
//!   older watermark (its older events are late), not across restarts (the snapshot
//!   carries it). [`Watermarks::finish`] raises it to `i64::MAX` for good.
//! - Idleness is re-evaluated in [`Watermarks::advance`]; an event or a reader that
//!   falls behind makes a partition active at once. Every change is logged with
//!   `tracing::info!` and counted.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The wall clock in epoch milliseconds: the one place braid reads it (processing time
/// for idleness, append time in the log). Operators never call it; callers inject it.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Delays between attempts of an I/O operation that failed (a source read, an output
/// append): 100 ms, doubling, at most 5 s apart. Counting attempts is all it does; the
/// caller owns the clock and decides when to give up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(5);

    /// Notes one more failure; the delay before the next attempt.
    pub fn failed(&mut self) -> Duration {
        let delay = Self::FIRST
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Failures noted since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The time policy of a job (from the topology's `[time]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// How far behind the largest event time seen an event may still arrive in order.
    pub out_of_orderness: Duration,
    /// How long a caught-up partition must be silent before it stops holding the job
    /// watermark back.
    pub idle_timeout: Duration,
}

/// One partition of one source; `source` is the source's index in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId {
    pub source: u16,
    pub partition: u32,
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source {} partition {}", self.source, self.partition)
    }
}

/// What [`Watermarks`] knows about one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// Largest event time seen minus out-of-orderness; `i64::MIN` before any event.
    pub watermark: i64,
    /// Largest event time seen (also before a restart), if any.
    pub max_event_time: Option<i64>,
    /// The reader was at the end of the partition's log when last told.
    pub caught_up: bool,
    /// Excluded from the job watermark (see the module doc).
    pub idle: bool,
    /// Processing time of the last event, or of registration if none since.
    pub last_activity_ms: i64,
}

/// Checkpointed watermark state, stored with the rest of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkSnapshot {
    /// The job watermark (`i64::MAX` once finished).
    pub job: i64,
    pub partitions: Vec<PartitionSnapshot>,
}

impl Default for WatermarkSnapshot {
    /// Nothing seen yet.
    fn default() -> Self {
        WatermarkSnapshot {
            job: i64::MIN,
            partitions: Vec::new(),
        }
    }
}

/// One partition in a [`WatermarkSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub id: PartitionId,
    pub watermark: i64,
    pub max_event_time: Option<i64>,
}

/// Watermarks of all partitions and of the job. See the module doc for the rules.
#[derive(Debug, Clone)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    idle_timeout_ms: i64,
    /// Sorted by id: lookups are a binary search (the hot path, once per event) and
    /// iteration order is deterministic.
    partitions: Vec<(PartitionId, PartitionState)>,
    job: i64,
    finished: bool,
    became_idle: u64,
    became_active: u64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Watermarks {
    /// Starts tracking `partitions`, none caught up, none with an event yet.
    pub fn new(
        cfg: WatermarkConfig,
        partitions: impl IntoIterator<Item = PartitionId>,
        now_ms: i64,
    ) -> Self {
        let mut marks = Watermarks {
            out_of_orderness_ms: millis(cfg.out_of_orderness),
            idle_timeout_ms: millis(cfg.idle_timeout),
            partitions: Vec::new(),
            job: i64::MIN,
            finished: false,
            became_idle: 0,
            became_active: 0,
        };
        for p in partitions {
            marks.register(p, now_ms);
        }
        marks
    }

    /// Resumes from a checkpoint: partitions keep their checkpointed watermarks and
    /// the job watermark resumes where it was, so neither goes backwards across a
    /// restart. Snapshot entries for partitions not in `partitions` are dropped (this
    /// instance no longer reads them); partitions missing from the snapshot start
    /// fresh. Processing time restarts at `now_ms`: no partition is idle or caught up
    /// until it is read again.
    pub fn restore(
        cfg: WatermarkConfig,
        snapshot: &WatermarkSnapshot,
        partitions: impl IntoIterator<Item = PartitionId>,
        now_ms: i64,
    ) -> Self {
        let mut marks = Watermarks::new(cfg, partitions, now_ms);
        for saved in &snapshot.partitions {
            match marks.find(saved.id) {
                Ok(at) => {
                    let state = &mut marks.partitions[at].1;
                    state.watermark = state.watermark.max(saved.watermark);
                    state.max_event_time = state.max_event_time.max(saved.max_event_time);
                }
                Err(_) => tracing::info!(
                    source = saved.id.source,
                    partition = saved.id.partition,
                    watermark = saved.watermark,
                    "checkpointed partition no longer assigned; its watermark is dropped"
                ),
            }
        }
        marks.job = snapshot.job;
        marks.finished = snapshot.job == i64::MAX;
        marks
    }

    /// Starts tracking a partition (e.g. one that appeared after start-up). Returns
    /// false when it was already tracked. Events and reader positions for unknown
    /// partitions register them implicitly.
    pub fn register(&mut self, p: PartitionId, now_ms: i64) -> bool {
        match self.find(p) {
            Ok(_) => false,
            Err(at) => {
                self.insert_at(at, p, now_ms);
                true
            }
        }
    }

    /// An event of partition `p` with `event_time` was read at `now_ms`.
    pub fn observe(&mut self, p: PartitionId, event_time: i64, now_ms: i64) {
        let at = self.find_or_register(p, now_ms);
        let out_of_orderness = self.out_of_orderness_ms;
        let state = &mut self.partitions[at].1;
        state.max_event_time = state.max_event_time.max(Some(event_time));
        state.watermark = state
            .watermark
            .max(event_time.saturating_sub(out_of_orderness));
        state.last_activity_ms = state.last_activity_ms.max(now_ms);
        if state.idle {
            self.set_idle(at, false, now_ms);
        }
    }

    /// Whether partition `p`'s reader is at the end of its log. Falling behind makes
    /// an idle partition active at once; catching up takes effect in `advance`.
    pub fn set_caught_up(&mut self, p: PartitionId, caught_up: bool, now_ms: i64) {
        let at = self.find_or_register(p, now_ms);
        let state = &mut self.partitions[at].1;
        state.caught_up = caught_up;
        if !caught_up && state.idle {
            self.set_idle(at, false, now_ms);
        }
    }

    /// Re-evaluates idleness at `now_ms` and recomputes the job watermark. Returns
    /// `Some(new)` only when the job watermark advanced.
    pub fn advance(&mut self, now_ms: i64) -> Option<i64> {
        if self.finished {
            return None;
        }
        for at in 0..self.partitions.len() {
            let state = &self.partitions[at].1;
            let idle = state.caught_up
                && now_ms.saturating_sub(state.last_activity_ms) >= self.idle_timeout_ms;
            if idle != state.idle {
                self.set_idle(at, idle, now_ms);
            }
        }
        let active_min = self
            .partitions
            .iter()
            .filter(|(_, s)| !s.idle)
            .map(|(_, s)| s.watermark)
            .min();
        let candidate = active_min.unwrap_or_else(|| {
            self.partitions
                .iter()
                .map(|(_, s)| s.watermark)
                .max()
                .unwrap_or(i64::MIN)
        });
        (candidate > self.job).then(|| {
            self.job = candidate;
            candidate
        })
    }

    /// The job watermark; `i64::MIN` before any event, `i64::MAX` once finished.
    pub fn current(&self) -> i64 {
        self.job
    }

    /// End of bounded input: the job watermark becomes +infinity (`i64::MAX`) and
    /// stays there, so every window closes.
    pub fn finish(&mut self) -> i64 {
        self.finished = true;
        self.job = i64::MAX;
        self.job
    }

    /// Whether [`finish`](Self::finish) was called (or restored from a finished job).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The state of one partition, if tracked.
    pub fn partition(&self, p: PartitionId) -> Option<PartitionState> {
        self.find(p).ok().map(|at| self.partitions[at].1)
    }

    /// Every tracked partition, in id order.
    pub fn partitions(&self) -> impl Iterator<Item = (PartitionId, PartitionState)> + '_ {
        self.partitions.iter().copied()
    }

    /// The partitions currently excluded from the job watermark, in id order.
    pub fn idle_partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.partitions
            .iter()
            .filter(|(_, s)| s.idle)
            .map(|(p, _)| *p)
    }

    /// How many times a partition became idle since start-up.
    pub fn times_became_idle(&self) -> u64 {
        self.became_idle
    }

    /// How many times an idle partition became active again since start-up.
    pub fn times_became_active(&self) -> u64 {
        self.became_active
    }

    /// The state to checkpoint.
    pub fn snapshot(&self) -> WatermarkSnapshot {
        WatermarkSnapshot {
            job: self.job,
            partitions: self
                .partitions
                .iter()
                .map(|(id, s)| PartitionSnapshot {
                    id: *id,
                    watermark: s.watermark,
                    max_event_time: s.max_event_time,
                })
                .collect(),
        }
    }

    fn find(&self, p: PartitionId) -> Result<usize, usize> {
        self.partitions.binary_search_by_key(&p, |(id, _)| *id)
    }

    fn find_or_register(&mut self, p: PartitionId, now_ms: i64) -> usize {
        match self.find(p) {
            Ok(at) => at,
            Err(at) => {
                tracing::info!(
                    source = p.source,
                    partition = p.partition,
                    "watermarks: tracking a partition first seen after start-up"
                );
                self.insert_at(at, p, now_ms);
                at
            }
        }
    }

    fn insert_at(&mut self, at: usize, p: PartitionId, now_ms: i64) {
        let state = PartitionState {
            watermark: i64::MIN,
            max_event_time: None,
            caught_up: false,
            idle: false,
            last_activity_ms: now_ms,
        };
        self.partitions.insert(at, (p, state));
    }

    fn set_idle(&mut self, at: usize, idle: bool, now_ms: i64) {
        let (p, state) = &mut self.partitions[at];
        state.idle = idle;
        let silent_ms = now_ms.saturating_sub(state.last_activity_ms);
        if idle {
            self.became_idle += 1;
            tracing::info!(
                source = p.source,
                partition = p.partition,
                watermark = state.watermark,
                silent_ms,
                "partition idle: caught up and silent, no longer holds the job watermark back"
            );
        } else {
            self.became_active += 1;
            tracing::info!(
                source = p.source,
                partition = p.partition,
                watermark = state.watermark,
                job_watermark = self.job,
                "partition active again: holds the job watermark back; its events older than the job watermark are late"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const P0: PartitionId = PartitionId {
        source: 0,
        partition: 0,
    };
    const P1: PartitionId = PartitionId {
        source: 0,
        partition: 1,
    };
    const Q0: PartitionId = PartitionId {
        source: 1,
        partition: 0,
    };

    fn cfg(out_of_orderness_ms: u64, idle_timeout_ms: u64) -> WatermarkConfig {
        WatermarkConfig {
            out_of_orderness: Duration::from_millis(out_of_orderness_ms),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
        }
    }

    fn three(now: i64) -> Watermarks {
        Watermarks::new(cfg(0, 1_000), [Q0, P1, P0], now)
    }

    #[test]
    fn backoff_doubles_from_100ms_up_to_5s() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        assert_eq!(b.failures(), 10);
        for _ in 0..100 {
            b.failed();
        }
        assert_eq!(b.failed(), Backoff::MAX, "no overflow after many failures");
    }

    #[test]
    fn job_watermark_is_the_minimum_over_partitions() {
        let mut w = three(0);
        assert_eq!(w.current(), i64::MIN);
        w.observe(P0, 100, 0);
        w.observe(P1, 50, 0);
        assert_eq!(w.advance(0), None, "Q0 has no event yet");
        w.observe(Q0, 70, 0);
        assert_eq!(w.advance(0), Some(50));
        w.observe(P1, 200, 0);
        assert_eq!(w.advance(0), Some(70));
        assert_eq!(w.current(), 70);
        // Out-of-order events do not move anything back.
        w.observe(Q0, 10, 0);
        assert_eq!(w.advance(0), None);
        assert_eq!(w.partition(Q0).map(|s| s.watermark), Some(70));
        assert_eq!(w.current(), 70);
    }

    #[test]
    fn out_of_orderness_is_subtracted() {
        let mut w = Watermarks::new(cfg(5_000, 1_000), [P0], 0);
        w.observe(P0, 12_000, 0);
        assert_eq!(w.advance(0), Some(7_000));
        let state = w.partition(P0).unwrap();
        assert_eq!(
            (state.watermark, state.max_event_time),
            (7_000, Some(12_000))
        );
        // Near the bottom of the range the subtraction saturates instead of wrapping.
        let mut w = Watermarks::new(cfg(5_000, 1_000), [P0], 0);
        w.observe(P0, i64::MIN + 10, 0);
        assert_eq!(w.partition(P0).unwrap().watermark, i64::MIN);
    }

    #[test]
    fn idle_partition_is_excluded_then_included_without_regression() {
        let mut w = three(0);
        w.observe(P0, 100, 0);
        w.observe(P1, 500, 0);
        w.observe(Q0, 900, 0);
        assert_eq!(w.advance(0), Some(100));
        for p in [P0, P1, Q0] {
            w.set_caught_up(p, true, 10);
        }
        // P1 and Q0 keep getting events; P0 goes quiet.
        w.observe(P1, 600, 900);
        w.observe(Q0, 950, 900);
        assert_eq!(w.advance(999), None, "not silent long enough yet");
        assert_eq!(w.advance(1_000), Some(600));
        assert_eq!(w.idle_partitions().collect::<Vec<_>>(), vec![P0]);
        assert_eq!(w.times_became_idle(), 1);
        // P0 wakes up with an older watermark: it is active again, the job holds.
        w.observe(P0, 300, 1_100);
        assert_eq!(w.partition(P0).map(|s| s.idle), Some(false));
        assert_eq!(w.times_became_active(), 1);
        assert_eq!(w.advance(1_100), None);
        assert_eq!(w.current(), 600);
        // Once P0 passes the others, the job follows the minimum again.
        w.observe(P0, 2_000, 1_200);
        w.observe(P1, 1_500, 1_200);
        w.observe(Q0, 1_700, 1_200);
        assert_eq!(w.advance(1_200), Some(1_500));
    }

    #[test]
    fn falling_behind_makes_an_idle_partition_active() {
        let mut w = three(0);
        w.observe(P0, 100, 0);
        w.observe(P1, 100, 0);
        w.observe(Q0, 100, 0);
        w.set_caught_up(P0, true, 0);
        w.advance(1_000);
        assert_eq!(w.idle_partitions().collect::<Vec<_>>(), vec![P0]);
        w.set_caught_up(P0, false, 1_001);
        assert_eq!(w.idle_partitions().count(), 0);
        assert_eq!(w.advance(5_000), None);
        assert_eq!(w.idle_partitions().count(), 0, "not caught up, never idle");
    }

    #[test]
    fn empty_partition_does_not_stall_the_job() {
        let mut w = three(0);
        w.observe(P0, 100, 0);
        w.observe(P1, 200, 0);
        for p in [P0, P1, Q0] {
            w.set_caught_up(p, true, 0);
        }
        w.observe(P0, 150, 500);
        w.observe(P1, 250, 500);
        assert_eq!(
            w.advance(999),
            None,
            "Q0 is empty but the timeout has not passed"
        );
        assert_eq!(
            w.advance(1_000),
            Some(150),
            "Q0 idle one timeout after start-up"
        );
        assert_eq!(w.idle_partitions().collect::<Vec<_>>(), vec![Q0]);
    }

    #[test]
    fn unread_partition_stalls_until_caught_up_and_silent() {
        let mut w = three(0);
        w.observe(P0, 100, 0);
        w.observe(P1, 200, 0);
        w.set_caught_up(P0, true, 0);
        w.set_caught_up(P1, true, 0);
        // Q0 has not been read: however long it takes, it holds the job back.
        for now in [0, 1_000, 60_000, 3_600_000] {
            w.observe(P0, 100 + now, now);
            w.observe(P1, 200 + now, now);
            assert_eq!(w.advance(now), None, "at {now}");
        }
        assert_eq!(w.current(), i64::MIN);
        // Its reader finally gets there and finds it empty: it has been silent since
        // start-up, so it stops holding the job back at once.
        w.set_caught_up(Q0, true, 3_600_000);
        assert_eq!(w.advance(3_600_000), Some(3_600_100));
    }

    #[test]
    fn all_idle_takes_the_maximum() {
        let mut w = three(0);
        w.observe(P0, 100, 0);
        w.observe(P1, 500, 0);
        for p in [P0, P1, Q0] {
            w.set_caught_up(p, true, 0);
        }
        assert_eq!(w.advance(0), None, "Q0 not silent long enough yet");
        // Everything read and quiet: sessions up to the newest data can close.
        assert_eq!(w.advance(1_000), Some(500));
        assert_eq!(w.idle_partitions().count(), 3);
        // P0 wakes up behind: the job does not go back.
        w.observe(P0, 200, 2_000);
        assert_eq!(w.advance(2_000), None);
        assert_eq!(w.current(), 500);
    }

    #[test]
    fn all_idle_and_empty_stays_at_minus_infinity() {
        let mut w = three(0);
        for p in [P0, P1, Q0] {
            w.set_caught_up(p, true, 0);
        }
        assert_eq!(w.advance(10_000), None);
        assert_eq!(w.current(), i64::MIN);
        let mut none = Watermarks::new(cfg(0, 0), [], 0);
        assert_eq!(none.advance(0), None);
    }

    #[test]
    fn finish_is_plus_infinity_for_good() {
        let mut w = three(0);
        w.observe(P0, 100, 0);
        assert_eq!(w.finish(), i64::MAX);
        assert_eq!(w.current(), i64::MAX);
        assert!(w.is_finished());
        w.observe(P1, 5, 1);
        assert_eq!(w.advance(1), None);
        assert_eq!(w.current(), i64::MAX);
        let restored = Watermarks::restore(cfg(0, 1_000), &w.snapshot(), [P0, P1, Q0], 2);
        assert!(restored.is_finished());
        assert_eq!(restored.current(), i64::MAX);
    }

    #[test]
    fn unknown_partitions_are_registered_on_first_use() {
        let mut w = Watermarks::new(cfg(0, 1_000), [P0], 0);
        w.observe(P0, 100, 0);
        assert_eq!(w.advance(0), Some(100));
        w.set_caught_up(Q0, false, 50);
        assert!(!w.register(Q0, 60));
        assert!(w.register(P1, 60));
        assert_eq!(
            w.partitions().map(|(p, _)| p).collect::<Vec<_>>(),
            vec![P0, P1, Q0]
        );
        assert_eq!(w.partition(Q0).map(|s| s.last_activity_ms), Some(50));
        w.observe(P0, 300, 70);
        assert_eq!(w.advance(70), None, "new partitions hold the job back");
        assert_eq!(w.current(), 100);
    }

    #[test]
    fn snapshot_restore_round_trip_keeps_watermarks_monotonic() {
        let mut w = three(0);
        w.observe(P0, 1_000, 0);
        w.observe(P1, 2_000, 0);
        w.observe(Q0, 3_000, 0);
        assert_eq!(w.advance(0), Some(1_000));
        let snapshot = w.snapshot();
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: WatermarkSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);

        // After the restart a new partition appears and P1 is no longer assigned.
        let new = PartitionId {
            source: 2,
            partition: 0,
        };
        let mut r = Watermarks::restore(cfg(0, 1_000), &back, [P0, Q0, new], 50_000);
        assert_eq!(r.current(), 1_000);
        assert_eq!(r.partition(P0).map(|s| s.watermark), Some(1_000));
        assert_eq!(r.partition(Q0).map(|s| s.max_event_time), Some(Some(3_000)));
        assert_eq!(r.partition(P1), None);
        let fresh = r.partition(new).unwrap();
        assert_eq!(
            (fresh.watermark, fresh.last_activity_ms, fresh.caught_up),
            (i64::MIN, 50_000, false)
        );
        // Older events after the restart move nothing back.
        r.observe(P0, 500, 50_001);
        r.observe(new, 400, 50_001);
        assert_eq!(r.advance(50_001), None);
        assert_eq!(r.current(), 1_000);
        assert_eq!(r.partition(P0).map(|s| s.watermark), Some(1_000));
        r.observe(P0, 5_000, 50_002);
        r.observe(new, 4_000, 50_002);
        assert_eq!(r.advance(50_002), Some(3_000));
    }

    // --- reference model ------------------------------------------------------

    #[derive(Debug, Clone)]
    enum Op {
        Observe(usize, i64),
        CaughtUp(usize, bool),
        Advance,
    }

    /// The rules restated over full histories.
    #[derive(Default)]
    struct Model {
        /// Per partition: event times, processing times of activity, caught up, idle.
        parts: BTreeMap<PartitionId, (Vec<i64>, Vec<i64>, bool, bool)>,
        job: Option<i64>,
    }

    impl Model {
        fn touch(&mut self, p: PartitionId, now: i64) -> &mut (Vec<i64>, Vec<i64>, bool, bool) {
            self.parts
                .entry(p)
                .or_insert_with(|| (vec![], vec![now], false, false))
        }

        fn advance(&mut self, now: i64, ooo: i64, timeout: i64) -> i64 {
            for (_, (_, activity, caught_up, idle)) in self.parts.iter_mut() {
                let last = activity.iter().max().copied().unwrap_or(i64::MIN);
                *idle = *caught_up && now - last >= timeout;
            }
            let wm = |times: &Vec<i64>| times.iter().max().map_or(i64::MIN, |t| t - ooo);
            let active: Vec<i64> = self
                .parts
                .values()
                .filter(|v| !v.3)
                .map(|v| wm(&v.0))
                .collect();
            let candidate = if active.is_empty() {
                self.parts
                    .values()
                    .map(|v| wm(&v.0))
                    .max()
                    .unwrap_or(i64::MIN)
            } else {
                active.into_iter().min().unwrap_or(i64::MIN)
            };
            let job = self.job.unwrap_or(i64::MIN).max(candidate);
            self.job = Some(job);
            job
        }
    }

    fn arb_op() -> impl Strategy<Value = (Op, i64)> {
        let op = prop_oneof![
            4 => (0..4usize, -1_000..10_000i64).prop_map(|(p, t)| Op::Observe(p, t)),
            2 => (0..4usize, any::<bool>()).prop_map(|(p, c)| Op::CaughtUp(p, c)),
            3 => Just(Op::Advance),
        ];
        // Coarse steps, so that silence often equals the timeout exactly.
        (op, (0..5i64).prop_map(|steps| steps * 100))
    }

    proptest! {
        #[test]
        fn agrees_with_reference_model(
            ooo in 0..500u64,
            timeout in (0..10u64).prop_map(|steps| steps * 100),
            ops in prop::collection::vec(arb_op(), 0..120),
        ) {
            let ids = [P0, P1, Q0, PartitionId { source: 3, partition: 7 }];
            let mut w = Watermarks::new(cfg(ooo, timeout), ids[..3].iter().copied(), 0);
            let mut model = Model::default();
            for &p in &ids[..3] {
                model.touch(p, 0);
            }
            let mut now = 0;
            let mut last = w.current();
            for (op, dt) in ops {
                now += dt;
                match op {
                    Op::Observe(p, t) => {
                        w.observe(ids[p], t, now);
                        let part = model.touch(ids[p], now);
                        part.0.push(t);
                        part.1.push(now);
                        part.3 = false;
                    }
                    Op::CaughtUp(p, c) => {
                        w.set_caught_up(ids[p], c, now);
                        let part = model.touch(ids[p], now);
                        part.2 = c;
                        if !c {
                            part.3 = false;
                        }
                    }
                    Op::Advance => {
                        let expected = model.advance(now, ooo as i64, timeout as i64);
                        let moved = w.advance(now);
                        prop_assert_eq!(w.current(), expected);
                        prop_assert_eq!(moved, (expected > last).then_some(expected));
                    }
                }
                prop_assert!(w.current() >= last, "job watermark went back");
                last = w.current();
                let idle: Vec<PartitionId> = model.parts.iter().filter(|(_, v)| v.3).map(|(p, _)| *p).collect();
                prop_assert_eq!(w.idle_partitions().collect::<Vec<_>>(), idle);
            }
        }
    }
}
