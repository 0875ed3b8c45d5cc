//! The outbox relay: output is published only from a committed checkpoint, exactly once.
//!
//! A job's output records are first given a place — an output topic, the partition of
//! their key, and the next sequence number of that partition. They are committed to
//! the state store's outbox (compressed, in the checkpoint's journal, which the
//! checkpoint's RocksDB batch names or, when small, holds) together with the state and
//! source positions that produced them, then stamped with their place
//! (`"producer":{"job":…,"seq":…}` appended to the JSON object), appended to the output
//! log, synced, and only then removed from the outbox (acknowledged). Between the
//! thread that makes a record and the output log, only its compressed form is held: on
//! the embedded log the publisher decompresses each record straight into its frame, and
//! a checkpoint's partitions are appended by several threads at once
//! ([`Sink::append_batches`]); each partition still gets its records in sequence order.
//!
//! Invariants:
//! - Sequence numbers of one job are dense and increasing per output partition; the next
//!   number of every partition is part of the checkpoint, so a restart never reuses one.
//! - A crash can leave a committed entry unpublished, published but not acknowledged, or
//!   half-appended (a torn log tail, truncated when the partition is next opened). On
//!   start, [`Outbox::recover`] reads the tail of every output partition to find the
//!   highest sequence number this job already published there and republishes only what
//!   follows it. So every committed record reaches the output exactly once.
//! - This relies on one running instance of a job per output partition. A record of this
//!   job with a sequence number the checkpoint never reached means another instance
//!   writes there; that is an error ([`OutboxError::ForeignSequence`]), never ignored.
//! - A fresh state directory over an output that already holds this job's records is an
//!   error too: starting from scratch would publish everything again.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fault::{CrashPoint, crash_point, fail_point};
use crate::log::{LogError, key_hash, partition_for_key, partition_of_hash};
use crate::sink::{Sink, SinkError};
use crate::state::{OutboxEntry, StateError, StateStore, pack, unpack_into};
use crate::time::Backoff;

/// Why output could not be published or recovered.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("publishing output")]
    Sink(#[from] SinkError),
    #[error("publishing output")]
    State(#[from] StateError),
    /// The committer's checkpoint write failed (it shares this error type with the
    /// publisher it feeds).
    #[error("committing a checkpoint")]
    Commit(#[source] StateError),
    #[error("publishing output (gave up after {attempts} attempts in {waited_ms} ms)")]
    GaveUp {
        attempts: u32,
        waited_ms: u64,
        #[source]
        source: SinkError,
    },
    #[error(
        "state directory {dir}: outbox entry seq {seq} of output topic `{topic}` partition {partition} is corrupt ({reason}); restore the state directory or replay into a new one"
    )]
    CorruptEntry {
        dir: PathBuf,
        topic: String,
        partition: u32,
        seq: u64,
        reason: String,
    },
    #[error(
        "output topic `{topic}` partition {partition} holds record seq {found} of job `{job}` at offset {offset}, but this job's checkpoint only reached seq {committed}: another instance of job `{job}` is writing to this partition (run one instance per output partition)"
    )]
    ForeignSequence {
        job: String,
        topic: String,
        partition: u32,
        offset: u64,
        found: u64,
        committed: u64,
    },
    #[error(
        "state directory {dir} holds no checkpoint, but output topic `{topic}` partition {partition} already holds records of job `{job}` (seq {seq} at offset {offset}): starting from scratch would publish them again; restore the state directory, or replay into a new state directory and another output topic"
    )]
    StateMissing {
        dir: PathBuf,
        job: String,
        topic: String,
        partition: u32,
        seq: u64,
        offset: u64,
    },
}

/// Which output topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    Journey,
    /// A correlation record of another kind (`complete`, …); goes with journeys.
    Record(&'static str),
    Late,
    DeadLetter,
}

impl From<LogError> for OutboxError {
    fn from(e: LogError) -> Self {
        OutboxError::Sink(SinkError::Log(e))
    }
}

impl OutKind {
    /// The record's `kind` field (a metrics label).
    pub fn name(self) -> &'static str {
        match self {
            OutKind::Journey => "journey",
            OutKind::Record(kind) => kind,
            OutKind::Late => "late_arrival",
            OutKind::DeadLetter => "dead_letter",
        }
    }
}

/// An output record before it is given a place: a JSON object, kept only as the outbox
/// stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub kind: OutKind,
    pub key: Option<Vec<u8>>,
    /// The value ([`crate::state::pack`]ed, not yet stamped), packed by
    /// [`OutRecord::new`] on the thread that produced the record: the single committer
    /// thread does not compress, and the uncompressed value is freed by the thread that
    /// made it (handing it on to the publisher made the shards keep taking fresh pages).
    stored: Vec<u8>,
    /// The hash that places a record without key ([`Outbox::place`]).
    value_hash: u64,
    /// Wall clock (epoch ms) when the input that completed this record was read, for the
    /// end-to-end latency metric; not published.
    pub born_ms: i64,
}

impl OutRecord {
    pub fn new(kind: OutKind, key: Option<Vec<u8>>, value: Vec<u8>, born_ms: i64) -> OutRecord {
        OutRecord {
            stored: pack(&value),
            value_hash: if key.is_none() { key_hash(&value) } else { 0 },
            kind,
            key,
            born_ms,
        }
    }
}

/// The next sequence number of every output partition the job has written to; part of
/// the checkpoint.
pub type SequenceCounters = BTreeMap<(String, u32), u64>;

/// The stamp read back from a published record.
#[derive(Deserialize)]
struct Stamped {
    producer: Option<Stamp>,
}

#[derive(Deserialize, Serialize)]
struct Stamp {
    job: String,
    seq: u64,
}

/// Records published by one call (to count them by kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub records: u64,
}

/// The relay of one job: places records, and appends committed entries to the log.
pub struct Outbox {
    job: String,
    /// The job name as a JSON string, ready to stamp.
    job_json: String,
    /// Absent in a placer (see [`Outbox::new_placer`]).
    sink: Option<Sink>,
    /// Output topics by kind (journeys, late, dead letters) and their partition counts.
    topics: [(String, u32); 3],
    next_seq: SequenceCounters,
}

impl Outbox {
    /// A relay for `job` writing to the (existing) output topics `journeys`, `late` and
    /// `dead_letters`, continuing the sequence numbers of a checkpoint.
    pub fn new(
        job: &str,
        sink: Sink,
        [journeys, late, dead_letters]: [&str; 3],
        next_seq: SequenceCounters,
    ) -> Result<Self, OutboxError> {
        let topic = |name: &str| -> Result<(String, u32), OutboxError> {
            Ok((name.to_owned(), sink.partitions(name)?))
        };
        Ok(Outbox {
            job: job.to_owned(),
            job_json: serde_json::to_string(job).expect("a string serializes"),
            topics: [topic(journeys)?, topic(late)?, topic(dead_letters)?],
            sink: Some(sink),
            next_seq,
        })
    }

    /// A copy that places records (continuing `other`'s sequence numbers) but never
    /// publishes, so it opens no partition writer: `other` keeps them.
    pub fn new_placer(other: &Outbox) -> Outbox {
        Outbox {
            job: other.job.clone(),
            job_json: other.job_json.clone(),
            sink: None,
            topics: other.topics.clone(),
            next_seq: other.next_seq.clone(),
        }
    }

    /// The sequence counters to checkpoint.
    pub fn counters(&self) -> &SequenceCounters {
        &self.next_seq
    }

    /// Gives `record` its topic, partition and sequence number (its value is stamped
    /// when published: [`Outbox::published_value`]). Keyed records go to the partition
    /// of their key; a record without key (a dead letter of an unkeyed input) to the
    /// partition of its value's bytes, so placement is deterministic.
    pub fn place(&mut self, record: OutRecord) -> OutboxEntry {
        let (topic, partitions) = match record.kind {
            OutKind::Journey | OutKind::Record(_) => &self.topics[0],
            OutKind::Late => &self.topics[1],
            OutKind::DeadLetter => &self.topics[2],
        };
        let partition = match &record.key {
            Some(key) => partition_for_key(key, *partitions),
            None => partition_of_hash(record.value_hash, *partitions),
        };
        let next = self.next_seq.entry((topic.clone(), partition)).or_insert(1);
        let seq = *next;
        *next += 1;
        OutboxEntry {
            topic: topic.clone(),
            partition,
            seq,
            key: record.key,
            stored: record.stored,
        }
    }

    /// The value of `entry` as published: unpacked and stamped with the job and seq.
    pub fn published_value(&self, dir: &Path, entry: &OutboxEntry) -> Result<Vec<u8>, OutboxError> {
        let mut value = Vec::new();
        write_published(&mut value, dir, &self.job_json, entry)?;
        Ok(value)
    }

    /// Appends committed entries (in sequence order per partition) and syncs them, then
    /// acknowledges them in the store.
    pub fn publish(
        &mut self,
        store: &StateStore,
        entries: &[OutboxEntry],
    ) -> Result<Published, OutboxError> {
        let mut by_partition: BTreeMap<(&str, u32), Vec<&OutboxEntry>> = BTreeMap::new();
        for e in entries {
            by_partition
                .entry((e.topic.as_str(), e.partition))
                .or_default()
                .push(e);
        }
        let (dir, job_json) = (store.dir(), self.job_json.as_str());
        let sink = self.sink.as_mut().expect("a placer never publishes");
        // Injected faults are decided in partition order, before anything is appended, so
        // that `publish:n` fails the n-th partition after the ones before it have landed,
        // however many partitions are appended at once.
        let mut batches = Vec::with_capacity(by_partition.len());
        let mut injected = None;
        for ((topic, partition), batch) in &by_partition {
            if let Err(source) = fail_point(CrashPoint::Publish) {
                injected = Some(sink.injected_fault(topic, *partition, source));
                break;
            }
            // Each value is decompressed straight into its frame; a corrupt entry stops
            // its partition's publication after the entries before it (a restart then
            // republishes from it, and stops there again).
            let records = batch.iter().map(move |e| {
                let write = move |out: &mut Vec<u8>| write_published(out, dir, job_json, e);
                (e.key.as_deref(), write)
            });
            batches.push((*topic, *partition, records));
        }
        sink.append_batches(batches, &|| crash_point(CrashPoint::Publish))??;
        if let Some(e) = injected {
            return Err(e.into());
        }
        crash_point(CrashPoint::Ack);
        for ((topic, partition), batch) in &by_partition {
            let last = batch.last().map_or(0, |e| e.seq);
            store.ack_outbox(topic, *partition, last)?;
        }
        Ok(Published {
            records: entries.len() as u64,
        })
    }

    /// [`Outbox::publish`], retrying an I/O failure (a full disk, a broken connection)
    /// with [`Backoff`] for up to `retry_for`; `on_retry` hears of each failure and the
    /// delay before the next attempt. A retry first reads back what the failed attempt
    /// did publish (as [`Outbox::recover`] does), so nothing goes out twice.
    pub fn publish_retrying(
        &mut self,
        store: &StateStore,
        entries: &[OutboxEntry],
        retry_for: Duration,
        mut on_retry: impl FnMut(&SinkError, Duration),
    ) -> Result<Published, OutboxError> {
        let started = Instant::now();
        let mut backoff = Backoff::default();
        let mut remaining = Cow::Borrowed(entries);
        loop {
            let failure = match self.publish(store, &remaining) {
                Ok(_) => {
                    return Ok(Published {
                        records: entries.len() as u64,
                    });
                }
                Err(OutboxError::Sink(e)) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            let delay = backoff.failed();
            let waited = started.elapsed();
            if waited + delay > retry_for {
                return Err(OutboxError::GaveUp {
                    attempts: backoff.failures(),
                    waited_ms: waited.as_millis() as u64,
                    source: failure,
                });
            }
            on_retry(&failure, delay);
            std::thread::sleep(delay);
            // A writer whose append failed may hold a torn tail; a new one truncates it.
            if let Some(sink) = &mut self.sink {
                sink.reset();
            }
            remaining = Cow::Owned(self.unpublished(store, &remaining)?);
        }
    }

    /// The entries a failed publication did not append; the ones it did are
    /// acknowledged.
    fn unpublished(
        &mut self,
        store: &StateStore,
        entries: &[OutboxEntry],
    ) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut published: BTreeMap<(&str, u32), u64> = BTreeMap::new();
        for e in entries {
            if let std::collections::btree_map::Entry::Vacant(v) =
                published.entry((e.topic.as_str(), e.partition))
            {
                let seq = self
                    .last_published(&e.topic, e.partition)?
                    .map_or(0, |(seq, _)| seq);
                v.insert(seq);
            }
        }
        for ((topic, partition), seq) in &published {
            if entries
                .iter()
                .any(|e| e.topic == *topic && e.partition == *partition && e.seq <= *seq)
            {
                store.ack_outbox(topic, *partition, *seq)?;
            }
        }
        Ok(entries
            .iter()
            .filter(|e| e.seq > published[&(e.topic.as_str(), e.partition)])
            .cloned()
            .collect())
    }

    /// Republishes what a previous run committed but did not (completely) publish, and
    /// checks that no other instance writes this job's output. `fresh` says the store
    /// holds no checkpoint yet.
    pub fn recover(&mut self, store: &StateStore, fresh: bool) -> Result<u64, OutboxError> {
        let pending: Vec<OutboxEntry> = store.outbox().collect::<Result<_, _>>()?;
        // A corrupt entry stops recovery before anything is republished.
        for e in &pending {
            self.published_value(store.dir(), e)?;
        }
        let mut highest_committed = self.next_seq.clone();
        for e in &pending {
            let next = highest_committed
                .entry((e.topic.clone(), e.partition))
                .or_insert(0);
            *next = (*next).max(e.seq + 1);
            let own = self
                .next_seq
                .entry((e.topic.clone(), e.partition))
                .or_insert(1);
            *own = (*own).max(e.seq + 1);
        }
        // Every partition of the current output topics, and every partition a pending
        // entry was placed in (the topology's outputs may have changed since).
        let mut to_check: Vec<(String, u32)> = Vec::new();
        for (topic, partitions) in &self.topics {
            to_check.extend((0..*partitions).map(|p| (topic.clone(), p)));
        }
        to_check.extend(pending.iter().map(|e| (e.topic.clone(), e.partition)));
        let mut published: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for (topic, partition) in to_check {
            if published.contains_key(&(topic.clone(), partition)) {
                continue; // late or dead letters share the journeys topic
            }
            let last = self.last_published(&topic, partition)?;
            published.insert((topic.clone(), partition), last.map_or(0, |(seq, _)| seq));
            let Some((seq, offset)) = last else {
                continue;
            };
            if fresh {
                return Err(OutboxError::StateMissing {
                    dir: store.dir().to_path_buf(),
                    job: self.job.clone(),
                    topic,
                    partition,
                    seq,
                    offset,
                });
            }
            let committed = highest_committed
                .get(&(topic.clone(), partition))
                .map_or(0, |next| next.saturating_sub(1));
            if seq > committed {
                return Err(OutboxError::ForeignSequence {
                    job: self.job.clone(),
                    topic,
                    partition,
                    offset,
                    found: seq,
                    committed,
                });
            }
            // Published before the crash, not yet acknowledged.
            store.ack_outbox(&topic, partition, seq)?;
        }
        let republish: Vec<OutboxEntry> = pending
            .into_iter()
            .filter(|e| {
                e.seq
                    > published
                        .get(&(e.topic.clone(), e.partition))
                        .copied()
                        .unwrap_or(0)
            })
            .collect();
        let n = republish.len() as u64;
        if n > 0 {
            tracing::info!(
                job = %self.job,
                records = n,
                "republishing committed output a previous run did not publish"
            );
            self.publish(store, &republish)?;
        }
        Ok(n)
    }

    /// The last record of this job in an output partition: (seq, offset). Reads backwards
    /// from the end in growing windows, so the usual case (the last record is ours)
    /// reads a few records.
    fn last_published(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, u64)>, OutboxError> {
        let sink = self.sink.as_ref().expect("a placer never reads back");
        let (start, mut end) = sink.offsets(topic, partition)?;
        let mut window = 16u64;
        while end > start {
            let from = end.saturating_sub(window).max(start);
            let mut found = None;
            sink.read(topic, partition, from, end, |offset, value| {
                if let Ok(Stamped {
                    producer: Some(stamp),
                }) = serde_json::from_slice::<Stamped>(value)
                    && stamp.job == self.job
                {
                    found = Some((stamp.seq, offset));
                }
            })?;
            if found.is_some() {
                return Ok(found);
            }
            end = from;
            window = window.saturating_mul(4);
        }
        Ok(None)
    }
}

/// Bytes [`stamp_from`] adds besides the job's JSON string: the member name and punctuation,
/// and at most 20 digits of seq.
const STAMP_ROOM: usize = 48;

/// Appends `entry`'s value as published to `out`: unpacked, then stamped.
fn write_published(
    out: &mut Vec<u8>,
    dir: &Path,
    job_json: &str,
    entry: &OutboxEntry,
) -> Result<(), OutboxError> {
    let start = out.len();
    unpack_into(&entry.stored, out, STAMP_ROOM + job_json.len()).map_err(|reason| {
        OutboxError::CorruptEntry {
            dir: dir.to_path_buf(),
            topic: entry.topic.clone(),
            partition: entry.partition,
            seq: entry.seq,
            reason,
        }
    })?;
    stamp_from(out, start, job_json, entry.seq);
    Ok(())
}

/// Appends `"producer":{"job":<job_json>,"seq":<seq>}` to the JSON object that starts at
/// `start` and ends `value`.
fn stamp_from(value: &mut Vec<u8>, start: usize, job_json: &str, seq: u64) {
    let empty = value.len() - start <= 2;
    if value.len() > start && value.last() == Some(&b'}') {
        value.pop();
    }
    let sep = if empty { "" } else { "," };
    // Writing to a Vec cannot fail.
    let _ = write!(
        value,
        "{sep}\"producer\":{{\"job\":{job_json},\"seq\":{seq}}}}}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Log, WriterOptions};
    use crate::source::Backend;
    use crate::state::{Checkpoint, StateOptions};
    use tempfile::TempDir;

    fn sink(log: &Log) -> Sink {
        Sink::new(&Backend::Embedded(log.clone()), Default::default())
    }

    fn setup() -> (TempDir, Log, StateStore) {
        let dir = TempDir::new().unwrap();
        let log = Log::open(dir.path().join("log")).unwrap();
        for t in ["j", "l", "d"] {
            log.create_topic(t, 2).unwrap();
        }
        let store =
            StateStore::open(&dir.path().join("state"), 7, StateOptions::default()).unwrap();
        (dir, log, store)
    }

    fn record(kind: OutKind, key: &str, n: u32) -> OutRecord {
        OutRecord::new(
            kind,
            Some(key.as_bytes().to_vec()),
            format!("{{\"n\":{n}}}").into_bytes(),
            0,
        )
    }

    fn published(log: &Log, topic: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for p in 0..log.topic(topic).unwrap().partitions {
            for r in log
                .reader(topic, p, 0)
                .unwrap()
                .read_batch(usize::MAX)
                .unwrap()
            {
                out.push(serde_json::from_slice(&r.value).unwrap());
            }
        }
        out
    }

    fn commit(store: &StateStore, entries: &[OutboxEntry]) {
        store
            .commit(Checkpoint {
                outbox: entries,
                ..Checkpoint::default()
            })
            .unwrap();
    }

    #[test]
    fn stamps_and_numbers_per_partition() {
        let (_d, log, store) = setup();
        let mut ob = Outbox::new(
            "job \"x\"",
            sink(&log),
            ["j", "l", "d"],
            SequenceCounters::new(),
        )
        .unwrap();
        let a = ob.place(record(OutKind::Journey, "k", 1));
        let b = ob.place(record(OutKind::Journey, "k", 2));
        let c = ob.place(record(OutKind::Late, "k", 3));
        assert_eq!((a.topic.as_str(), a.seq), ("j", 1));
        assert_eq!(
            (b.topic.as_str(), b.seq, b.partition),
            ("j", 2, a.partition)
        );
        assert_eq!((c.topic.as_str(), c.seq), ("l", 1));
        assert_eq!(
            String::from_utf8(ob.published_value(store.dir(), &a).unwrap()).unwrap(),
            r#"{"n":1,"producer":{"job":"job \"x\"","seq":1}}"#
        );
        let mut empty = b"{}".to_vec();
        stamp_from(&mut empty, 0, "\"j\"", 9);
        assert_eq!(empty, br#"{"producer":{"job":"j","seq":9}}"#);
    }

    #[test]
    fn a_corrupt_entry_stops_publication_after_the_entries_before_it() {
        let (_d, log, store) = setup();
        let mut ob =
            Outbox::new("job", sink(&log), ["j", "l", "d"], SequenceCounters::new()).unwrap();
        let mut entries: Vec<OutboxEntry> = (1..=3)
            .map(|n| ob.place(record(OutKind::Journey, "k", n)))
            .collect();
        entries[1].stored.truncate(3);
        commit(&store, &entries);
        let err = ob.publish(&store, &entries).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {}: outbox entry seq 2 of output topic `j` partition {} is corrupt (3 bytes, too short for a packed value); restore the state directory or replay into a new one",
                store.dir().display(),
                entries[0].partition
            )
        );
        // The entry before it went out whole and stamped; nothing after it did.
        assert_eq!(
            published(&log, "j"),
            vec![serde_json::json!({"n": 1, "producer": {"job": "job", "seq": 1}})]
        );
    }

    #[test]
    fn recovery_republishes_only_what_is_missing() {
        let (_d, log, store) = setup();
        let mut ob =
            Outbox::new("job", sink(&log), ["j", "l", "d"], SequenceCounters::new()).unwrap();
        let entries: Vec<OutboxEntry> = (0..10)
            .map(|n| ob.place(record(OutKind::Journey, &format!("k{}", n % 3), n)))
            .collect();
        commit(&store, &entries);
        // A crash after publishing the first half of partition batches: simulate by
        // publishing some entries without acknowledging them.
        let first_partition = entries[0].partition;
        let half: Vec<OutboxEntry> = entries
            .iter()
            .filter(|e| e.partition == first_partition)
            .cloned()
            .collect();
        let mut w = log
            .writer("j", first_partition, WriterOptions::default())
            .unwrap();
        let values: Vec<Vec<u8>> = half
            .iter()
            .map(|e| ob.published_value(store.dir(), e).unwrap())
            .collect();
        w.append(
            half.iter()
                .zip(&values)
                .map(|(e, v)| (e.key.as_deref(), v.as_slice())),
        )
        .unwrap();
        drop(w);

        let mut again =
            Outbox::new("job", sink(&log), ["j", "l", "d"], ob.counters().clone()).unwrap();
        let n = again.recover(&store, false).unwrap();
        assert_eq!(n as usize, entries.len() - half.len());
        let mut ns: Vec<i64> = published(&log, "j")
            .iter()
            .map(|v| v["n"].as_i64().unwrap())
            .collect();
        ns.sort();
        assert_eq!(ns, (0..10).collect::<Vec<_>>());
        assert_eq!(store.outbox().count(), 0);
        // Nothing left to do the second time.
        let mut third =
            Outbox::new("job", sink(&log), ["j", "l", "d"], again.counters().clone()).unwrap();
        assert_eq!(third.recover(&store, false).unwrap(), 0);
        assert_eq!(published(&log, "j").len(), 10);
    }

    #[test]
    fn a_foreign_sequence_or_a_lost_state_is_an_error() {
        let (d, log, store) = setup();
        let mut ob =
            Outbox::new("job", sink(&log), ["j", "l", "d"], SequenceCounters::new()).unwrap();
        let e = ob.place(record(OutKind::Journey, "k", 1));
        commit(&store, std::slice::from_ref(&e));
        ob.publish(&store, std::slice::from_ref(&e)).unwrap();
        let counters = ob.counters().clone();
        drop(ob); // releases its partition writers
        // Another instance wrote seq 5 where this checkpoint only reached 1.
        let mut w = log
            .writer("j", e.partition, WriterOptions::default())
            .unwrap();
        w.append([(
            Some(&b"k"[..]),
            &br#"{"producer":{"job":"job","seq":5}}"#[..],
        )])
        .unwrap();
        drop(w);
        let mut again = Outbox::new("job", sink(&log), ["j", "l", "d"], counters).unwrap();
        assert_eq!(
            again.recover(&store, false).unwrap_err().to_string(),
            format!(
                "output topic `j` partition {} holds record seq 5 of job `job` at offset 1, but this job's checkpoint only reached seq 1: another instance of job `job` is writing to this partition (run one instance per output partition)",
                e.partition
            )
        );
        let fresh = StateStore::open(&d.path().join("fresh"), 7, StateOptions::default()).unwrap();
        let mut new =
            Outbox::new("job", sink(&log), ["j", "l", "d"], SequenceCounters::new()).unwrap();
        assert_eq!(
            new.recover(&fresh, true).unwrap_err().to_string(),
            format!(
                "state directory {} holds no checkpoint, but output topic `j` partition {} already holds records of job `job` (seq 5 at offset 1): starting from scratch would publish them again; restore the state directory, or replay into a new state directory and another output topic",
                d.path().join("fresh").display(),
                e.partition
            )
        );
        // Other jobs' records are not ours.
        let mut other = Outbox::new(
            "other",
            sink(&log),
            ["j", "l", "d"],
            SequenceCounters::new(),
        )
        .unwrap();
        assert_eq!(other.recover(&fresh, true).unwrap(), 0);
    }
}
