//! Sinks: appending a job's output to its output topics, and reading their tails back,
//! on the embedded log or on a Fluvio cluster.
//!
//! The outbox decides where every record goes (topic, partition, sequence number) and
//! only then hands it here, so a sink appends to the partition it is told (on Fluvio,
//! through one producer pinned to each output partition).
//!
//! Invariants:
//! - [`Sink::append`] returns only once the records are durable by the backend's
//!   standard: synced to the embedded log's segment, or acknowledged by the Fluvio SPU
//!   after a flush. The outbox acknowledges nothing before that.
//! - After a failed append the sink forgets its writers and producers, so the next
//!   attempt starts clean (a torn embedded-log tail is truncated on reopen).
//! - A partition is appended by one thread at a time, in the order it is given: only
//!   distinct partitions are appended concurrently ([`Sink::append_batches`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fluvio::{FluvioError, Producer};
use crate::log::{Log, LogError, PartitionWriter, WriterOptions, partition_for_key};
use crate::source::{Backend, SourceError};

/// Why output could not be appended or read back.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Fluvio(#[from] FluvioError),
}

impl SinkError {
    /// Whether retrying may help: an I/O fault or a disconnect.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Log(e) => matches!(e, LogError::Io { .. } | LogError::PartitionIo { .. }),
            SinkError::Fluvio(e) => e.is_transient() || matches!(e, FluvioError::Topic { .. }),
        }
    }
}

impl From<SourceError> for SinkError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Log(e) => SinkError::Log(e),
            SourceError::Fluvio(e) => SinkError::Fluvio(e),
        }
    }
}

/// Producer batching on Fluvio (`output.fluvio_linger`, `output.fluvio_batch_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerOptions {
    pub linger: Duration,
    pub batch_bytes: usize,
    /// The largest record the producer must accept (`limits.max_output_record_bytes`):
    /// Fluvio's producer refuses a record larger than its request size.
    pub max_record_bytes: usize,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            linger: Duration::from_millis(10),
            batch_bytes: 1 << 20,
            max_record_bytes: 4 << 20,
        }
    }
}

impl ProducerOptions {
    /// A producer request's size limit: a batch, or the largest record with room for
    /// its framing.
    pub fn max_request_bytes(&self) -> usize {
        self.batch_bytes
            .max(self.max_record_bytes.saturating_add(64 << 10))
    }
}

/// The appending side of a backend.
pub struct Sink {
    backend: Backend,
    options: ProducerOptions,
    writers: BTreeMap<(String, u32), PartitionWriter>,
    /// On Fluvio, one producer per output partition, pinned to it.
    producers: BTreeMap<(String, u32), Producer>,
    /// How many partitions [`Sink::append_batches`] appends at once.
    threads: usize,
}

impl Sink {
    pub fn new(backend: &Backend, options: ProducerOptions) -> Sink {
        Sink {
            backend: backend.clone(),
            options,
            writers: BTreeMap::new(),
            producers: BTreeMap::new(),
            threads: 1,
        }
    }

    /// Lets [`Sink::append_batches`] append up to `threads` embedded-log partitions at
    /// once (1, the default, appends them in turn).
    pub fn with_threads(mut self, threads: usize) -> Sink {
        self.threads = threads.max(1);
        self
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Forgets open writers and producers (after a failure).
    pub fn reset(&mut self) {
        self.writers.clear();
        self.producers.clear();
    }

    /// The error a test's injected publish fault stands for on this backend.
    pub fn injected_fault(&self, topic: &str, partition: u32, source: std::io::Error) -> SinkError {
        match &self.backend {
            Backend::Embedded(log) => SinkError::Log(LogError::Io {
                path: log.partition_dir(topic, partition),
                source,
            }),
            Backend::Fluvio(c) => SinkError::Fluvio(FluvioError::Partition {
                endpoint: c.endpoint().to_owned(),
                topic: topic.to_owned(),
                partition,
                message: source.to_string(),
            }),
        }
    }

    /// The partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32, SinkError> {
        Ok(self.backend.partitions(topic)?)
    }

    /// Appends `records` (key, value) to `topic` partition `partition`, durably.
    pub fn append<'a>(
        &mut self,
        topic: &str,
        partition: u32,
        records: impl IntoIterator<Item = (Option<&'a [u8]>, &'a [u8])>,
    ) -> Result<(), SinkError> {
        let appended = self.append_with(
            topic,
            partition,
            records.into_iter().map(|(key, value)| {
                let write = move |out: &mut Vec<u8>| {
                    out.extend_from_slice(value);
                    Ok::<(), std::convert::Infallible>(())
                };
                (key, write)
            }),
        )?;
        let Ok(()) = appended;
        Ok(())
    }

    /// [`Sink::append`] of values that each write themselves: on the embedded log straight
    /// into their frames ([`PartitionWriter::append_with`]), so the outbox's publisher
    /// decompresses a record only once and holds no batch of decompressed values. When a
    /// value's writer fails, the records before it are appended durably and its error is
    /// returned inside `Ok`.
    pub fn append_with<'a, I, W, E>(
        &mut self,
        topic: &str,
        partition: u32,
        records: I,
    ) -> Result<Result<(), E>, SinkError>
    where
        I: IntoIterator<Item = (Option<&'a [u8]>, W)>,
        W: FnOnce(&mut Vec<u8>) -> Result<(), E>,
    {
        match &self.backend {
            Backend::Embedded(log) => {
                let mut writer = take_writer(&mut self.writers, log, topic, partition)?;
                let appended = append_stamped(&mut writer, records);
                self.writers.insert((topic.to_owned(), partition), writer);
                Ok(appended?)
            }
            Backend::Fluvio(cluster) => {
                let cluster = Arc::clone(cluster);
                let key = (topic.to_owned(), partition);
                if !self.producers.contains_key(&key) {
                    let p = cluster.producer(topic, Some(partition), self.options)?;
                    self.producers.insert(key.clone(), p);
                }
                let producer = &self.producers[&key];
                let mut values = Vec::new();
                let mut failed = None;
                for (k, write) in records {
                    let mut value = Vec::new();
                    if let Err(e) = write(&mut value) {
                        failed = Some(e);
                        break;
                    }
                    values.push((k.map(<[u8]>::to_vec), value));
                }
                cluster
                    .send_all(producer, values)
                    .inspect_err(|_| self.reset())
                    .map_err(SinkError::from)?;
                Ok(failed.map_or(Ok(()), Err))
            }
        }
    }

    /// [`Sink::append_with`] of several batches (topic, partition, records), each to a
    /// distinct partition; `appended` is called once per batch, after it is durable.
    /// Returns the first failure in batch order: the batches before it are durable, the
    /// ones after it may or may not be (a caller reads the partitions back to know).
    ///
    /// On the embedded log with more than one thread ([`Sink::with_threads`]) the batches
    /// are appended concurrently, each by one thread: a checkpoint's output is mostly
    /// copying values into frames and writing them, which one core cannot keep up with
    /// when the last checkpoint of a run carries every still-open session. Each partition
    /// writes and syncs its own segment, so the syncs overlap too. A failure stops the
    /// taking of further batches. On Fluvio (whose producers already pipeline) the
    /// batches go in turn, stopping at the first failure.
    pub fn append_batches<'a, I, W, E>(
        &mut self,
        batches: Vec<(&str, u32, I)>,
        appended: &(dyn Fn() + Sync),
    ) -> Result<Result<(), E>, SinkError>
    where
        I: IntoIterator<Item = (Option<&'a [u8]>, W)> + Send,
        W: FnOnce(&mut Vec<u8>) -> Result<(), E>,
        E: Send,
    {
        let log = match &self.backend {
            Backend::Embedded(log) if self.threads > 1 && batches.len() > 1 => log.clone(),
            _ => {
                for (topic, partition, records) in batches {
                    if let Err(e) = self.append_with(topic, partition, records)? {
                        return Ok(Err(e));
                    }
                    appended();
                }
                return Ok(Ok(()));
            }
        };
        // Every writer is opened before anything is appended, so that a partition that
        // cannot be opened fails the call before any batch lands.
        let mut jobs = Vec::with_capacity(batches.len());
        for (i, (topic, partition, records)) in batches.into_iter().enumerate() {
            let writer = take_writer(&mut self.writers, &log, topic, partition)?;
            jobs.push((i, (topic.to_owned(), partition), writer, records));
        }
        let workers = self.threads.min(jobs.len());
        let queue = Mutex::new(jobs.into_iter());
        let done = Mutex::new(Vec::with_capacity(workers));
        let failed = AtomicBool::new(false);
        let work = || {
            while !failed.load(Ordering::Relaxed) {
                let Some((i, key, mut writer, records)) = queue.lock().expect("poisoned").next()
                else {
                    break;
                };
                let outcome = append_stamped(&mut writer, records);
                match &outcome {
                    Ok(Ok(())) => appended(),
                    _ => failed.store(true, Ordering::Relaxed),
                }
                done.lock()
                    .expect("poisoned")
                    .push((i, key, writer, outcome));
            }
        };
        std::thread::scope(|s| {
            for n in 1..workers {
                // A thread that cannot be spawned leaves its share to the others.
                let _ = std::thread::Builder::new()
                    .name(format!("braid-publish-{n}"))
                    .spawn_scoped(s, work);
            }
            work();
        });
        let mut done = done.into_inner().expect("poisoned");
        done.sort_unstable_by_key(|(i, ..)| *i);
        for (_, key, writer, _) in queue.into_inner().expect("poisoned") {
            self.writers.insert(key, writer);
        }
        let mut first_failure = None;
        for (_, key, writer, outcome) in done {
            match outcome {
                Ok(Ok(())) => {
                    self.writers.insert(key, writer);
                }
                Ok(Err(e)) if first_failure.is_none() => first_failure = Some(Ok(Err(e))),
                Err(e) if first_failure.is_none() => first_failure = Some(Err(e.into())),
                _ => {}
            }
        }
        first_failure.unwrap_or(Ok(Ok(())))
    }

    /// Visits the records of `topic` partition `partition` in `[from, to)` as
    /// (offset, value); returns how many.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, &[u8]),
    ) -> Result<u64, SinkError> {
        let mut at = from;
        match &self.backend {
            Backend::Embedded(log) => {
                let mut reader = log.reader(topic, partition, from)?;
                while reader.position() < to {
                    let max = (to - reader.position()).min(1024) as usize;
                    let n = reader.read_into(max, |view, buf| {
                        f(view.offset, &buf[view.value.clone()]);
                    })?;
                    if n == 0 {
                        break;
                    }
                }
                at = reader.position();
            }
            Backend::Fluvio(c) => {
                while at < to {
                    let max = (to - at).min(1024) as usize;
                    let records = c.read_range(topic, partition, at, max)?;
                    if records.is_empty() {
                        break;
                    }
                    for r in &records {
                        let offset = r.offset() as u64;
                        if offset >= to {
                            break;
                        }
                        f(offset, r.value());
                        at = offset + 1;
                    }
                }
            }
        }
        Ok(at - from)
    }

    /// A partition's first and end offsets.
    pub fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), SinkError> {
        Ok(self.backend.offsets(topic, partition)?)
    }
}

/// The writer of an embedded-log partition, taken out of `writers` (opened when absent);
/// the caller puts it back once it has appended.
fn take_writer(
    writers: &mut BTreeMap<(String, u32), PartitionWriter>,
    log: &Log,
    topic: &str,
    partition: u32,
) -> Result<PartitionWriter, LogError> {
    match writers.remove(&(topic.to_owned(), partition)) {
        Some(w) => Ok(w),
        None => log.writer(topic, partition, WriterOptions::default()),
    }
}

/// Appends `records` to an embedded-log partition, all stamped with the time of the call.
fn append_stamped<'a, I, W, E>(
    writer: &mut PartitionWriter,
    records: I,
) -> Result<Result<(), E>, LogError>
where
    I: IntoIterator<Item = (Option<&'a [u8]>, W)>,
    W: FnOnce(&mut Vec<u8>) -> Result<(), E>,
{
    let now = crate::time::wall_clock_ms();
    let appended = writer.append_with(records.into_iter().map(|(k, w)| (k, now, w)))?;
    Ok(appended.map(|_| ()))
}

/// The embedded log's producer rule as a Fluvio partitioner, for the tools: a keyed
/// record by its key (which is also Fluvio's default), unkeyed ones round-robin from
/// partition 0, so the same input lands in the same partitions on both brokers.
#[derive(Default)]
pub(crate) struct BraidPartitioner {
    next: std::sync::atomic::AtomicU32,
}

impl ::fluvio::Partitioner for BraidPartitioner {
    fn partition(
        &self,
        config: &::fluvio::PartitionerConfig,
        key: Option<&[u8]>,
        _value: &[u8],
    ) -> ::fluvio::PartitionId {
        let n = config.partition_count();
        match key {
            Some(k) => partition_for_key(k, n),
            None => self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n.max(1),
        }
    }
}

/// Queued bytes after which a Fluvio [`TopicProducer`] sends.
const TOOL_BATCH_BYTES: usize = 1 << 20;

/// Appends to every partition of one topic, keyed records by their key's partition:
/// what `braid produce` and `braid gen` write with, on either backend.
pub enum TopicProducer {
    Embedded(crate::log::Producer),
    Fluvio {
        cluster: Arc<crate::fluvio::Cluster>,
        producer: Producer,
        pending: Vec<(Option<Vec<u8>>, Vec<u8>)>,
        pending_bytes: usize,
        /// The next unkeyed record's partition (as the producer's partitioner counts).
        round_robin: u32,
    },
}

impl TopicProducer {
    /// A producer of the existing topic `topic`.
    pub fn open(backend: &Backend, topic: &str) -> Result<TopicProducer, SinkError> {
        Ok(match backend {
            Backend::Embedded(log) => {
                TopicProducer::Embedded(log.producer(topic, WriterOptions::default())?)
            }
            Backend::Fluvio(c) => TopicProducer::Fluvio {
                producer: c.producer(topic, None, ProducerOptions::default())?,
                cluster: Arc::clone(c),
                pending: Vec::new(),
                pending_bytes: 0,
                round_robin: 0,
            },
        })
    }

    pub fn partitions(&self) -> u32 {
        match self {
            TopicProducer::Embedded(p) => p.topic().partitions,
            TopicProducer::Fluvio { producer, .. } => producer.partitions(),
        }
    }

    /// Queues a record; returns its partition. Unkeyed records go round-robin.
    pub fn send(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<u32, SinkError> {
        self.send_at(key, value, crate::time::wall_clock_ms())
    }

    /// Queues a record with its own append time. Fluvio stamps records itself when
    /// they are produced, so there the time is not kept.
    pub fn send_at(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<u32, SinkError> {
        match self {
            TopicProducer::Embedded(p) => Ok(p.send_at(key, value, timestamp_ms)?),
            TopicProducer::Fluvio {
                producer,
                pending,
                pending_bytes,
                round_robin,
                ..
            } => {
                let n = producer.partitions().max(1);
                let partition = match key {
                    Some(k) => partition_for_key(k, n),
                    None => {
                        let p = *round_robin % n;
                        *round_robin = round_robin.wrapping_add(1);
                        p
                    }
                };
                *pending_bytes += value.len() + key.map_or(0, <[u8]>::len);
                pending.push((key.map(<[u8]>::to_vec), value.to_vec()));
                if *pending_bytes >= TOOL_BATCH_BYTES {
                    self.flush()?;
                }
                Ok(partition)
            }
        }
    }

    /// Appends everything queued and waits until it is durable.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        match self {
            TopicProducer::Embedded(p) => Ok(p.flush()?),
            TopicProducer::Fluvio {
                cluster,
                producer,
                pending,
                pending_bytes,
                ..
            } => {
                *pending_bytes = 0;
                if pending.is_empty() {
                    return Ok(());
                }
                Ok(cluster.send_all(producer, std::mem::take(pending))?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tempfile::TempDir;

    fn log_with(partitions: u32) -> (TempDir, Log) {
        let dir = TempDir::new().unwrap();
        let log = Log::open(dir.path().join("log")).unwrap();
        log.create_topic("out", partitions).unwrap();
        (dir, log)
    }

    fn contents(log: &Log, partitions: u32) -> Vec<Vec<Vec<u8>>> {
        (0..partitions)
            .map(|p| {
                let mut reader = log.reader("out", p, 0).unwrap();
                let records = reader.read_batch(usize::MAX).unwrap();
                records.into_iter().map(|r| r.value).collect()
            })
            .collect()
    }

    /// Appends `n` values to each of `partitions` partitions with `threads` threads; the
    /// value `fail` (partition, index), if any, fails to write itself.
    fn append(
        log: &Log,
        threads: usize,
        partitions: u32,
        n: u32,
        fail: Option<(u32, u32)>,
    ) -> (Result<Result<(), String>, SinkError>, usize) {
        let mut sink =
            Sink::new(&Backend::Embedded(log.clone()), Default::default()).with_threads(threads);
        let appended = AtomicUsize::new(0);
        let batches = (0..partitions)
            .map(|p| {
                let records = (0..n).map(move |i| {
                    let write = move |out: &mut Vec<u8>| {
                        if fail == Some((p, i)) {
                            return Err(format!("value {i} of partition {p}"));
                        }
                        out.extend_from_slice(format!("{p}-{i}").as_bytes());
                        Ok(())
                    };
                    (None, write)
                });
                ("out", p, records)
            })
            .collect();
        let outcome = sink.append_batches(batches, &|| {
            appended.fetch_add(1, Ordering::Relaxed);
        });
        (outcome, appended.into_inner())
    }

    #[test]
    fn batches_appended_at_once_land_as_appended_in_turn() {
        let (_a, one) = log_with(5);
        let (_b, two) = log_with(5);
        let (outcome, appended) = append(&one, 1, 5, 300, None);
        assert!(matches!(outcome, Ok(Ok(()))));
        assert_eq!(appended, 5);
        let (outcome, appended) = append(&two, 2, 5, 300, None);
        assert!(matches!(outcome, Ok(Ok(()))));
        assert_eq!(appended, 5);
        let got = contents(&two, 5);
        assert_eq!(got, contents(&one, 5));
        assert_eq!(got[3][299], b"3-299");
    }

    #[test]
    fn a_value_that_fails_stops_its_partition_after_the_values_before_it() {
        for threads in [1, 2] {
            let (_d, log) = log_with(3);
            let (outcome, appended) = append(&log, threads, 3, 10, Some((1, 4)));
            match outcome {
                Ok(Err(e)) => assert_eq!(e, "value 4 of partition 1"),
                other => panic!("{threads} threads: {other:?}"),
            }
            let got = contents(&log, 3);
            assert_eq!(got[0].len(), 10, "{threads} threads");
            assert_eq!(got[1].len(), 4, "{threads} threads");
            assert_eq!(got[1][3], b"1-3");
            // In turn, nothing after the failure is appended; at once, a batch already
            // taken by the other thread may land (the caller reads partitions back).
            if threads == 1 {
                assert_eq!((appended, got[2].len()), (1, 0));
            } else {
                assert_eq!(appended, 1 + usize::from(got[2].len() == 10));
            }
        }
    }
}
