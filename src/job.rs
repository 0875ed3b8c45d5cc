//! The job runtime: one topology, running. It wires the data flow's stages together:
//!
//! ```text
//! source thread:    readers of every source partition → decode → watermarks ──┐ bounded
//!                   dead letters, checkpoint barriers ──────────────────────┐ │ channels
//! shard threads:    one operator each (on_event / on_watermark) ◀────────────┼─┘
//!                   records, changed key states at each barrier ──────────┐ │
//! committer thread: assembles a checkpoint from every stage's part ◀──────┴─┘
//!                   → ONE RocksDB batch (state, positions, watermarks, outbox)
//!                   → outbox relay appends it to the output topics, then acks
//! ```
//!
//! Invariants:
//! - A key always goes to the same shard, and every shard receives the same sequence of
//!   watermarks, placed between its events exactly where the source stage computed them. So
//!   each key's operator sees the same input whatever the shard count, and emits the same
//!   records in the same order: results do not depend on the number of shards.
//! - Sources are read in slices of append time (every partition up to the same horizon);
//!   the watermark advances and checkpoints are taken only between slices. A checkpoint
//!   is thus a point the uninterrupted run also passed through with the same state, and
//!   a bounded run resumed from it produces exactly what the uninterrupted run produces.
//! - A checkpoint barrier travels in-band behind the events and watermark that precede it:
//!   each shard's part (its output since the previous barrier and the states of the keys
//!   it changed) is exactly its effect of the input before the positions the source
//!   reports for that barrier. The committer writes all parts of one barrier in one batch.
//! - Output reaches the output topics only from a committed checkpoint (see
//!   [`crate::outbox`]): a crash anywhere loses nothing and publishes nothing twice.
//! - Operators keep their state in memory as a bounded cache over RocksDB: a key's state
//!   is written behind at checkpoints, and a key is evicted only once the checkpoint
//!   holding its current state is committed.
//! - Channels are bounded: a slow committer back-pressures the shards, which back-pressure
//!   the source. No lock is held across blocking calls.
//! - Processing time is read here, at the edge, and injected into the watermark tracker;
//!   operators never see a clock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::decode::{DeadLetter, DecoderConfig, Event};
use crate::engine::{
    Checkpointed, CompleteConfig, CompleteOperator, IntervalConfig, IntervalOperator, KeyLoader,
    LinkConfig, Operator, Output, SessionConfig, SessionOperator, WindowConfig, WindowOperator,
};
use crate::fault::{CrashPoint, crash_point, fail_point, stall_point};
use crate::log::{LogError, partition_for_key};
use crate::metrics::{Metrics, Telemetry};
use crate::outbox::{OutKind, OutRecord, Outbox, OutboxError, SequenceCounters};
use crate::replay::Range;
use crate::sink::{ProducerOptions, Sink};
use crate::source::{Assignment, Backend, PartitionInput, SourceError as ReadError};
use crate::state::{
    Checkpoint, KeyWrites, OutboxEntry, Persist, StateError, StateOptions, StateStore, encode,
};
use crate::time::{
    Backoff, PartitionId, WatermarkConfig, WatermarkSnapshot, Watermarks, wall_clock_ms,
};
use crate::topology::{Broker, Correlation, Plan};

/// Why a job could not run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {job}: reading {backend}")]
    Source {
        job: String,
        backend: String,
        #[source]
        source: Box<ReadError>,
    },
    #[error("job {job}")]
    State {
        job: String,
        #[source]
        source: StateError,
    },
    #[error("job {job}")]
    Outbox {
        job: String,
        #[source]
        source: Box<OutboxError>,
    },
    #[error("job {job}: {message}")]
    Operator { job: String, message: String },
    #[error(
        "job {job}: the checkpoint in {state} resumes topic `{topic}` partition {partition} at offset {position}, but the log ends at offset {end}: the log was reset or replaced; replay into a new state directory"
    )]
    PositionBeyondEnd {
        job: String,
        state: PathBuf,
        topic: String,
        partition: u32,
        position: u64,
        end: u64,
    },
    #[error("job {job}: {message}")]
    Assignment { job: String, message: String },
    #[error("job {job}: the {stage} stage stopped unexpectedly")]
    StageFailed { job: String, stage: &'static str },
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop at the end offsets present at start, close every window and return.
    pub bounded: bool,
    /// A replay: read exactly this range (implies bounded). Partitions the checkpoint
    /// has a position for resume there; a resumed replay keeps the range it started with.
    pub range: Option<Range>,
    /// Counts input records as they are read, for a progress display.
    pub progress: Option<Arc<AtomicU64>>,
    /// Watermark alignment (replays catching up): a partition whose watermark is more
    /// than this ahead of the job watermark is not read until the job watermark follows.
    pub align: Option<Duration>,
    /// The producer name stamped on published records (default: the topology's name).
    /// A replay has its own, so its records are never taken for the live job's.
    pub producer: Option<String>,
    /// Metrics and health to report into (`--metrics-addr`).
    pub telemetry: Option<Telemetry>,
    /// Scale-out: read only these partitions of every source (`--instance`,
    /// `--partitions`). The producer name then carries the assignment, so instances
    /// never take each other's output records for their own.
    pub assignment: Option<Assignment>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub records_in: u64,
    pub journeys: u64,
    pub late: u64,
    pub duplicates: u64,
    /// Events of an `interval` join that left its state without being in any record
    /// (an inner link found them no partner); 0 for other kinds.
    pub unjoined: u64,
    pub dead_letters: u64,
    pub shards: usize,
    pub millis: u64,
    /// Checkpoints committed by this run.
    pub checkpoints: u64,
    /// Whether the run resumed from a checkpoint.
    pub resumed: bool,
    /// Output records a previous run had committed but not published, published now.
    pub republished: u64,
    /// Most key states stored by a checkpoint (exact: keys with open windows, remembered
    /// journeys or live dedup ids).
    pub state_keys_peak: u64,
    /// Largest RocksDB size estimate seen at a checkpoint: live SST data plus memtables
    /// (which hold deleted entries until flushed, so this over-estimates).
    pub state_bytes_peak: u64,
    /// Most windows open at once (per checkpoint interval, the sum of each shard's peak).
    pub open_windows_peak: u64,
    /// Bytes the checkpoints wrote: their RocksDB batches (what the WAL and memtables
    /// took, inline outbox journals included; flushes and compactions come on top) and
    /// their outbox journal files.
    pub checkpoint_bytes: u64,
    /// Publication attempts repeated after a failure (docs/semantics.md, "Delivery").
    pub sink_retries: u64,
    /// Source reads repeated after a failure.
    pub source_retries: u64,
    /// From the read of the input that completed a correlation record (for a journey:
    /// the slice whose watermark closed it) to the record's publication; none when the
    /// run published no correlation record.
    pub latency_ms: Option<LatencySummary>,
    /// `latency_ms` in its three consecutive parts.
    pub latency_parts_ms: LatencyParts,
    /// The output topics written: journeys, late reports, dead letters.
    pub outputs: Vec<String>,
    /// CPU time by stage.
    pub cpu: StageCpu,
}

/// The CPU time a run used, by stage, in ms: where its work goes, and so how much more
/// shards can speed it up (only `shards_ms` divides among them; docs/semantics.md,
/// "Running a job"). Each stage's thread reads its own CPU clock when it ends;
/// `other_ms` is the rest of the process's CPU time over the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StageCpu {
    /// Reading, decoding and watermarks (the source thread).
    pub source_ms: u64,
    /// The operators, all shards together.
    pub shards_ms: u64,
    /// Gathering and committing checkpoints (the committer thread).
    pub committer_ms: u64,
    /// Appending committed output and acknowledging it (the publisher thread).
    pub publisher_ms: u64,
    /// Everything else: RocksDB's flushes and compactions, the sink's parallel appends,
    /// opening the store and the outputs.
    pub other_ms: u64,
}

/// CPU time of the calling thread so far, in ms (0 where the clock cannot be read).
fn thread_cpu_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// CPU time of the whole process so far (user + system, every thread, ended ones too),
/// in ms (0 where it cannot be read).
fn process_cpu_ms() -> u64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Percentiles of [`Summary::latency_ms`], exact to the millisecond up to a minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencySummary {
    pub records: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Where [`Summary::latency_ms`] goes, in three consecutive parts (for each record they
/// add up to its latency: all four are read from the same clock in whole ms); each
/// part's own percentiles, so the parts' p99s need not add up to the whole's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencyParts {
    /// From the read to the moment the committer holds the record's whole checkpoint:
    /// the shard's work, the wait for the next checkpoint, its barrier's way through
    /// every shard, and a wait while two earlier checkpoints are uncommitted.
    pub checkpoint: Option<LatencySummary>,
    /// Committing that checkpoint: the write batch with its WAL synced, and the outbox
    /// journal file when there is one.
    pub commit: Option<LatencySummary>,
    /// From the commit to the acknowledged append of the record, the wait for the
    /// previous checkpoint's publication included.
    pub publish: Option<LatencySummary>,
}

/// A count per millisecond of latency up to [`LatencyTally::EXACT_MS`], beyond it only
/// the count and the maximum: exact percentiles in bounded memory, however long a job
/// runs.
#[derive(Debug, Default)]
struct LatencyTally {
    counts: Vec<u64>,
    beyond: u64,
    records: u64,
    max: u64,
}

impl LatencyTally {
    const EXACT_MS: u64 = 60_000;

    fn record(&mut self, ms: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; Self::EXACT_MS as usize + 1];
        }
        match self.counts.get_mut(ms as usize) {
            Some(n) => *n += 1,
            None => self.beyond += 1,
        }
        self.records += 1;
        self.max = self.max.max(ms);
    }

    /// The smallest latency with at least `q` of the records at or below it.
    fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.records as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return ms as u64;
            }
        }
        self.max
    }

    fn summary(&self) -> Option<LatencySummary> {
        (self.records > 0).then(|| LatencySummary {
            records: self.records,
            p50: self.quantile(0.5),
            p99: self.quantile(0.99),
            max: self.max,
        })
    }
}

impl Summary {
    pub fn events_per_second(&self) -> f64 {
        self.records_in as f64 * 1000.0 / self.millis.max(1) as f64
    }
}

/// What the committer checkpoints besides state, positions and outbox (read by
/// `braid inspect` too: [`JobSnapshot::read`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobSnapshot {
    /// The last committed checkpoint's number.
    pub epoch: u64,
    pub watermarks: WatermarkSnapshot,
    /// Next output sequence number per output topic/partition.
    pub sequences: Vec<(String, u32, u64)>,
    /// A replay's end offsets, kept so that a resumed replay ends where it would have.
    pub ends: Vec<(String, u32, u64)>,
    /// The name stamped on published records (the job's, or a replay's own).
    pub producer: String,
    /// The output topics (journeys, late, dead letters), so that a resumed replay
    /// continues into the topics it started with.
    pub outputs: Vec<String>,
}

impl JobSnapshot {
    /// The snapshot of the last committed checkpoint, if there is one.
    pub fn read(store: &StateStore) -> Result<Option<JobSnapshot>, StateError> {
        store.watermarks()
    }
}

/// A message from the source stage to a shard.
enum ShardMsg {
    Event(Event),
    /// The wall clock (ms) when the events that follow were read: the birth time of the
    /// records they complete (for the latency figures).
    Read(i64),
    /// A new job watermark, and the wall clock (ms) of the slice that produced it.
    Watermark(i64, i64),
    /// Checkpoint `n`: report what changed since the previous one.
    Barrier(u64),
}

/// A message to the committer, from the source (slot `shards`) or a shard (its index).
enum ToCommitter {
    Records {
        from: usize,
        records: Vec<OutRecord>,
    },
    Barrier {
        from: usize,
        epoch: u64,
        part: Part,
    },
}

/// One stage's share of a checkpoint.
enum Part {
    Shard {
        writes: KeyWrites,
        duplicates: u64,
        unjoined: u64,
        /// Events dead-lettered because their key held too many (`Output::OverLimit`).
        over_limit: u64,
        /// Most windows open at once since the previous barrier.
        open_windows_peak: usize,
        /// Keys with state once this part is committed (= key states stored).
        keys: usize,
    },
    Source {
        positions: Vec<(String, u32, u64)>,
        watermarks: WatermarkSnapshot,
    },
}

/// The Fluvio producer's batching, from the topology's broker, and its request limit,
/// from the largest output record.
fn producer_options(plan: &Plan) -> ProducerOptions {
    match &plan.broker {
        Broker::Fluvio {
            linger,
            batch_bytes,
            ..
        } => ProducerOptions {
            linger: *linger,
            batch_bytes: usize::try_from(*batch_bytes).unwrap_or(usize::MAX),
            max_record_bytes: usize::try_from(plan.limits.max_output_record_bytes)
                .unwrap_or(usize::MAX),
        },
        Broker::Embedded { .. } => ProducerOptions::default(),
    }
}

/// Events or records are sent in batches of about this many, to keep channel overhead off
/// the per-event path.
const BATCH: usize = 1024;
/// Batches in flight per channel (the backpressure bound).
const CHANNEL_BATCHES: usize = 8;
/// Keys whose state a shard keeps in memory; beyond this, clean keys are evicted to
/// RocksDB (their state is read back when an event or a timer needs it).
const CACHED_KEYS_PER_SHARD: usize = 1 << 20;
/// Checkpoints begun and not yet committed, at most, before an interval's checkpoint
/// waits: one being committed while the next is gathered. When commits are slower than
/// the interval, checkpoints then grow instead of queueing up behind each other, so a
/// live job can ask for checkpoints every few ms (scripts/latency.sh: 3 ms).
const CHECKPOINTS_IN_FLIGHT: u64 = 2;

/// Runs `plan` against `backend` (the embedded log or a Fluvio cluster) until the input
/// ends (bounded) or `stop` is set. State lives in `plan.state`; a run resumes from the
/// checkpoint it finds there.
pub fn run(
    plan: &Plan,
    backend: &Backend,
    opts: RunOptions,
    stop: &AtomicBool,
) -> Result<Summary, JobError> {
    let job = plan.name.clone();
    let read_err = |source| JobError::Source {
        job: job.clone(),
        backend: backend.describe(),
        source: Box::new(source),
    };
    let state_err = |source| JobError::State {
        job: job.clone(),
        source,
    };
    let outbox_err = |source| JobError::Outbox {
        job: job.clone(),
        source: Box::new(source),
    };
    // Fail on an unsupported kind or a bad configuration before touching any state.
    AnyOperator::build(plan)?;
    if let Some(a) = &opts.assignment {
        let counts = plan
            .sources
            .iter()
            .map(|s| Ok((s.topic.clone(), backend.partitions(&s.topic)?)))
            .collect::<Result<Vec<_>, ReadError>>()
            .map_err(read_err)?;
        a.check(&counts).map_err(|message| JobError::Assignment {
            job: job.clone(),
            message,
        })?;
    }
    let started = Instant::now();
    let cpu_at_start = process_cpu_ms();
    let shards = plan.shards.max(1);

    let store = Arc::new(
        StateStore::open(&plan.state, plan.fingerprint().0, state_options(plan))
            .map_err(state_err)?,
    );
    let snapshot: Option<JobSnapshot> = store.watermarks().map_err(state_err)?;
    let resumed = snapshot.is_some();
    let snapshot = snapshot.unwrap_or_default();
    // A resumed replay keeps its producer name and output topics, whatever this
    // invocation says; a live job takes its outputs from the topology (entries committed
    // for older topics still go there, see Outbox::recover).
    let mut plan = plan.clone();
    if resumed
        && !snapshot.ends.is_empty()
        && let [journeys, late, dead_letters] = snapshot.outputs.as_slice()
    {
        plan.output.journeys = journeys.clone();
        plan.output.late = late.clone();
        plan.output.dead_letters = dead_letters.clone();
    }
    let plan = &plan;
    let producer = if resumed && !snapshot.producer.is_empty() {
        snapshot.producer.clone()
    } else {
        opts.producer
            .clone()
            .unwrap_or_else(|| match &opts.assignment {
                Some(a) => format!("{}/{}", plan.name, a.label()),
                None => plan.name.clone(),
            })
    };
    let outputs = vec![
        plan.output.journeys.clone(),
        plan.output.late.clone(),
        plan.output.dead_letters.clone(),
    ];

    // Output topics are created when missing, with the first source's partition count.
    let first = backend
        .partitions(&plan.sources[0].topic)
        .map_err(read_err)?;
    for topic in [
        &plan.output.journeys,
        &plan.output.late,
        &plan.output.dead_letters,
    ] {
        if !backend.has_topic(topic).map_err(read_err)? {
            backend.create_topic(topic, first).map_err(read_err)?;
        }
    }
    let sequences: SequenceCounters = snapshot
        .sequences
        .iter()
        .map(|(t, p, s)| ((t.clone(), *p), *s))
        .collect();
    let mut outbox = Outbox::new(
        &producer,
        Sink::new(backend, producer_options(plan)).with_threads(shards),
        [
            &plan.output.journeys,
            &plan.output.late,
            &plan.output.dead_letters,
        ],
        sequences,
    )
    .map_err(outbox_err)?;
    let republished = outbox.recover(&store, !resumed).map_err(outbox_err)?;
    if resumed {
        tracing::info!(job = %job, state = %plan.state.display(), epoch = snapshot.epoch, republished, "resuming from checkpoint");
    }

    // A replay's range; a resumed replay keeps the end it started with.
    let ends: Option<BTreeMap<(String, u32), u64>> = if !snapshot.ends.is_empty() {
        Some(
            snapshot
                .ends
                .iter()
                .map(|(t, p, o)| ((t.clone(), *p), *o))
                .collect(),
        )
    } else {
        opts.range.as_ref().map(|r| r.to.clone())
    };
    let stored_ends: Vec<(String, u32, u64)> = ends
        .iter()
        .flatten()
        .map(|((t, p), o)| (t.clone(), *p, *o))
        .collect();
    let committed = Arc::new(AtomicU64::new(snapshot.epoch));
    let bounded = opts.bounded || ends.is_some();
    // A live job's read positions are also Fluvio consumer offsets, under its producer
    // name (a replay or bounded run is nobody's consumer).
    let consumer = (!bounded).then(|| crate::fluvio::consumer_name(&producer));
    let telemetry = opts.telemetry.clone();
    let retry_for = plan.output.retry_for;
    let (commit_tx, commit_rx) = sync_channel::<ToCommitter>(CHANNEL_BATCHES * (shards + 1));
    let committer = {
        let store = store.clone();
        let committed = committed.clone();
        std::thread::Builder::new()
            .name("braid-commit".into())
            .spawn(move || {
                let identity = Identity {
                    ends: stored_ends,
                    producer,
                    outputs,
                };
                committer_stage(
                    &store, outbox, commit_rx, shards, &committed, identity, retry_for, telemetry,
                )
            })
            .expect("spawn committer thread")
    };
    let mut shard_txs = Vec::with_capacity(shards);
    let mut shard_handles = Vec::with_capacity(shards);
    let open_windows: Vec<Arc<AtomicUsize>> = (0..shards).map(|_| Arc::default()).collect();
    for (i, open) in open_windows.iter().enumerate() {
        let (tx, rx) = sync_channel::<Vec<ShardMsg>>(CHANNEL_BATCHES);
        let op = AnyOperator::build(plan)?;
        let shard = Shard {
            index: i,
            count: shards,
            store: store.clone(),
            committed: committed.clone(),
            out: commit_tx.clone(),
            metrics: opts.telemetry.as_ref().map(|t| t.metrics.clone()),
            kind: plan.correlation.kind(),
            max_record_bytes: usize::try_from(plan.limits.max_output_record_bytes)
                .unwrap_or(usize::MAX),
            topics: plan
                .sources
                .iter()
                .map(|s| Arc::from(s.topic.as_str()))
                .collect(),
            open: open.clone(),
        };
        shard_txs.push(tx);
        shard_handles.push(op.spawn(shard, rx));
    }
    let source_cpu_at_start = thread_cpu_ms();
    let source = SourceStage {
        plan,
        backend,
        bounded,
        assignment: opts.assignment.as_ref(),
        consumer: consumer.as_deref(),
        from: opts.range.as_ref().map(|r| &r.from),
        ends: ends.as_ref(),
        progress: opts.progress.as_deref(),
        align: opts
            .align
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        open_windows: &open_windows,
        stop,
        shards: &shard_txs,
        committer: &commit_tx,
        committed: &committed,
        slot: shards,
        telemetry: opts.telemetry.as_ref(),
    }
    .run(&store, resumed.then_some(&snapshot));
    let source_cpu = thread_cpu_ms().saturating_sub(source_cpu_at_start);
    drop(shard_txs);
    drop(commit_tx);
    let mut shard_error = None;
    let mut shards_cpu = 0;
    for h in shard_handles {
        match h.join() {
            Ok((Ok(()), cpu)) => shards_cpu += cpu,
            Ok((Err(e), _)) => shard_error = Some(state_err(e)),
            Err(_) => {
                shard_error = Some(JobError::StageFailed {
                    job: job.clone(),
                    stage: "shard",
                })
            }
        }
    }
    let committed = committer.join();
    let source = source.map_err(|e| match e {
        StageError::Read(e) => read_err(e),
        StageError::Job(e) => *e,
    })?;
    if let Some(e) = shard_error {
        return Err(e);
    }
    let counts = match committed {
        Ok(c) => c.map_err(outbox_err)?,
        Err(_) => {
            return Err(JobError::StageFailed {
                job,
                stage: "committer",
            });
        }
    };
    Ok(Summary {
        records_in: source.records_in,
        journeys: counts.journeys,
        late: counts.late,
        duplicates: counts.duplicates,
        unjoined: counts.unjoined,
        dead_letters: source.dead_letters + counts.over_limit,
        shards,
        millis: started.elapsed().as_millis() as u64,
        checkpoints: counts.checkpoints,
        resumed,
        republished,
        state_keys_peak: counts.state_keys_peak,
        state_bytes_peak: counts.state_bytes_peak,
        checkpoint_bytes: counts.checkpoint_bytes,
        open_windows_peak: counts.open_windows_peak,
        sink_retries: counts.sink_retries,
        source_retries: source.retries,
        latency_ms: counts.latency,
        latency_parts_ms: counts.latency_parts,
        outputs: vec![
            plan.output.journeys.clone(),
            plan.output.late.clone(),
            plan.output.dead_letters.clone(),
        ],
        cpu: StageCpu {
            source_ms: source_cpu,
            shards_ms: shards_cpu,
            committer_ms: counts.committer_cpu_ms,
            publisher_ms: counts.publisher_cpu_ms,
            other_ms: process_cpu_ms()
                .saturating_sub(cpu_at_start)
                .saturating_sub(
                    source_cpu + shards_cpu + counts.committer_cpu_ms + counts.publisher_cpu_ms,
                ),
        },
    })
}

struct Input {
    id: PartitionId,
    topic: String,
    reader: PartitionInput,
    /// Gaps of the reader's Fluvio stream already counted in the metrics.
    gaps: u64,
    /// Bounded runs stop here.
    end: u64,
    done: bool,
    /// Held back by watermark alignment for this slice.
    paused: bool,
    /// Value bytes read and not yet added to the metrics.
    bytes: u64,
    /// Records read and not yet added to the metrics.
    records: u64,
    metrics: Option<InputMetrics>,
    retry: Retrying,
}

impl Input {
    /// Whether the partition is read in this pass.
    fn readable(&self, now: Instant) -> bool {
        !self.done && !self.paused && self.retry.due(now)
    }
}

/// A bounded run gives up on a partition after this many failed reads in a row (about
/// half a minute of backoff); a live run retries for as long as it runs.
const BOUNDED_READ_ATTEMPTS: u32 = 10;

/// Read failures of one source partition. An I/O error (a disk or network fault) is
/// retried with [`Backoff`]: logged, counted, and shown by `/readyz` until a read
/// succeeds. Meanwhile the partition is not caught up, so it holds the watermark back
/// and no event of it can be judged late because of the fault.
struct Retrying {
    topic: String,
    partition: u32,
    /// To name an injected fault as the backend would.
    backend: Backend,
    /// Set while reads fail: the failures so far and when to try next.
    failing: Option<(Backoff, Instant)>,
    /// Reads repeated after a failure, in all.
    retries: u64,
}

impl Retrying {
    fn new(topic: &str, partition: u32, backend: &Backend) -> Self {
        Retrying {
            topic: topic.to_owned(),
            partition,
            backend: backend.clone(),
            failing: None,
            retries: 0,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.failing.as_ref().is_none_or(|(_, at)| now >= *at)
    }

    /// When the next attempt is due, while reads fail.
    fn next_attempt(&self) -> Option<Instant> {
        self.failing.as_ref().map(|(_, at)| *at)
    }

    /// Runs one read. Its I/O error becomes `Ok(None)` and a retry later, other errors
    /// (corruption, a vanished topic) stop the job, and so does an I/O error that a
    /// bounded run has retried [`BOUNDED_READ_ATTEMPTS`] times.
    fn attempt<T>(
        &mut self,
        bounded: bool,
        telemetry: Option<&Telemetry>,
        read: impl FnOnce() -> Result<T, ReadError>,
    ) -> Result<Option<T>, ReadError> {
        let result = fail_point(CrashPoint::Read)
            .map_err(|source| {
                self.backend
                    .injected_fault(&self.topic, self.partition, source)
            })
            .and_then(|()| read());
        let error = match result {
            Ok(value) => {
                if let Some((backoff, _)) = self.failing.take() {
                    if let Some(t) = telemetry {
                        let mut unreachable = t
                            .health
                            .unreachable
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        unreachable.remove(&(self.topic.clone(), self.partition));
                    }
                    tracing::info!(
                        topic = %self.topic,
                        partition = self.partition,
                        failures = backoff.failures(),
                        "source partition readable again"
                    );
                }
                return Ok(Some(value));
            }
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        let (backoff, at) = self
            .failing
            .get_or_insert_with(|| (Backoff::default(), Instant::now()));
        let delay = backoff.failed();
        if bounded && backoff.failures() >= BOUNDED_READ_ATTEMPTS {
            tracing::error!(
                topic = %self.topic,
                partition = self.partition,
                failures = backoff.failures(),
                "reading a source partition keeps failing; giving up"
            );
            return Err(error);
        }
        *at = Instant::now() + delay;
        self.retries += 1;
        let chain = ErrorChain(&error).to_string();
        // Health first: whoever reads the log line then finds the job unready.
        if let Some(t) = telemetry {
            t.metrics
                .source_errors
                .with_label_values(&[self.topic.as_str(), &self.partition.to_string()])
                .inc();
            let mut unreachable = t
                .health
                .unreachable
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            unreachable.insert((self.topic.clone(), self.partition), chain.clone());
        }
        tracing::warn!(
            topic = %self.topic,
            partition = self.partition,
            error = %chain,
            retry_in_ms = delay.as_millis() as u64,
            "reading a source partition failed; retrying"
        );
        Ok(None)
    }
}

/// One source partition's metric handles, looked up once.
struct InputMetrics {
    records: prometheus::IntCounter,
    bytes: prometheus::IntCounter,
    position: prometheus::IntGauge,
    end: prometheus::IntGauge,
    lag: prometheus::IntGauge,
    watermark: prometheus::IntGauge,
    idle: prometheus::IntGauge,
    gaps: prometheus::IntCounter,
}

impl InputMetrics {
    fn new(m: &Metrics, topic: &str, partition: u32) -> Self {
        let p = partition.to_string();
        let labels = [topic, p.as_str()];
        InputMetrics {
            records: m.records_in.with_label_values(&labels),
            bytes: m.bytes_in.with_label_values(&labels),
            position: m.position.with_label_values(&labels),
            end: m.end_offset.with_label_values(&labels),
            lag: m.lag.with_label_values(&labels),
            watermark: m.partition_watermark.with_label_values(&labels),
            idle: m.partition_idle.with_label_values(&labels),
            gaps: m.source_gaps.with_label_values(&labels),
        }
    }
}

/// Why the source stage stopped.
enum StageError {
    Read(ReadError),
    Job(Box<JobError>),
}

impl From<ReadError> for StageError {
    fn from(e: ReadError) -> Self {
        StageError::Read(e)
    }
}

#[derive(Default)]
struct SourceCounts {
    records_in: u64,
    dead_letters: u64,
    /// Reads repeated after a failure.
    retries: u64,
}

struct SourceStage<'a> {
    plan: &'a Plan,
    backend: &'a Backend,
    bounded: bool,
    assignment: Option<&'a Assignment>,
    /// The Fluvio consumer name of a live job.
    consumer: Option<&'a str>,
    /// A replay's start and end offsets (start only where the checkpoint has none).
    from: Option<&'a BTreeMap<(String, u32), u64>>,
    ends: Option<&'a BTreeMap<(String, u32), u64>>,
    progress: Option<&'a AtomicU64>,
    /// Watermark alignment: pause partitions whose watermark is more than this ahead.
    align: Option<i64>,
    /// Each shard's open windows; past `limits.max_open_windows_per_shard`, partitions
    /// ahead of the job watermark wait.
    open_windows: &'a [Arc<AtomicUsize>],
    stop: &'a AtomicBool,
    shards: &'a [SyncSender<Vec<ShardMsg>>],
    committer: &'a SyncSender<ToCommitter>,
    /// The last committed checkpoint (see [`CHECKPOINTS_IN_FLIGHT`]).
    committed: &'a AtomicU64,
    /// This stage's slot at the committer.
    slot: usize,
    telemetry: Option<&'a Telemetry>,
}

/// Batches on their way to the shards and the committer.
struct Outgoing {
    shards: Vec<Vec<ShardMsg>>,
    dead: Vec<OutRecord>,
}

impl SourceStage<'_> {
    /// Whether a shard holds more open windows than `limit`.
    fn crowded(&self, limit: usize) -> bool {
        self.open_windows
            .iter()
            .any(|o| o.load(Ordering::Relaxed) > limit)
    }

    /// Sends the batches holding at least `min` messages (all non-empty ones for 0).
    /// False when a receiving stage is gone (joining it reports why).
    fn send(&self, out: &mut Outgoing, min: usize) -> bool {
        let mut ok = true;
        for (tx, b) in self.shards.iter().zip(out.shards.iter_mut()) {
            if !b.is_empty() && b.len() >= min {
                // Sized for a whole batch: growing it by doubling from empty copied each
                // batch several times over, into fresh pages.
                ok &= tx
                    .send(std::mem::replace(b, Vec::with_capacity(BATCH + 1)))
                    .is_ok();
            }
        }
        if !out.dead.is_empty() && out.dead.len() >= min {
            ok &= self
                .committer
                .send(ToCommitter::Records {
                    from: self.slot,
                    records: std::mem::take(&mut out.dead),
                })
                .is_ok();
        }
        ok
    }

    /// Reads every source partition in slices of append time, decodes, tracks watermarks,
    /// routes events to shards and starts checkpoints.
    fn run(
        self,
        store: &StateStore,
        snapshot: Option<&JobSnapshot>,
    ) -> Result<SourceCounts, StageError> {
        let plan = self.plan;
        let backend = self.backend;
        let bounded = self.bounded;
        let positions = store.positions().map_err(|source| {
            StageError::Job(Box::new(JobError::State {
                job: plan.name.clone(),
                source,
            }))
        })?;
        let mut decoders = Vec::new();
        let mut inputs = Vec::new();
        let mut watcher = backend.wakeup(!bounded)?;
        for (i, src) in plan.sources.iter().enumerate() {
            decoders.push(
                DecoderConfig {
                    topic: src.topic.clone(),
                    source_index: i as u16,
                    key: src.key.as_str().to_string(),
                    time: src.time.as_str().to_string(),
                    id: src.id.as_ref().map(|p| p.as_str().to_string()),
                    max_record_bytes: plan.limits.max_record_bytes as usize,
                }
                .build(),
            );
            let partitions = backend.partitions(&src.topic)?;
            for p in (0..partitions).filter(|&p| self.assignment.is_none_or(|a| a.contains(p))) {
                let offsets = backend.offsets(&src.topic, p)?;
                let key = (src.topic.clone(), p);
                let end = self
                    .ends
                    .and_then(|e| e.get(&key).copied())
                    .unwrap_or(offsets.1);
                let start = match positions.get(&key) {
                    Some(&at) if at > offsets.1 => {
                        return Err(StageError::Job(Box::new(JobError::PositionBeyondEnd {
                            job: plan.name.clone(),
                            state: plan.state.clone(),
                            topic: src.topic.clone(),
                            partition: p,
                            position: at,
                            end: offsets.1,
                        })));
                    }
                    Some(&at) => at,
                    None => match self.from.and_then(|f| f.get(&key)) {
                        Some(&at) => at,
                        None => backend.resolve_start(&src.topic, p, offsets, src.start)?,
                    },
                };
                inputs.push(Input {
                    id: PartitionId {
                        source: i as u16,
                        partition: p,
                    },
                    topic: src.topic.clone(),
                    reader: {
                        let mut reader = backend.reader(
                            &src.topic,
                            p,
                            start,
                            decoders[i].max_record_bytes(),
                            watcher.as_mut(),
                            self.consumer,
                        )?;
                        if bounded {
                            reader.read_until(end);
                        }
                        reader
                    },
                    gaps: 0,
                    end,
                    done: false,
                    paused: false,
                    bytes: 0,
                    records: 0,
                    metrics: self
                        .telemetry
                        .map(|t| InputMetrics::new(&t.metrics, &src.topic, p)),
                    retry: Retrying::new(&src.topic, p, backend),
                });
            }
        }
        // In a bounded run a partition that reached its end can never hold the watermark
        // back, so it becomes idle at once; a live run waits the configured idle timeout.
        let idle_timeout = if bounded {
            Duration::ZERO
        } else {
            plan.time.idle_timeout
        };
        let wm_config = WatermarkConfig {
            out_of_orderness: plan.time.out_of_orderness,
            idle_timeout,
        };
        let ids = inputs.iter().map(|i| i.id);
        let mut watermarks = match snapshot {
            Some(s) => Watermarks::restore(wm_config, &s.watermarks, ids, wall_clock_ms()),
            None => Watermarks::new(wm_config, ids, wall_clock_ms()),
        };
        let mut out = Outgoing {
            shards: self.shards.iter().map(|_| Vec::new()).collect(),
            dead: Vec::new(),
        };
        if snapshot.is_some() {
            // The operators' watermark as of the checkpoint (closing nothing new: the
            // checkpoint was taken after they had seen it).
            let w = watermarks.current();
            let now = wall_clock_ms();
            for b in &mut out.shards {
                b.push(ShardMsg::Watermark(w, now));
            }
        }
        let mut counts = SourceCounts::default();
        let mut dead_letters = RateLimited::new("dead letters written");
        if let Some(t) = self.telemetry {
            t.health.sources_ready.store(true, Ordering::Relaxed);
        }
        // End offsets of a live run's partitions move; the lag metric re-reads them now
        // and then.
        let mut ends_refreshed = Instant::now();
        let mut epoch = snapshot.map_or(0, |s| s.epoch);
        let mut since_checkpoint = 0u64;
        let mut last_checkpoint = Instant::now();
        let mut watermark_moved = false;
        let n_shards = self.shards.len() as u32;
        let interval = plan.checkpoint.interval;
        let max_records = plan.checkpoint.max_records.unwrap_or(u64::MAX);
        // A slice is everything appended before the oldest unread record + `slice`, read
        // from every partition before the watermark moves. A bounded run thus sees its
        // sources interleaved as they arrived (and always the same way), so a record that
        // arrived late is judged late in a replay as it was live.
        let slice_ms = (plan.time.out_of_orderness / 2)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
            .as_millis() as i64;
        // The horizon of a bounded run's slice that a read failure interrupted.
        let mut interrupted: Option<i64> = None;
        let max_open_windows =
            usize::try_from(plan.limits.max_open_windows_per_shard).unwrap_or(usize::MAX);
        let mut was_crowded = false;
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            // Back-pressure on open windows: while a shard holds more than the limit,
            // only partitions at the job watermark (the slowest, which hold the windows
            // open) are read, so windows close instead of piling up.
            let crowded = self.crowded(max_open_windows);
            if crowded != was_crowded {
                tracing::info!(
                    crowded,
                    limit = max_open_windows,
                    "open windows {} the limit per shard: partitions ahead of the job watermark {}",
                    if crowded { "exceed" } else { "are back under" },
                    if crowded { "wait" } else { "read again" }
                );
                was_crowded = crowded;
            }
            let align = if crowded { Some(0) } else { self.align };
            if let Some(align) = align {
                // Watermark alignment: a partition far ahead of the job watermark waits.
                // The partition that defines the job watermark is never paused, so
                // reading always goes on.
                let limit = watermarks.current().saturating_add(align);
                for input in inputs.iter_mut() {
                    input.paused = watermarks
                        .partition(input.id)
                        .is_some_and(|p| p.watermark > limit);
                }
            } else {
                for input in inputs.iter_mut() {
                    input.paused = false;
                }
            }
            // Some partition failed a read and is not due for another attempt.
            let blocked = |inputs: &[Input]| {
                let at = Instant::now();
                inputs.iter().any(|i| !i.retry.due(at))
            };
            if bounded && !stopping && blocked(&inputs) {
                // A bounded run reads nothing while a partition cannot be read, so its
                // records still interleave with the others' exactly as they arrived:
                // wait for the next attempt (in short steps, to notice a stop).
                let at = inputs.iter().filter_map(|i| i.retry.next_attempt()).min();
                let wait = at.map_or(Duration::ZERO, |at| {
                    at.saturating_duration_since(Instant::now())
                });
                std::thread::sleep(
                    wait.clamp(Duration::from_millis(1), Duration::from_millis(250)),
                );
                continue;
            }
            let mut oldest: Option<i64> = None;
            if !stopping && interrupted.is_none() {
                let at = Instant::now();
                for input in inputs.iter_mut().filter(|i| i.readable(at)) {
                    let reader = &mut input.reader;
                    let peeked = input
                        .retry
                        .attempt(bounded, self.telemetry, || reader.peek_timestamp())?;
                    if let Some(Some(ts)) = peeked {
                        oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
                    }
                }
            }
            if bounded && !stopping && blocked(&inputs) {
                continue; // a peek failed: the whole slice waits for the retry
            }
            let now = wall_clock_ms();
            // Finishing an interrupted slice counts as progress even if nothing was left
            // to read below its horizon.
            let mut read_any = interrupted.is_some();
            let horizon = interrupted
                .take()
                .or_else(|| oldest.map(|o| o.saturating_add(slice_ms)));
            if let Some(horizon) = horizon {
                for b in &mut out.shards {
                    b.push(ShardMsg::Read(now));
                }
                loop {
                    let mut progressed = false;
                    let at = Instant::now();
                    if self.crowded(max_open_windows) {
                        // Crowded in mid-slice: the partitions ahead stop here (the
                        // watermark only moves between slices, so windows close then).
                        let job = watermarks.current();
                        for input in inputs.iter_mut() {
                            input.paused |= watermarks
                                .partition(input.id)
                                .is_some_and(|p| p.watermark > job);
                        }
                    }
                    for input in inputs.iter_mut().filter(|i| i.readable(at)) {
                        let max = if bounded {
                            (input.end.saturating_sub(input.reader.position()) as usize).min(BATCH)
                        } else {
                            BATCH
                        };
                        let decoder = &decoders[input.id.source as usize];
                        let mut bytes = 0u64;
                        // Counted here, not from the result: a read that fails half-way
                        // has still delivered the records before the failure.
                        let mut n = 0usize;
                        let reader = &mut input.reader;
                        let (topic, id) = (&input.topic, input.id);
                        let read = || {
                            reader.read_before(max, horizon, |rec| {
                            n += 1;
                            bytes += rec.value_len as u64;
                            let value = rec.value;
                            let decoded = if rec.value_len > value.len() {
                                // Read through, not buffered: only its prefix is here.
                                Err(decoder.oversized(
                                    id.partition,
                                    rec.offset,
                                    value,
                                    rec.value_len,
                                ))
                            } else {
                                decoder.decode(id.partition, rec.offset, value)
                            };
                            match decoded {
                                Ok(event) => {
                                    watermarks.observe(id, event.time, now);
                                    let shard =
                                        partition_for_key(event.key.as_bytes(), n_shards) as usize;
                                    out.shards[shard].push(ShardMsg::Event(event));
                                }
                                Err(dl) => {
                                    tracing::debug!(
                                        topic = %topic,
                                        partition = id.partition,
                                        offset = rec.offset,
                                        key = %String::from_utf8_lossy(rec.key.unwrap_or_default()),
                                        reason = %dl.reason,
                                        "dead letter"
                                    );
                                    dead_letters.note(|| RecordCoordinates {
                                        topic: topic.to_string(),
                                        partition: id.partition,
                                        offset: rec.offset,
                                        key: String::from_utf8_lossy(rec.key.unwrap_or_default())
                                            .into_owned(),
                                        reason: dl.reason.to_string(),
                                    });
                                    out.dead.push(OutRecord::new(
                                        OutKind::DeadLetter,
                                        rec.key.map(<[u8]>::to_vec),
                                        dl.to_json(),
                                        now,
                                    ));
                                    counts.dead_letters += 1;
                                }
                            }
                        })
                        };
                        input.retry.attempt(bounded, self.telemetry, read)?;
                        counts.records_in += n as u64;
                        input.records += n as u64;
                        input.bytes += bytes;
                        if let Some(progress) = self.progress {
                            progress.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        since_checkpoint += n as u64;
                        progressed |= n > 0;
                        if bounded && input.reader.position() >= input.end {
                            input.done = true;
                        }
                    }
                    if !self.send(&mut out, BATCH) {
                        return Ok(counts);
                    }
                    read_any |= progressed;
                    if !progressed {
                        break;
                    }
                }
            }
            if bounded && !stopping && blocked(&inputs) {
                // A read failed half-way through the slice: finish it, with the same
                // horizon, before the watermark may move.
                interrupted = horizon;
                continue;
            }
            // Between slices: idleness, the watermark, checkpoints.
            let at = Instant::now();
            for input in inputs.iter_mut() {
                let caught_up = if bounded {
                    input.reader.position() >= input.end
                } else if input.retry.due(at) {
                    let reader = &mut input.reader;
                    let peeked = input
                        .retry
                        .attempt(bounded, self.telemetry, || reader.peek_timestamp())?;
                    peeked.is_some_and(|ts| ts.is_none())
                } else {
                    // A partition that cannot be read may hold anything: never idle.
                    false
                };
                input.done = bounded && caught_up;
                watermarks.set_caught_up(input.id, caught_up, now);
            }
            if let Some(w) = watermarks.advance(now) {
                watermark_moved = true;
                for b in &mut out.shards {
                    b.push(ShardMsg::Watermark(w, now));
                }
            }
            if let Some(t) = self.telemetry {
                let refresh = !bounded && ends_refreshed.elapsed() >= Duration::from_secs(1);
                if refresh {
                    ends_refreshed = Instant::now();
                }
                for input in inputs.iter_mut() {
                    if refresh && let Ok(end) = backend.end_offset(&input.topic, input.id.partition)
                    {
                        input.end = end;
                    }
                    if let Some(m) = &input.metrics {
                        let gaps = input.reader.gaps();
                        m.gaps
                            .inc_by(gaps - std::mem::replace(&mut input.gaps, gaps));
                        m.records.inc_by(std::mem::take(&mut input.records));
                        m.bytes.inc_by(std::mem::take(&mut input.bytes));
                        let position = input.reader.position();
                        m.position.set(position as i64);
                        let end = input.end.max(position);
                        m.end.set(end as i64);
                        m.lag.set((end - position) as i64);
                        if let Some(state) = watermarks.partition(input.id) {
                            m.watermark.set(state.watermark);
                            m.idle.set(i64::from(state.idle));
                        }
                    }
                }
                let job = watermarks.current();
                t.metrics.job_watermark.set(job);
                t.metrics.watermark_lag_ms.set(if job == i64::MIN {
                    0
                } else {
                    now.saturating_sub(job)
                });
            }
            dead_letters.maybe_log();
            let finished = bounded && inputs.iter().all(|i| i.done);
            let last = finished || stopping;
            let in_flight = epoch.saturating_sub(self.committed.load(Ordering::Acquire));
            let due = since_checkpoint >= max_records
                || (last_checkpoint.elapsed() >= interval
                    && (since_checkpoint > 0 || watermark_moved)
                    && in_flight < CHECKPOINTS_IN_FLIGHT);
            if last || due {
                // The snapshot is taken before a bounded run's final +infinity: a later
                // run on this state resumes from the watermark the data gave.
                let snapshot = watermarks.snapshot();
                if finished {
                    let w = watermarks.finish();
                    for b in &mut out.shards {
                        b.push(ShardMsg::Watermark(w, now));
                    }
                }
                epoch += 1;
                for b in &mut out.shards {
                    b.push(ShardMsg::Barrier(epoch));
                }
                if !self.send(&mut out, 0) {
                    return Ok(counts);
                }
                let part = Part::Source {
                    positions: inputs
                        .iter()
                        .map(|i| (i.topic.clone(), i.id.partition, i.reader.position()))
                        .collect(),
                    watermarks: snapshot,
                };
                since_checkpoint = 0;
                let barrier = ToCommitter::Barrier {
                    from: self.slot,
                    epoch,
                    part,
                };
                if self.committer.send(barrier).is_err() {
                    return Ok(counts);
                }
                last_checkpoint = Instant::now();
                watermark_moved = false;
            }
            if last {
                counts.retries = inputs.iter().map(|i| i.retry.retries).sum();
                return Ok(counts);
            }
            if read_any {
                continue;
            }
            let retry_at = inputs.iter().filter_map(|i| i.retry.next_attempt()).min();
            if bounded {
                // Every unfinished partition promised records up to its end offset and
                // none is readable: waiting would never end.
                let stuck = inputs.iter().find(|i| !i.done).expect("not all done");
                return Err(StageError::Read(ReadError::Log(LogError::Stalled {
                    topic: stuck.topic.clone(),
                    partition: stuck.id.partition,
                    position: stuck.reader.position(),
                    end: stuck.end,
                })));
            }
            if !self.send(&mut out, 0) {
                return Ok(counts);
            }
            if let Some(w) = &watcher {
                // Wake on an append, in time to notice a partition turning idle, for
                // the next checkpoint, or for a failed partition's next attempt. A due
                // checkpoint is what a live job's latency waits on: overslept by up to
                // the 10 ms this wait was once rounded up to, it made the p99 of 10 ms
                // checkpoints 18 ms apart.
                let pending = since_checkpoint > 0 || watermark_moved;
                let until_checkpoint = if pending {
                    interval.saturating_sub(last_checkpoint.elapsed())
                } else {
                    Duration::MAX
                };
                let until_retry = retry_at.map_or(Duration::MAX, |at| {
                    at.saturating_duration_since(Instant::now())
                });
                w.wait_timeout(
                    plan.time
                        .idle_timeout
                        .min(until_checkpoint)
                        .min(until_retry)
                        .clamp(Duration::from_millis(1), Duration::from_millis(250)),
                );
            }
        }
    }
}

/// A shard's operator: the topology's correlation kind, built. Adding a kind means a
/// variant here, its arm in `build` and in `spawn`.
enum AnyOperator {
    Session(SessionOperator),
    /// `tumbling` and `hopping` (tumbling is hopping with `hop = size`).
    Window(WindowOperator),
    Complete(CompleteOperator),
    Interval(IntervalOperator),
}

impl AnyOperator {
    fn build(plan: &Plan) -> Result<AnyOperator, JobError> {
        let failed = |message: String| JobError::Operator {
            job: plan.name.clone(),
            message,
        };
        match &plan.correlation {
            Correlation::Session { gap, max_duration } => SessionConfig {
                topology: plan.name.clone(),
                sources: plan.sources.iter().map(|s| s.topic.clone()).collect(),
                gap: *gap,
                grace: plan.time.grace,
                retention: None,
                max_duration: *max_duration,
                include_payload: plan.output.include_payload,
                max_events: Some(plan.limits.max_events_per_window),
            }
            .build()
            .map(AnyOperator::Session)
            .map_err(|e| failed(e.to_string())),
            // Tumbling windows are hopping windows whose hop is their size.
            Correlation::Tumbling { size } | Correlation::Hopping { size, .. } => {
                let hop = match &plan.correlation {
                    Correlation::Hopping { hop, .. } => Some(*hop),
                    _ => None,
                };
                WindowConfig {
                    topology: plan.name.clone(),
                    sources: plan.sources.iter().map(|s| s.topic.clone()).collect(),
                    size: *size,
                    hop,
                    grace: plan.time.grace,
                    retention: None,
                    include_payload: plan.output.include_payload,
                    max_record_bytes: Some(plan.limits.max_output_record_bytes as usize),
                    max_events: Some(plan.limits.max_events_per_window),
                }
                .build()
                .map(AnyOperator::Window)
                .map_err(|e| failed(e.to_string()))
            }
            Correlation::Complete {
                required,
                optional,
                timeout,
                deadlines,
            } => CompleteConfig {
                topology: plan.name.clone(),
                sources: plan.sources.iter().map(|s| s.topic.clone()).collect(),
                required: required.clone(),
                optional: optional.clone(),
                timeout: *timeout,
                deadlines: deadlines.clone(),
                grace: plan.time.grace,
                retention: None,
                include_payload: plan.output.include_payload,
                max_events: Some(plan.limits.max_events_per_window),
            }
            .build()
            .map(AnyOperator::Complete)
            .map_err(|e| failed(e.to_string())),
            Correlation::Interval { joins } => IntervalConfig {
                topology: plan.name.clone(),
                sources: plan.sources.iter().map(|s| s.topic.clone()).collect(),
                links: joins
                    .iter()
                    .map(|j| LinkConfig {
                        left: j.left.clone(),
                        right: j.right.clone(),
                        before: j.before,
                        after: j.after,
                        join_type: j.join_type,
                    })
                    .collect(),
                grace: plan.time.grace,
                include_payload: plan.output.include_payload,
                max_events: Some(plan.limits.max_events_per_window),
            }
            .build()
            .map(AnyOperator::Interval)
            .map_err(|e| failed(e.to_string())),
        }
    }

    /// Runs the operator on its own thread as `shard`; the thread returns the shard's
    /// result and the CPU time it used.
    fn spawn(
        self,
        shard: Shard,
        rx: Receiver<Vec<ShardMsg>>,
    ) -> std::thread::JoinHandle<(Result<(), StateError>, u64)> {
        let thread = std::thread::Builder::new().name(format!("braid-shard-{}", shard.index));
        let timed = |result| (result, thread_cpu_ms());
        match self {
            AnyOperator::Session(op) => thread.spawn(move || timed(shard.run(op, rx))),
            AnyOperator::Window(op) => thread.spawn(move || timed(shard.run(op, rx))),
            AnyOperator::Complete(op) => thread.spawn(move || timed(shard.run(op, rx))),
            AnyOperator::Interval(op) => thread.spawn(move || timed(shard.run(op, rx))),
        }
        .expect("spawn shard thread")
    }
}

/// Reads back evicted key states from the store; an I/O error is kept for the shard to
/// report (the operator interface has no error path, by design).
struct StoreLoader {
    store: Arc<StateStore>,
    failed: Arc<Mutex<Option<StateError>>>,
}

impl<S: Persist> KeyLoader<S> for StoreLoader {
    fn load(&mut self, key: &str) -> Option<S> {
        match self.store.key(key) {
            Ok(state) => state,
            Err(e) => {
                if let Ok(mut slot) = self.failed.lock() {
                    slot.get_or_insert(e);
                }
                None
            }
        }
    }
}

/// One worker thread's share of the key space.
struct Shard {
    index: usize,
    count: usize,
    store: Arc<StateStore>,
    /// The last committed checkpoint: keys written at or before it may be evicted.
    committed: Arc<AtomicU64>,
    out: SyncSender<ToCommitter>,
    metrics: Option<Metrics>,
    /// The correlation kind (a metrics label).
    kind: &'static str,
    /// Journeys larger than this are published in parts.
    max_record_bytes: usize,
    /// Source topics by source index (for dead letters made here).
    topics: Arc<[Arc<str>]>,
    /// Its open windows after the last batch, read by the source for back-pressure.
    open: Arc<AtomicUsize>,
}

impl Shard {
    fn run<O: Operator + Checkpointed>(
        self,
        mut op: O,
        rx: Receiver<Vec<ShardMsg>>,
    ) -> Result<(), StateError> {
        let failed = Arc::new(Mutex::new(None));
        op.set_loader(Box::new(StoreLoader {
            store: self.store.clone(),
            failed: failed.clone(),
        }));
        // This shard's keys of the checkpoint; evicting as it goes keeps memory bounded
        // however large the stored state is.
        let (index, count) = (self.index, self.count as u32);
        for item in self.store.keys::<O::State, _>(move |key| {
            partition_for_key(key.as_bytes(), count) as usize == index
        }) {
            let (key, state) = item?;
            op.restore_key(&key, state);
            if op.cached_keys() > CACHED_KEYS_PER_SHARD {
                op.evict(CACHED_KEYS_PER_SHARD / 2, 0);
            }
        }
        let mut watermark = i64::MIN;
        let mut outputs = Vec::new();
        let mut records = Vec::new();
        let mut duplicates = 0;
        let mut unjoined = 0;
        let mut over_limit = 0;
        let mut late_reports = RateLimited::new("late arrivals reported");
        let mut open_windows_peak = 0;
        // When the current slice was read: the birth time of what it completes.
        let mut slice_at = wall_clock_ms();
        // What this shard last added to the shared gauges.
        let (mut open_reported, mut cached_reported) = (0i64, 0i64);
        let mut counts_reported = crate::engine::cache::CacheCounts::default();
        let mut scratch = Vec::new();
        for batch in rx {
            for msg in batch {
                match msg {
                    ShardMsg::Event(e) => op.on_event(e, watermark, &mut outputs),
                    ShardMsg::Read(at) => slice_at = at,
                    ShardMsg::Watermark(w, at) => {
                        watermark = w;
                        slice_at = at;
                        op.on_watermark(w, &mut outputs);
                    }
                    ShardMsg::Barrier(epoch) => {
                        let part = Part::Shard {
                            writes: op.drain_writes(epoch, &mut scratch)?,
                            duplicates: std::mem::take(&mut duplicates),
                            unjoined: std::mem::take(&mut unjoined),
                            over_limit: std::mem::take(&mut over_limit),
                            open_windows_peak: std::mem::take(&mut open_windows_peak),
                            keys: op.keys_with_state(),
                        };
                        if !records.is_empty() {
                            let records = std::mem::take(&mut records);
                            let msg = ToCommitter::Records {
                                from: self.index,
                                records,
                            };
                            if self.out.send(msg).is_err() {
                                return Ok(());
                            }
                        }
                        let msg = ToCommitter::Barrier {
                            from: self.index,
                            epoch,
                            part,
                        };
                        if self.out.send(msg).is_err() {
                            return Ok(());
                        }
                        op.evict(
                            CACHED_KEYS_PER_SHARD,
                            self.committed.load(Ordering::Acquire),
                        );
                        late_reports.maybe_log();
                        if let Some(m) = &self.metrics {
                            let open = op.open_windows() as i64;
                            let cached = op.cached_keys() as i64;
                            m.open_windows
                                .with_label_values(&[self.kind])
                                .add(open - open_reported);
                            m.cached_keys.add(cached - cached_reported);
                            (open_reported, cached_reported) = (open, cached);
                            let counts = op.cache_counts();
                            for (result, now, before) in [
                                ("hit", counts.hits, counts_reported.hits),
                                ("read_back", counts.read_back, counts_reported.read_back),
                                ("new", counts.new, counts_reported.new),
                            ] {
                                m.cache_lookups
                                    .with_label_values(&[result])
                                    .inc_by(now - before);
                            }
                            counts_reported = counts;
                        }
                    }
                }
                for out in outputs.drain(..) {
                    match out {
                        Output::Journey(j) => {
                            for json in j.to_json_parts(self.max_record_bytes) {
                                records.push(OutRecord::new(
                                    OutKind::Journey,
                                    Some(j.key.as_bytes().to_vec()),
                                    json,
                                    slice_at,
                                ));
                            }
                        }
                        Output::Late(l) => {
                            late_reports.note(|| RecordCoordinates {
                                topic: l.topic.to_string(),
                                partition: l.partition,
                                offset: l.offset,
                                key: l.key.clone(),
                                reason: format!("{} ms late", l.lateness_ms),
                            });
                            if let Some(m) = &self.metrics {
                                m.lateness_ms
                                    .with_label_values(&[&*l.topic])
                                    .observe(l.lateness_ms.max(0) as f64);
                            }
                            records.push(OutRecord::new(
                                OutKind::Late,
                                Some(l.key.as_bytes().to_vec()),
                                l.to_json(),
                                slice_at,
                            ))
                        }
                        Output::Duplicate { .. } => duplicates += 1,
                        Output::Unjoined { .. } => unjoined += 1,
                        Output::OverLimit { event, held } => {
                            over_limit += 1;
                            let topic = self.topics[usize::from(event.source)].clone();
                            let dead = DeadLetter::over_limit(topic, &event, held);
                            records.push(OutRecord::new(
                                OutKind::DeadLetter,
                                Some(event.key.into_bytes()),
                                dead.to_json(),
                                slice_at,
                            ));
                        }
                        Output::Correlation(c) => records.push(OutRecord::new(
                            OutKind::Record(c.kind),
                            Some(c.key.as_bytes().to_vec()),
                            c.json,
                            slice_at,
                        )),
                    }
                }
            }
            let open = op.open_windows();
            open_windows_peak = open_windows_peak.max(open);
            self.open.store(open, Ordering::Relaxed);
            if let Some(e) = failed.lock().ok().and_then(|mut slot| slot.take()) {
                return Err(e);
            }
            if records.len() >= BATCH {
                let msg = ToCommitter::Records {
                    from: self.index,
                    records: std::mem::replace(&mut records, Vec::with_capacity(BATCH)),
                };
                if self.out.send(msg).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct CommitCounts {
    journeys: u64,
    late: u64,
    duplicates: u64,
    unjoined: u64,
    /// Dead letters made by the shards (`Output::OverLimit`).
    over_limit: u64,
    checkpoints: u64,
    state_keys_peak: u64,
    state_bytes_peak: u64,
    open_windows_peak: u64,
    checkpoint_bytes: u64,
    /// Publication attempts repeated after a failure.
    sink_retries: u64,
    latency: Option<LatencySummary>,
    latency_parts: LatencyParts,
    /// CPU time of the committer and publisher threads.
    committer_cpu_ms: u64,
    publisher_cpu_ms: u64,
}

/// What every checkpoint of a run repeats about the run itself.
struct Identity {
    ends: Vec<(String, u32, u64)>,
    producer: String,
    outputs: Vec<String>,
}

/// The parts of one checkpoint gathered so far.
#[derive(Default)]
struct Gathering {
    arrived: usize,
    /// Per slot (shards, then the source), its output since the previous checkpoint, in
    /// the batches it came in.
    records: BTreeMap<usize, Vec<Vec<OutRecord>>>,
    writes: KeyWrites,
    positions: Vec<(String, u32, u64)>,
    watermarks: Option<WatermarkSnapshot>,
    /// Sum over shards of their peak open windows.
    open_windows: u64,
    /// Key states stored once committed.
    keys: u64,
    duplicates: u64,
}

impl Drop for RateLimited {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A warning about a kind of bad or late record, logged at most every 10 s with the count
/// since the previous one — never one line per record at full speed.
struct RateLimited {
    what: &'static str,
    count: u64,
    last: Option<RecordCoordinates>,
    logged: Instant,
}

/// Where a bad or late record was: the fields of every log line about a record.
struct RecordCoordinates {
    topic: String,
    partition: u32,
    offset: u64,
    key: String,
    reason: String,
}

impl RateLimited {
    const EVERY: Duration = Duration::from_secs(10);

    fn new(what: &'static str) -> Self {
        RateLimited {
            what,
            count: 0,
            last: None,
            logged: Instant::now(),
        }
    }

    /// Counts one, remembering it as the last (bad or late records are rare: the cost
    /// of copying its coordinates does not matter).
    fn note(&mut self, last: impl FnOnce() -> RecordCoordinates) {
        self.count += 1;
        self.last = Some(last());
    }

    fn maybe_log(&mut self) {
        if self.count > 0 && self.logged.elapsed() >= Self::EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        match (&self.last, self.count) {
            (_, 0) => {}
            (Some(last), count) => tracing::warn!(
                count,
                topic = %last.topic,
                partition = last.partition,
                offset = last.offset,
                key = %last.key,
                reason = %last.reason,
                "{} since the previous report (the last one's coordinates)",
                self.what
            ),
            (None, count) => tracing::warn!(count, "{} since the previous report", self.what),
        }
        self.count = 0;
        self.last = None;
        self.logged = Instant::now();
    }
}

/// The RocksDB budgets of a topology's `[limits]`.
fn state_options(plan: &Plan) -> StateOptions {
    StateOptions {
        block_cache_bytes: usize::try_from(plan.limits.state_cache).unwrap_or(usize::MAX),
        write_buffer_bytes: usize::try_from(plan.limits.state_write_buffer).unwrap_or(usize::MAX),
        ..StateOptions::default()
    }
}

/// An error with its sources, `a: b: c`, for a log line (errors that stop the job are
/// printed so by the CLI).
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Gathers every stage's part of each checkpoint, commits it as one batch, then publishes
/// its outbox. Parts of checkpoint `n` all arrive before any stage's part of `n + 1` is
/// complete, so checkpoints complete in order.
#[allow(clippy::too_many_arguments)]
fn committer_stage(
    store: &StateStore,
    outbox: Outbox,
    rx: Receiver<ToCommitter>,
    shards: usize,
    committed: &AtomicU64,
    identity: Identity,
    retry_for: Duration,
    telemetry: Option<Telemetry>,
) -> Result<CommitCounts, OutboxError> {
    // Publication runs on its own thread, one committed checkpoint behind at most: the
    // next checkpoint is gathered and committed while the previous one is appended and
    // synced. Order is kept (one channel, one publisher), so each checkpoint's output is
    // still published only after its commit, and in commit order.
    std::thread::scope(|scope| {
        let (tx, publications) = sync_channel::<Publication>(1);
        // The placing copy never opens a writer; the recovered one owns them.
        let placer = Outbox::new_placer(&outbox);
        let publisher = {
            let telemetry = telemetry.clone();
            std::thread::Builder::new()
                .name("braid-publish".into())
                .spawn_scoped(scope, move || {
                    publish_stage(store, outbox, publications, retry_for, telemetry.as_ref())
                })
                .expect("spawn publisher thread")
        };
        let counts = commit_loop(
            store, placer, rx, shards, committed, identity, &telemetry, &tx,
        );
        drop(tx);
        let published = publisher.join().unwrap_or_else(|_| {
            Err(OutboxError::from(LogError::Stalled {
                topic: "(publisher thread panicked)".into(),
                partition: 0,
                position: 0,
                end: 0,
            }))
        });
        // A publication error explains a commit loop that stopped sending.
        let p = published?;
        counts.map(|c| CommitCounts {
            sink_retries: p.retries,
            latency: p.latency.summary(),
            latency_parts: LatencyParts {
                checkpoint: p.parts[0].summary(),
                commit: p.parts[1].summary(),
                publish: p.parts[2].summary(),
            },
            committer_cpu_ms: thread_cpu_ms(),
            publisher_cpu_ms: p.cpu_ms,
            ..c
        })
    })
}

/// One committed checkpoint's output, on its way to the publisher.
struct Publication {
    entries: Vec<OutboxEntry>,
    /// Per entry, when its input was read (for the latency metric), and whether it is a
    /// correlation record (for the run summary's latency).
    born: Vec<(i64, bool)>,
    /// Records per kind (for the output metric).
    kinds: BTreeMap<&'static str, u64>,
    /// When the committer held the whole checkpoint, and when it had committed it
    /// (wall clock, ms; for [`LatencyParts`]).
    gathered_ms: i64,
    committed_ms: i64,
}

/// What the publisher reports when it ends.
struct PublishCounts {
    /// Publication attempts repeated after a failure.
    retries: u64,
    /// The correlation records' latencies, whole and by part ([`LatencyParts`] order).
    latency: LatencyTally,
    parts: [LatencyTally; 3],
    /// The publisher thread's CPU time.
    cpu_ms: u64,
}

/// Appends committed output, syncs it, acknowledges it (retrying failures for
/// `retry_for`); reports into the metrics.
fn publish_stage(
    store: &StateStore,
    mut outbox: Outbox,
    publications: Receiver<Publication>,
    retry_for: Duration,
    telemetry: Option<&Telemetry>,
) -> Result<PublishCounts, OutboxError> {
    let mut retries = 0u64;
    let mut latencies = LatencyTally::default();
    let mut parts: [LatencyTally; 3] = Default::default();
    for p in publications {
        let published = outbox.publish_retrying(store, &p.entries, retry_for, |error, delay| {
            retries += 1;
            tracing::warn!(
                error = %ErrorChain(error),
                retry_in_ms = delay.as_millis() as u64,
                "publishing output failed; retrying"
            );
            if let Some(t) = telemetry {
                t.metrics.sink_errors.inc();
                t.metrics.sink_retries.inc();
            }
        });
        if let Err(e) = published {
            if let Some(t) = telemetry {
                t.metrics.sink_errors.inc();
            }
            return Err(e);
        }
        let now = wall_clock_ms();
        let ms = |from: i64, to: i64| to.saturating_sub(from).max(0) as u64;
        for &(b, correlation) in &p.born {
            if correlation {
                latencies.record(ms(b, now));
                parts[0].record(ms(b, p.gathered_ms));
                parts[1].record(ms(p.gathered_ms, p.committed_ms));
                parts[2].record(ms(p.committed_ms, now));
            }
        }
        if let Some(t) = telemetry {
            let m = &t.metrics;
            // The output counters last: a scrape that sees them count a publication
            // sees its latencies and the outbox depth too.
            m.outbox_depth.sub(p.entries.len() as i64);
            for (b, _) in p.born {
                m.latency_ms.observe(ms(b, now) as f64);
            }
            for (kind, n) in &p.kinds {
                m.output_records.with_label_values(&[kind]).inc_by(*n);
            }
        }
    }
    Ok(PublishCounts {
        retries,
        latency: latencies,
        parts,
        cpu_ms: thread_cpu_ms(),
    })
}

/// Gathers and commits checkpoints, handing each one's output to the publisher.
#[allow(clippy::too_many_arguments)]
fn commit_loop(
    store: &StateStore,
    mut outbox: Outbox,
    rx: Receiver<ToCommitter>,
    shards: usize,
    committed: &AtomicU64,
    identity: Identity,
    telemetry: &Option<Telemetry>,
    publisher: &SyncSender<Publication>,
) -> Result<CommitCounts, OutboxError> {
    let slots = shards + 1;
    // Each slot's batches kept as they came: appending them to one vector copied a
    // checkpoint's records (tens of thousands) again at each doubling, into fresh memory.
    let mut pending: Vec<Vec<Vec<OutRecord>>> = (0..slots).map(|_| Vec::new()).collect();
    let mut gathering: BTreeMap<u64, Gathering> = BTreeMap::new();
    let mut counts = CommitCounts::default();
    for msg in rx {
        let epoch = match msg {
            ToCommitter::Records { from, records } => {
                pending[from].push(records);
                continue;
            }
            ToCommitter::Barrier { from, epoch, part } => {
                let g = gathering.entry(epoch).or_default();
                g.arrived += 1;
                g.records.insert(from, std::mem::take(&mut pending[from]));
                match part {
                    Part::Shard {
                        writes,
                        duplicates,
                        unjoined,
                        over_limit,
                        open_windows_peak,
                        keys,
                    } => {
                        g.keys += keys as u64;
                        g.writes.append(writes);
                        g.open_windows += open_windows_peak as u64;
                        g.duplicates += duplicates;
                        counts.duplicates += duplicates;
                        counts.unjoined += unjoined;
                        counts.over_limit += over_limit;
                    }
                    Part::Source {
                        positions,
                        watermarks,
                    } => {
                        g.positions = positions;
                        g.watermarks = Some(watermarks);
                    }
                }
                if g.arrived < slots {
                    continue;
                }
                epoch
            }
        };
        let gathered_ms = wall_clock_ms();
        let g = gathering.remove(&epoch).expect("gathered above");
        counts.open_windows_peak = counts.open_windows_peak.max(g.open_windows);
        counts.state_keys_peak = counts.state_keys_peak.max(g.keys);
        // Dead letters first, then shard by shard: a fixed order for a fixed shard count.
        let mut records = g.records;
        let mut entries = Vec::new();
        let mut born = Vec::new();
        let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
        for slot in std::iter::once(shards).chain(0..shards) {
            for r in records.remove(&slot).into_iter().flatten().flatten() {
                match r.kind {
                    OutKind::Journey | OutKind::Record(_) => counts.journeys += 1,
                    OutKind::Late => counts.late += 1,
                    OutKind::DeadLetter => {}
                }
                *kinds.entry(r.kind.name()).or_default() += 1;
                let correlation = matches!(r.kind, OutKind::Journey | OutKind::Record(_));
                born.push((r.born_ms, correlation));
                entries.push(outbox.place(r));
            }
        }
        let snapshot = JobSnapshot {
            epoch,
            watermarks: g.watermarks.unwrap_or_default(),
            sequences: outbox
                .counters()
                .iter()
                .map(|((t, p), s)| (t.clone(), *p, *s))
                .collect(),
            ends: identity.ends.clone(),
            producer: identity.producer.clone(),
            outputs: identity.outputs.clone(),
        };
        let KeyWrites {
            heads,
            deletes,
            chunks,
            chunk_deletes,
        } = g.writes;
        let (keys, values): (Vec<String>, Vec<Vec<u8>>) = heads.into_iter().unzip();
        let checkpoint = Checkpoint {
            upserts: keys.iter().map(String::as_str).zip(values).collect(),
            deletes: deletes.iter().map(String::as_str).collect(),
            chunks,
            chunk_deletes: &chunk_deletes,
            positions: g
                .positions
                .iter()
                .map(|(t, p, o)| (t.as_str(), *p, *o))
                .collect(),
            watermarks: Some(encode("the job snapshot", &snapshot)?),
            outbox: &entries,
        };
        crash_point(CrashPoint::Commit);
        stall_point(CrashPoint::Commit);
        let commit_started = Instant::now();
        let written = store.commit(checkpoint).map_err(OutboxError::Commit)?;
        let commit_seconds = commit_started.elapsed().as_secs_f64();
        let committed_ms = wall_clock_ms();
        committed.store(epoch, Ordering::Release);
        counts.checkpoints += 1;
        counts.checkpoint_bytes += written.bytes as u64;
        let stats = store.stats();
        let state_bytes = stats.live_data_bytes + stats.memtable_bytes;
        counts.state_bytes_peak = counts.state_bytes_peak.max(state_bytes);
        if let Some(t) = &telemetry {
            let m = &t.metrics;
            let now = wall_clock_ms();
            m.checkpoint_seconds.observe(commit_seconds);
            m.checkpoints.inc();
            m.last_checkpoint_ms.set(now);
            t.health.last_checkpoint_ms.store(now, Ordering::Relaxed);
            m.state_keys.set(g.keys as i64);
            m.state_bytes.set(state_bytes as i64);
            m.outbox_depth.add(entries.len() as i64);
            m.duplicates.inc_by(g.duplicates);
        }
        // Logged after the health and metrics know of it, so a reader of the log line
        // finds them up to date.
        tracing::debug!(
            epoch,
            upserts = written.upserts,
            chunks = written.chunks,
            deletes = written.deletes,
            outbox = written.outbox,
            bytes = written.bytes,
            head_bytes = written.head_bytes,
            chunk_bytes = written.chunk_bytes,
            outbox_bytes = written.outbox_bytes,
            commit_ms = (commit_seconds * 1000.0) as u64,
            "checkpoint committed"
        );
        let publication = Publication {
            entries,
            born,
            kinds,
            gathered_ms,
            committed_ms,
        };
        if publisher.send(publication).is_err() {
            // The publisher stopped on an error; joining it reports that.
            break;
        }
    }
    Ok(counts)
}

/// What [`scan`] measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanSummary {
    pub records: u64,
    pub bytes: u64,
    /// Records whose value is not JSON.
    pub not_json: u64,
    pub millis: u64,
}

/// The baseline of the benchmarks: reads every record of every source partition, from its
/// start to the end offset present now, and parses its JSON into a `serde_json::Value` —
/// the floor any JSON stream processor pays for the same input on this machine. One thread.
pub fn scan(plan: &Plan, backend: &Backend) -> Result<ScanSummary, JobError> {
    let read_err = |source| JobError::Source {
        job: plan.name.clone(),
        backend: backend.describe(),
        source: Box::new(source),
    };
    let started = Instant::now();
    let mut summary = ScanSummary::default();
    // A Fluvio stream delivers asynchronously: wait for its records rather than spin.
    let mut wakeup = backend
        .wakeup(matches!(backend, Backend::Fluvio(_)))
        .map_err(read_err)?;
    for src in &plan.sources {
        let partitions = backend.partitions(&src.topic).map_err(read_err)?;
        for p in 0..partitions {
            let (first, end) = backend.offsets(&src.topic, p).map_err(read_err)?;
            let mut reader = backend
                .reader(&src.topic, p, first, usize::MAX, wakeup.as_mut(), None)
                .map_err(read_err)?;
            reader.read_until(end);
            while reader.position() < end {
                let max = (end - reader.position()).min(BATCH as u64) as usize;
                let n = reader
                    .read_before(max, i64::MAX, |rec| {
                        summary.bytes += rec.value.len() as u64;
                        if serde_json::from_slice::<serde_json::Value>(rec.value).is_err() {
                            summary.not_json += 1;
                        }
                    })
                    .map_err(read_err)?;
                summary.records += n as u64;
                if n == 0 {
                    match &wakeup {
                        Some(w) => w.wait_timeout(Duration::from_millis(100)),
                        None => break,
                    }
                }
            }
        }
    }
    summary.millis = started.elapsed().as_millis() as u64;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_budgets_come_from_the_limits() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("topologies/customer_journey.toml");
        let mut plan = crate::topology::load(&path).unwrap();
        plan.limits.state_cache = 32 << 20;
        plan.limits.state_write_buffer = 1 << 30;
        let o = state_options(&plan);
        assert_eq!(
            (o.block_cache_bytes, o.write_buffer_bytes),
            (32 << 20, 1 << 30)
        );
    }

    #[test]
    fn the_cpu_clocks_count_this_threads_work_within_the_process() {
        let (thread_start, process_start) = (thread_cpu_ms(), process_cpu_ms());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 1u64;
        while thread_cpu_ms() < thread_start + 20 && Instant::now() < deadline {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        let thread = thread_cpu_ms() - thread_start;
        let process = process_cpu_ms() - process_start;
        assert!(
            thread >= 20,
            "this thread's clock moved {thread} ms in 10 s of work"
        );
        // getrusage counts in microseconds, the thread clock in nanoseconds: allow the
        // truncation of both to whole milliseconds.
        assert!(
            process + 2 >= thread,
            "the process counted {process} ms, this thread alone {thread} ms"
        );
    }

    #[test]
    fn latency_percentiles_are_exact_to_the_millisecond() {
        let mut t = LatencyTally::default();
        assert_eq!(t.summary(), None);
        for ms in 1..=100 {
            t.record(ms);
        }
        assert_eq!(
            t.summary(),
            Some(LatencySummary {
                records: 100,
                p50: 50,
                p99: 99,
                max: 100
            })
        );
        // Beyond the exact range only the count and the maximum are kept.
        for _ in 0..10_000 {
            t.record(90_000);
        }
        let s = t.summary().unwrap();
        assert_eq!(
            (s.records, s.p50, s.p99, s.max),
            (10_100, 90_000, 90_000, 90_000)
        );
        t.record(0);
        assert_eq!(t.quantile(0.0), 0, "the smallest");
    }
}
