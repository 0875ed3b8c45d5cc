//! The job runtime: one topology, running. It wires the data flow's stages together:
//!
//! ```text
//! source thread: readers of every source partition → decode → watermarks ─┐ (bounded channels)
//!                dead letters ───────────────────────────────────────────┐ ├─▶ shard 0 … N-1
//! shard threads: one operator each (on_event / on_watermark), records → JSON┘ │
//! sink thread:   output topics (journeys, late, dead letters), keyed ◀──────┘
//! ```
//!
//! Invariants:
//! - A key always goes to the same shard, and every shard receives the same sequence of
//!   watermarks, placed between its events exactly where the source stage computed them. So
//!   each key's operator sees the same input whatever the shard count, and emits the same
//!   records in the same order: results do not depend on the number of shards.
//! - Channels are bounded: a slow sink back-pressures the shards, which back-pressure the
//!   source. No lock is shared between stages.
//! - Processing time is read here, at the edge, and injected into the watermark tracker;
//!   operators never see a clock.
//! - State is in memory in this version; RocksDB-backed state, checkpoints and restart come
//!   with the checkpoint work (see docs/semantics.md, "Delivery and recovery").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::decode::{DecoderConfig, Event};
use crate::engine::{Operator, Output, SessionConfig};
use crate::log::{Log, LogError, PartitionReader, TailWatcher, WriterOptions, partition_for_key};
use crate::time::{PartitionId, WatermarkConfig, Watermarks, wall_clock_ms};
use crate::topology::{Broker, Correlation, Plan};

/// Why a job could not run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job {job}")]
    Log {
        job: String,
        #[source]
        source: LogError,
    },
    #[error(
        "job {job}: correlation kind `{kind}` is not available yet in this version (available: session)"
    )]
    UnsupportedKind { job: String, kind: &'static str },
    #[error(
        "job {job}: the {broker} broker is not available yet in this version (use kind = \"embedded\")"
    )]
    UnsupportedBroker { job: String, broker: &'static str },
    #[error("job {job}: {message}")]
    Operator { job: String, message: String },
    #[error("job {job}: the {stage} stage stopped unexpectedly")]
    StageFailed { job: String, stage: &'static str },
}

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop at the end offsets present at start, close every window and return.
    pub bounded: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub records_in: u64,
    pub journeys: u64,
    pub late: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
    pub shards: usize,
    pub millis: u64,
}

impl Summary {
    pub fn events_per_second(&self) -> f64 {
        self.records_in as f64 * 1000.0 / self.millis.max(1) as f64
    }
}

/// A message from the source stage to a shard.
enum ShardMsg {
    Event(Event),
    Watermark(i64),
}

/// Which output topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutKind {
    Journey,
    Late,
    DeadLetter,
}

struct OutRecord {
    kind: OutKind,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

/// Events or records are sent in batches of about this many, to keep channel overhead off
/// the per-event path.
const BATCH: usize = 1024;
/// Batches in flight per channel (the backpressure bound).
const CHANNEL_BATCHES: usize = 8;
/// Longest time an output record waits in the sink before it is appended and synced.
const SINK_FLUSH: Duration = Duration::from_millis(20);

/// Runs `plan` against the embedded log until the input ends (bounded) or `stop` is set.
pub fn run(
    plan: &Plan,
    log: &Log,
    opts: RunOptions,
    stop: &AtomicBool,
) -> Result<Summary, JobError> {
    let job = plan.name.clone();
    let log_err = |source| JobError::Log {
        job: job.clone(),
        source,
    };
    if let Broker::Fluvio { .. } = plan.broker {
        return Err(JobError::UnsupportedBroker {
            job,
            broker: "fluvio",
        });
    }
    let session = match &plan.correlation {
        Correlation::Session { gap, max_duration } => SessionConfig {
            topology: plan.name.clone(),
            sources: plan.sources.iter().map(|s| s.topic.clone()).collect(),
            gap: *gap,
            grace: plan.time.grace,
            retention: None,
            max_duration: *max_duration,
            include_payload: plan.output.include_payload,
        },
        other => {
            return Err(JobError::UnsupportedKind {
                job,
                kind: other.kind(),
            });
        }
    };
    let started = Instant::now();
    let shards = plan.shards.max(1);

    // Output topics are created when missing, with the first source's partition count.
    let first = log.topic(&plan.sources[0].topic).map_err(log_err)?;
    for topic in [
        &plan.output.journeys,
        &plan.output.late,
        &plan.output.dead_letters,
    ] {
        if log.topic(topic).is_err() {
            log.create_topic(topic, first.partitions).map_err(log_err)?;
        }
    }
    let (sink_tx, sink_rx) = sync_channel::<Vec<OutRecord>>(CHANNEL_BATCHES * shards);
    let sink = {
        let log = log.clone();
        let plan = plan.clone();
        std::thread::Builder::new()
            .name("braid-sink".into())
            .spawn(move || sink_stage(&log, &plan, sink_rx))
            .expect("spawn sink thread")
    };
    let mut shard_txs = Vec::with_capacity(shards);
    let mut shard_handles = Vec::with_capacity(shards);
    for i in 0..shards {
        let (tx, rx) = sync_channel::<Vec<ShardMsg>>(CHANNEL_BATCHES);
        let op = session.clone().build().map_err(|e| JobError::Operator {
            job: job.clone(),
            message: e.to_string(),
        })?;
        let out = sink_tx.clone();
        shard_txs.push(tx);
        shard_handles.push(
            std::thread::Builder::new()
                .name(format!("braid-shard-{i}"))
                .spawn(move || shard_stage(op, rx, out))
                .expect("spawn shard thread"),
        );
    }
    let source = source_stage(plan, log, opts, stop, &shard_txs, &sink_tx);
    drop(shard_txs);
    drop(sink_tx);
    let mut duplicates = 0;
    let mut shard_failed = false;
    for h in shard_handles {
        match h.join() {
            Ok(d) => duplicates += d,
            Err(_) => shard_failed = true,
        }
    }
    let sunk = sink.join();
    let (records_in, dead_letters) = source.map_err(log_err)?;
    if shard_failed {
        return Err(JobError::StageFailed {
            job,
            stage: "shard",
        });
    }
    let counts = match sunk {
        Ok(c) => c.map_err(log_err)?,
        Err(_) => return Err(JobError::StageFailed { job, stage: "sink" }),
    };
    Ok(Summary {
        records_in,
        journeys: counts.journeys,
        late: counts.late,
        duplicates,
        dead_letters,
        shards,
        millis: started.elapsed().as_millis() as u64,
    })
}

struct Input {
    id: PartitionId,
    topic: String,
    reader: PartitionReader,
    /// Bounded runs stop here.
    end: u64,
    done: bool,
}

/// Reads every source partition round-robin, decodes, tracks watermarks and routes events
/// to shards. Returns (records read, dead letters).
fn source_stage(
    plan: &Plan,
    log: &Log,
    opts: RunOptions,
    stop: &AtomicBool,
    shards: &[SyncSender<Vec<ShardMsg>>],
    sink: &SyncSender<Vec<OutRecord>>,
) -> Result<(u64, u64), LogError> {
    let mut decoders = Vec::new();
    let mut inputs = Vec::new();
    let mut watcher = if opts.bounded {
        None
    } else {
        Some(TailWatcher::new()?)
    };
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
        let meta = log.topic(&src.topic)?;
        for p in 0..meta.partitions {
            let info = log.partition_info(&src.topic, p)?;
            let start = log.resolve_start(&src.topic, &info, src.start)?;
            if let Some(w) = &mut watcher {
                w.watch(&log.partition_dir(&src.topic, p))?;
            }
            inputs.push(Input {
                id: PartitionId {
                    source: i as u16,
                    partition: p,
                },
                topic: src.topic.clone(),
                reader: log.reader(&src.topic, p, start)?,
                end: info.end_offset,
                done: false,
            });
        }
    }
    // In a bounded run a partition that reached its end can never hold the watermark back,
    // so it becomes idle at once; a live run waits the configured idle timeout.
    let idle_timeout = if opts.bounded {
        Duration::ZERO
    } else {
        plan.time.idle_timeout
    };
    let wm_config = WatermarkConfig {
        out_of_orderness: plan.time.out_of_orderness,
        idle_timeout,
    };
    let mut watermarks = Watermarks::new(wm_config, inputs.iter().map(|i| i.id), wall_clock_ms());
    let mut batches: Vec<Vec<ShardMsg>> = shards.iter().map(|_| Vec::new()).collect();
    let mut dead: Vec<OutRecord> = Vec::new();
    let (mut records_in, mut dead_letters) = (0u64, 0u64);
    let n_shards = shards.len() as u32;
    // Sends the batches holding at least `min` messages (all non-empty ones for 0). A send
    // fails only when the receiving stage is gone; joining it reports that.
    let send = |batches: &mut Vec<Vec<ShardMsg>>, dead: &mut Vec<OutRecord>, min: usize| {
        for (tx, b) in shards.iter().zip(batches.iter_mut()) {
            if !b.is_empty() && b.len() >= min {
                let _ = tx.send(std::mem::take(b));
            }
        }
        if !dead.is_empty() && dead.len() >= min {
            let _ = sink.send(std::mem::take(dead));
        }
    };
    // Partitions are read in step by append time: each round reads, from every partition,
    // only records appended before the oldest unread record + `slice`. A bounded run thus
    // sees its sources interleaved as they arrived (and always the same way), so a record
    // that arrived late is judged late in a replay as it was live.
    let slice_ms = (plan.time.out_of_orderness / 2)
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
        .as_millis() as i64;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = wall_clock_ms();
        let mut oldest: Option<i64> = None;
        for input in inputs.iter_mut().filter(|i| !i.done) {
            if let Some(ts) = input.reader.peek_timestamp()? {
                oldest = Some(oldest.map_or(ts, |o| o.min(ts)));
            }
        }
        let horizon = oldest.map_or(i64::MIN, |o| o.saturating_add(slice_ms));
        let mut progressed = false;
        for input in inputs.iter_mut().filter(|i| !i.done) {
            let max = if opts.bounded {
                (input.end.saturating_sub(input.reader.position()) as usize).min(BATCH)
            } else {
                BATCH
            };
            let decoder = &decoders[input.id.source as usize];
            let n = input.reader.read_before(max, horizon, |view, buf| {
                match decoder.decode(input.id.partition, view.offset, &buf[view.value.clone()]) {
                    Ok(event) => {
                        watermarks.observe(input.id, event.time, now);
                        let shard = partition_for_key(event.key.as_bytes(), n_shards) as usize;
                        batches[shard].push(ShardMsg::Event(event));
                    }
                    Err(dl) => {
                        tracing::debug!(topic = %input.topic, partition = input.id.partition, offset = view.offset, reason = %dl.reason, "dead letter");
                        dead.push(OutRecord {
                            kind: OutKind::DeadLetter,
                            key: view.key.clone().map(|k| buf[k].to_vec()),
                            value: dl.to_json(),
                        });
                        dead_letters += 1;
                    }
                }
            })?;
            records_in += n as u64;
            progressed |= n > 0;
            let caught_up = if opts.bounded {
                input.reader.position() >= input.end
            } else {
                input.reader.peek_timestamp()?.is_none()
            };
            input.done = opts.bounded && caught_up;
            watermarks.set_caught_up(input.id, caught_up, now);
        }
        if let Some(w) = watermarks.advance(now) {
            for b in &mut batches {
                b.push(ShardMsg::Watermark(w));
            }
        }
        if opts.bounded && inputs.iter().all(|i| i.done) {
            let w = watermarks.finish();
            for b in &mut batches {
                b.push(ShardMsg::Watermark(w));
            }
            send(&mut batches, &mut dead, 0);
            break;
        }
        if progressed {
            send(&mut batches, &mut dead, BATCH);
        } else if opts.bounded {
            // Every unfinished partition promised records up to its end offset and none is
            // readable: waiting would never end.
            let stuck = inputs.iter().find(|i| !i.done).expect("not all done");
            return Err(LogError::Stalled {
                topic: stuck.topic.clone(),
                partition: stuck.id.partition,
                position: stuck.reader.position(),
                end: stuck.end,
            });
        } else {
            send(&mut batches, &mut dead, 0);
            if let Some(w) = &watcher {
                // Wake on an append, or in time to notice a partition turning idle.
                w.wait_timeout(
                    plan.time
                        .idle_timeout
                        .clamp(Duration::from_millis(10), Duration::from_millis(250)),
                );
            }
        }
    }
    Ok((records_in, dead_letters))
}

/// Runs one operator over its share of the keys. Returns the duplicates it counted.
fn shard_stage(
    mut op: impl Operator,
    rx: Receiver<Vec<ShardMsg>>,
    sink: SyncSender<Vec<OutRecord>>,
) -> u64 {
    let mut watermark = i64::MIN;
    let mut outputs = Vec::new();
    let mut records = Vec::new();
    let mut duplicates = 0;
    for batch in rx {
        for msg in batch {
            match msg {
                ShardMsg::Event(e) => op.on_event(e, watermark, &mut outputs),
                ShardMsg::Watermark(w) => {
                    watermark = w;
                    op.on_watermark(w, &mut outputs);
                }
            }
            for out in outputs.drain(..) {
                match out {
                    Output::Journey(j) => records.push(OutRecord {
                        kind: OutKind::Journey,
                        key: Some(j.key.as_bytes().to_vec()),
                        value: j.to_json(),
                    }),
                    Output::Late(l) => records.push(OutRecord {
                        kind: OutKind::Late,
                        key: Some(l.key.as_bytes().to_vec()),
                        value: l.to_json(),
                    }),
                    Output::Duplicate { .. } => duplicates += 1,
                }
            }
        }
        if !records.is_empty() && sink.send(std::mem::take(&mut records)).is_err() {
            break;
        }
    }
    duplicates
}

#[derive(Default)]
struct SinkCounts {
    journeys: u64,
    late: u64,
}

/// Appends output records to their topics, keyed by the correlation key.
fn sink_stage(
    log: &Log,
    plan: &Plan,
    rx: Receiver<Vec<OutRecord>>,
) -> Result<SinkCounts, LogError> {
    // late and dead letters may share the journeys topic: one producer per distinct topic.
    let topics = [
        &plan.output.journeys,
        &plan.output.late,
        &plan.output.dead_letters,
    ];
    let mut names: Vec<&String> = Vec::new();
    let mut producers = Vec::new();
    let mut slot = [0usize; 3];
    for (i, topic) in topics.into_iter().enumerate() {
        slot[i] = match names.iter().position(|n| *n == topic) {
            Some(j) => j,
            None => {
                names.push(topic);
                producers.push(log.producer(topic, WriterOptions::default())?);
                producers.len() - 1
            }
        };
    }
    let [journeys, late, dead] = slot;
    let mut counts = SinkCounts::default();
    // Appends are flushed (and synced) at most every SINK_FLUSH while records flow, and as
    // soon as the stream pauses for that long: batches stay large under load, and a quiet
    // live job publishes within SINK_FLUSH.
    let mut unflushed = false;
    let mut last_flush = Instant::now();
    loop {
        match rx.recv_timeout(SINK_FLUSH) {
            Ok(batch) => {
                for rec in batch {
                    let p = match rec.kind {
                        OutKind::Journey => {
                            counts.journeys += 1;
                            journeys
                        }
                        OutKind::Late => {
                            counts.late += 1;
                            late
                        }
                        OutKind::DeadLetter => dead,
                    };
                    producers[p].send(rec.key.as_deref(), &rec.value)?;
                }
                unflushed = true;
                if last_flush.elapsed() < SINK_FLUSH {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) if unflushed => {}
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        }
        for p in &mut producers {
            p.flush()?;
        }
        unflushed = false;
        last_flush = Instant::now();
    }
    for p in &mut producers {
        p.flush()?;
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
pub fn scan(plan: &Plan, log: &Log) -> Result<ScanSummary, JobError> {
    let log_err = |source| JobError::Log {
        job: plan.name.clone(),
        source,
    };
    let started = Instant::now();
    let mut summary = ScanSummary::default();
    for src in &plan.sources {
        let meta = log.topic(&src.topic).map_err(log_err)?;
        for p in 0..meta.partitions {
            let info = log.partition_info(&src.topic, p).map_err(log_err)?;
            let mut reader = log
                .reader(&src.topic, p, info.start_offset)
                .map_err(log_err)?;
            while reader.position() < info.end_offset {
                let max = (info.end_offset - reader.position()).min(BATCH as u64) as usize;
                let n = reader
                    .read_into(max, |view, buf| {
                        let value = &buf[view.value.clone()];
                        summary.bytes += value.len() as u64;
                        if serde_json::from_slice::<serde_json::Value>(value).is_err() {
                            summary.not_json += 1;
                        }
                    })
                    .map_err(log_err)?;
                if n == 0 {
                    break;
                }
                summary.records += n as u64;
            }
        }
    }
    summary.millis = started.elapsed().as_millis() as u64;
    Ok(summary)
}
