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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::fluvio::{FluvioError, Producer};
use crate::log::{LogError, PartitionWriter, WriterOptions, partition_for_key};
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
}

impl Sink {
    pub fn new(backend: &Backend, options: ProducerOptions) -> Sink {
        Sink {
            backend: backend.clone(),
            options,
            writers: BTreeMap::new(),
            producers: BTreeMap::new(),
        }
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
                let key = (topic.to_owned(), partition);
                if !self.writers.contains_key(&key) {
                    let w = log.writer(topic, partition, WriterOptions::default())?;
                    self.writers.insert(key.clone(), w);
                }
                let writer = self.writers.get_mut(&key).expect("inserted above");
                let now = crate::time::wall_clock_ms();
                let appended = writer.append_with(records.into_iter().map(|(k, w)| (k, now, w)))?;
                Ok(appended.map(|_| ()))
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
