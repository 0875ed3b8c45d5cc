//! The Fluvio connector: a job's sources and sinks on a Fluvio cluster, through the
//! official `fluvio` client crate.
//!
//! The client is asynchronous; braid's stages are plain threads. A [`Cluster`] owns a
//! small tokio runtime that drives the client: a partition's records are streamed by a
//! task into a bounded channel ([`PartitionStream`]), and one-off calls (metadata, end
//! offsets, produce and flush) block the calling thread on the runtime, each bounded by
//! a timeout so an unreachable cluster is an error, never a hang.
//!
//! Invariants:
//! - **No offset is ever skipped.** Fluvio's consumer stream has been seen to skip runs
//!   of offsets (upstream PR #4627: a stream fetch response may hold incomplete batches).
//!   A [`PartitionStream`] checks that offsets are dense; on a gap it logs it once,
//!   counts it ([`PartitionStream::gaps`]) and re-opens the stream at the first missing
//!   offset. Only when a re-opened stream starts past that offset three times in a row
//!   (the records are gone, e.g. deleted by retention) does it go on, logging an error
//!   that names the lost range.
//!   A stream quiet for a few seconds while the partition holds records past its
//!   position has stalled (seen after re-opens): it is re-opened the same way.
//! - Keyed records go to the partition [`crate::log::partition_for_key`] names, which is
//!   the rule of Fluvio's default partitioner (SipHash-2-4 of the key, modulo the
//!   partition count), so braid's output and any Fluvio producer agree.
//! - A record's append time is its Fluvio timestamp (set by the producer); a record
//!   without one (-1) is taken as appended at the epoch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ::fluvio::consumer::{ConsumerConfigExtBuilder, OffsetManagementStrategy, Record, RetryMode};
use ::fluvio::metadata::topic::TopicSpec;
use ::fluvio::{
    Fluvio, FluvioClusterConfig, Offset, TopicProducerConfigBuilder, TopicProducerPool,
};
use futures_util::StreamExt as _;

/// How long a one-off call (connect, metadata, an offset probe, a flush) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Records handed over per channel message, and messages in flight per partition.
const STREAM_BATCH: usize = 1024;
const STREAM_CHANNEL: usize = 8;
/// Re-opens at the same offset after which a gap is taken as records that are gone.
const GAP_REOPENS: u32 = 3;
/// A stream quiet this long is checked against the partition's end offset.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// Why a Fluvio call failed. Every variant names the cluster, and the topic and
/// partition where there is one.
#[derive(Debug, thiserror::Error)]
pub enum FluvioError {
    #[error(
        "Fluvio cluster at {endpoint}: cannot connect: {message} (is the cluster running? `fluvio cluster status` tells)"
    )]
    Connect { endpoint: String, message: String },
    #[error(
        "Fluvio cluster at {endpoint}: topic `{topic}` does not exist (create it with `fluvio topic create {topic} --partitions N`)"
    )]
    TopicNotFound { endpoint: String, topic: String },
    #[error("Fluvio cluster at {endpoint}: topic `{topic}`: {message}")]
    Topic {
        endpoint: String,
        topic: String,
        message: String,
    },
    #[error("Fluvio cluster at {endpoint}: topic `{topic}` partition {partition}: {message}")]
    Partition {
        endpoint: String,
        topic: String,
        partition: u32,
        message: String,
    },
    #[error("Fluvio cluster at {endpoint}: {what} did not answer within {secs} s")]
    Timeout {
        endpoint: String,
        what: String,
        secs: u64,
    },
    #[error("starting the Fluvio client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl FluvioError {
    /// Whether retrying may help (a disconnect or a slow cluster), as opposed to a
    /// missing topic or a refused configuration.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FluvioError::Timeout { .. } | FluvioError::Partition { .. }
        )
    }
}

/// Where to find the cluster: an `endpoint` (`host:port` of the SC), or the current
/// Fluvio profile (`~/.fluvio/config`, as the Fluvio CLI uses it, TLS settings included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    pub endpoint: Option<String>,
}

impl ClusterConfig {
    /// Connects.
    pub fn build(&self) -> Result<Cluster, FluvioError> {
        Cluster::connect(self)
    }
}

/// A connection to a Fluvio cluster, shared by a job's sources and sinks.
pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: Arc<Fluvio>,
    /// The endpoint, for messages.
    endpoint: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The Fluvio consumer name of a braid job: its producer name with every character
/// outside `a-z 0-9 -` as `-` (`customer-journey/instance-0-of-2` →
/// `customer-journey-instance-0-of-2`).
pub fn consumer_name(job: &str) -> String {
    job.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// A record read from Fluvio, owned (its bytes are shared with the fetch response).
pub type FluvioRecord = Record;

impl Cluster {
    fn connect(config: &ClusterConfig) -> Result<Cluster, FluvioError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("braid-fluvio")
            .enable_all()
            .build()
            .map_err(FluvioError::Runtime)?;
        let (cluster_config, endpoint) = match &config.endpoint {
            Some(e) => (Ok(FluvioClusterConfig::new(e.clone())), e.clone()),
            None => match FluvioClusterConfig::load() {
                Ok(c) => {
                    let e = c.endpoint.clone();
                    (Ok(c), e)
                }
                Err(e) => (Err(e.to_string()), "the current Fluvio profile".to_owned()),
            },
        };
        let cluster_config = cluster_config.map_err(|message| FluvioError::Connect {
            endpoint: endpoint.clone(),
            message,
        })?;
        let connect = runtime.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, Fluvio::connect_with_config(&cluster_config)).await
        });
        let client = match connect {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(FluvioError::Connect {
                    endpoint,
                    message: format!("{e:#}"),
                });
            }
            Err(_) => {
                return Err(FluvioError::Timeout {
                    endpoint,
                    what: "connecting".into(),
                    secs: CALL_TIMEOUT.as_secs(),
                });
            }
        };
        Ok(Cluster {
            runtime,
            client: Arc::new(client),
            endpoint,
        })
    }

    /// The endpoint connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs `f` on the runtime, bounded by [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, FluvioError> {
        self.runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await })
            .map_err(|_| FluvioError::Timeout {
                endpoint: self.endpoint.clone(),
                what: what(),
                secs: CALL_TIMEOUT.as_secs(),
            })
    }

    fn topic_error(&self, topic: &str, e: impl std::fmt::Display) -> FluvioError {
        FluvioError::Topic {
            endpoint: self.endpoint.clone(),
            topic: topic.to_owned(),
            message: e.to_string(),
        }
    }

    fn partition_error(
        &self,
        topic: &str,
        partition: u32,
        e: impl std::fmt::Display,
    ) -> FluvioError {
        FluvioError::Partition {
            endpoint: self.endpoint.clone(),
            topic: topic.to_owned(),
            partition,
            message: e.to_string(),
        }
    }

    /// The partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32, FluvioError> {
        let client = Arc::clone(&self.client);
        let name = topic.to_owned();
        let listed = self.call(|| format!("listing topic `{topic}`"), async move {
            let admin = client.admin().await;
            admin.list::<TopicSpec, String>(vec![name]).await
        })?;
        let listed = listed.map_err(|e| self.topic_error(topic, format!("{e:#}")))?;
        match listed.into_iter().find(|m| m.name == topic) {
            Some(m) => Ok(m.spec.partitions()),
            None => Err(FluvioError::TopicNotFound {
                endpoint: self.endpoint.clone(),
                topic: topic.to_owned(),
            }),
        }
    }

    /// Creates `topic` with `partitions` partitions (replication 1); an existing topic
    /// with that many partitions is fine, one with another count is an error.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), FluvioError> {
        match self.partitions(topic) {
            Ok(n) if n == partitions => return Ok(()),
            Ok(n) => {
                return Err(self.topic_error(
                    topic,
                    format!("exists with {n} partitions, not {partitions}"),
                ));
            }
            Err(FluvioError::TopicNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let client = Arc::clone(&self.client);
        let name = topic.to_owned();
        let created = self.call(|| format!("creating topic `{topic}`"), async move {
            let admin = client.admin().await;
            admin
                .create(name, false, TopicSpec::new_computed(partitions, 1, None))
                .await
        });
        match created {
            Ok(Ok(())) => {}
            Ok(Err(e)) if format!("{e:#}").contains("exists") => {}
            Ok(Err(e)) => return Err(self.topic_error(topic, format!("creating it: {e:#}"))),
            // A busy SC can answer late; the topic may still come: wait for it below.
            Err(FluvioError::Timeout { .. }) => {}
            Err(e) => return Err(e),
        }
        // The SC answers before the SPU has the replicas: wait until every partition can
        // be read.
        let deadline = std::time::Instant::now() + 3 * CALL_TIMEOUT;
        for p in 0..partitions {
            loop {
                let ready = self
                    .partitions(topic)
                    .and_then(|_| self.read_range(topic, p, 0, 1));
                match ready {
                    Ok(_) => break,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Deletes `topic` (tests and tools).
    pub fn delete_topic(&self, topic: &str) -> Result<(), FluvioError> {
        let client = Arc::clone(&self.client);
        let name = topic.to_owned();
        let deleted = self.call(|| format!("deleting topic `{topic}`"), async move {
            let admin = client.admin().await;
            admin.delete::<TopicSpec>(name).await
        })?;
        deleted.map_err(|e| self.topic_error(topic, format!("deleting it: {e:#}")))
    }

    /// The Fluvio consumer offsets `consumer` holds: (topic, partition, offset of the last
    /// record it committed), as `fluvio consumer list` shows them.
    pub fn consumer_offsets(&self, consumer: &str) -> Result<Vec<(String, u32, i64)>, FluvioError> {
        let client = Arc::clone(&self.client);
        let listed = self.call(|| "listing consumer offsets".to_owned(), async move {
            client.consumer_offsets().await
        })?;
        let listed = listed.map_err(|e| FluvioError::Connect {
            endpoint: self.endpoint.clone(),
            message: format!("listing consumer offsets: {e:#}"),
        })?;
        Ok(listed
            .into_iter()
            .filter(|c| c.consumer_id == consumer)
            .map(|c| (c.topic, c.partition, c.offset))
            .collect())
    }

    /// Up to `max` records of a partition from offset `from`, as far as the partition
    /// holds them now (a stream that stops at the end offset of its start).
    pub fn read_range(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<FluvioRecord>, FluvioError> {
        self.read_at(topic, partition, offset_at(from), max)
    }

    fn read_at(
        &self,
        topic: &str,
        partition: u32,
        start: Offset,
        max: usize,
    ) -> Result<Vec<FluvioRecord>, FluvioError> {
        let read = self.call(
            || format!("reading topic `{topic}` partition {partition}"),
            read_once(&self.client, topic, partition, start, max),
        )?;
        read.map_err(|e| self.partition_error(topic, partition, format!("{e:#}")))
    }

    /// The partition's end offset: the offset the next record will get (one probe).
    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, FluvioError> {
        let last = self.read_at(topic, partition, Offset::from_end(1), 1)?;
        Ok(last.first().map_or(0, |r| r.offset() as u64 + 1))
    }

    /// The partition's first and end offsets (the end: the offset the next record will
    /// get).
    pub fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), FluvioError> {
        let end = self.end_offset(topic, partition)?;
        if end == 0 {
            return Ok((0, 0));
        }
        let first = self.read_at(topic, partition, Offset::beginning(), 1)?;
        let start = first.first().map_or(end, |r| r.offset() as u64);
        Ok((start, end))
    }

    /// The first offset whose record timestamp is ≥ `timestamp_ms`, by binary search over
    /// offsets (Fluvio has no time index). Exact when producer timestamps do not
    /// decrease along the partition, approximate otherwise.
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, FluvioError> {
        let (mut lo, mut hi) = self.offsets(topic, partition)?;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.read_range(topic, partition, mid, 1)?;
            match at.first() {
                Some(r) if r.timestamp() < timestamp_ms => lo = r.offset() as u64 + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Streams `topic` partition `partition` from offset `from`, waking `wake` whenever
    /// records arrive. With a `consumer` name, the Fluvio client commits the stream's read
    /// position as that consumer's offset every second (for `fluvio consumer list`; braid
    /// itself resumes from its checkpoint, and the stored offset is deleted before the
    /// stream opens, so it never decides where reading starts).
    pub fn stream(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        wake: Arc<Wake>,
        consumer: Option<String>,
    ) -> PartitionStream {
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHANNEL);
        let gaps = Arc::new(AtomicU64::new(0));
        let task = StreamTask {
            consumer,
            client: Arc::clone(&self.client),
            endpoint: self.endpoint.clone(),
            topic: topic.to_owned(),
            partition,
            next: from,
            tx,
            wake,
            gaps: Arc::clone(&gaps),
        };
        let task = self.runtime.spawn(task.run());
        PartitionStream {
            rx,
            buffered: VecDeque::new(),
            position: from,
            gaps,
            task,
            runtime: self.runtime.handle().clone(),
            until: None,
        }
    }

    /// A producer of `topic`: into `partition` only when given (what the outbox needs:
    /// it has placed every record already), else keyed records by their key's partition
    /// and unkeyed ones round-robin ([`crate::sink::BraidPartitioner`]).
    pub fn producer(
        &self,
        topic: &str,
        partition: Option<u32>,
        options: crate::sink::ProducerOptions,
    ) -> Result<Producer, FluvioError> {
        let partitions = self.partitions(topic)?;
        let client = Arc::clone(&self.client);
        let mut builder = TopicProducerConfigBuilder::default();
        builder
            .linger(options.linger)
            .batch_size(options.batch_bytes)
            .max_request_size(options.max_request_bytes());
        match partition {
            Some(p) => builder.set_specific_partitioner(p),
            None => builder.partitioner(Arc::new(crate::sink::BraidPartitioner::default())),
        };
        let config = builder
            .build()
            .map_err(|e| self.topic_error(topic, format!("producer configuration: {e:#}")))?;
        let name = topic.to_owned();
        let pool = self.call(
            || format!("opening a producer of topic `{topic}`"),
            async move { client.topic_producer_with_config(name, config).await },
        )?;
        let pool = pool.map_err(|e| {
            let message = format!("{e:#}");
            if message.contains("not found") {
                FluvioError::TopicNotFound {
                    endpoint: self.endpoint.clone(),
                    topic: topic.to_owned(),
                }
            } else {
                self.topic_error(topic, message)
            }
        })?;
        Ok(Producer {
            pool,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// Sends `records` (key, value) with `producer` and waits until the cluster has them
    /// all: what the outbox needs before it acknowledges.
    pub fn send_all(
        &self,
        producer: &Producer,
        records: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    ) -> Result<(), FluvioError> {
        let pool = &producer.pool;
        let n = records.len();
        if n == 0 {
            return Ok(());
        }
        let sent = self.call(
            || format!("producing {n} records to topic `{}`", producer.topic),
            async move {
                let mut outputs = Vec::with_capacity(records.len());
                for (key, value) in records {
                    let out = match key {
                        Some(k) => pool.send(k, value).await?,
                        None => pool.send(::fluvio::RecordKey::NULL, value).await?,
                    };
                    outputs.push(out);
                }
                pool.flush().await?;
                for out in outputs {
                    out.wait().await?;
                }
                Ok::<_, anyhow::Error>(())
            },
        )?;
        sent.map_err(|e| {
            // A failed send leaves the partition producer in error until cleared.
            self.runtime.block_on(pool.clear_errors());
            self.topic_error(&producer.topic, format!("producing: {e:#}"))
        })
    }
}

/// A producer of one topic (see [`Cluster::producer`]).
pub struct Producer {
    pool: TopicProducerPool,
    topic: String,
    partitions: u32,
}

impl Producer {
    /// The topic's partition count when the producer was opened.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }
}

/// Wakes a waiting reader when any of its partitions received records.
#[derive(Default)]
pub struct Wake {
    ready: Mutex<bool>,
    cond: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Waits until notified or `timeout` passes; true when notified.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let guard = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |ready| !*ready)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *guard)
    }
}

/// The reading side of one partition's stream (see [`Cluster::stream`]).
pub struct PartitionStream {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<FluvioRecord>, FluvioError>>,
    buffered: VecDeque<FluvioRecord>,
    position: u64,
    gaps: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Handle,
    /// A bounded reader's end: below it, an empty buffer means "not delivered yet".
    until: Option<u64>,
}

impl Drop for PartitionStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a bounded reader waits for records it knows exist before it reports
/// nothing (the job then calls the partition stalled if that persists).
const BOUNDED_WAIT: Duration = Duration::from_secs(30);

impl PartitionStream {
    /// Offset of the next record this stream returns.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Gaps in the consumer stream repaired so far.
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    /// Makes this a bounded reader of the records before `end`: they exist, so when
    /// none is buffered it waits for the next delivery rather than report none. A
    /// bounded run thus sees the same records in every slice as on the embedded log,
    /// however the stream's deliveries happen to fall.
    pub fn read_until(&mut self, end: u64) {
        self.until = Some(end);
    }

    /// Moves what the task delivered into the buffer; the task's error, once.
    fn fill(&mut self) -> Result<(), FluvioError> {
        if !self.buffered.is_empty() {
            return Ok(());
        }
        loop {
            match self.rx.try_recv() {
                Ok(Ok(batch)) => {
                    self.buffered.extend(batch);
                    if !self.buffered.is_empty() {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        if self.until.is_none_or(|end| self.position >= end) {
            return Ok(());
        }
        let rx = &mut self.rx;
        let delivered = self
            .runtime
            .block_on(async { tokio::time::timeout(BOUNDED_WAIT, rx.recv()).await });
        match delivered {
            Ok(Some(Ok(batch))) => self.buffered.extend(batch),
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) | Err(_) => {}
        }
        Ok(())
    }

    /// Append time of the next record, when one is available.
    pub fn peek_timestamp(&mut self) -> Result<Option<i64>, FluvioError> {
        self.fill()?;
        Ok(self.buffered.front().map(append_time))
    }

    /// Hands up to `max` available records appended before `before_ms` to `f`.
    pub fn read_before(
        &mut self,
        max: usize,
        before_ms: i64,
        mut f: impl FnMut(&FluvioRecord),
    ) -> Result<usize, FluvioError> {
        let mut n = 0;
        while n < max {
            self.fill()?;
            let Some(head) = self.buffered.front() else {
                break;
            };
            if append_time(head) >= before_ms {
                break;
            }
            let record = self.buffered.pop_front().expect("peeked");
            f(&record);
            self.position = record.offset() as u64 + 1;
            n += 1;
        }
        Ok(n)
    }
}

/// A record's append time: its Fluvio timestamp, or the epoch when it has none.
pub fn append_time(r: &FluvioRecord) -> i64 {
    r.timestamp().max(0)
}

fn offset_at(offset: u64) -> Offset {
    Offset::absolute(offset as i64).unwrap_or_else(|_| Offset::beginning())
}

/// Up to `max` records of `topic` partition `partition` from `start`, by one
/// non-continuous consumer (the one-off reads: offset probes, ranges, tails).
async fn read_once(
    client: &Fluvio,
    topic: &str,
    partition: u32,
    start: Offset,
    max: usize,
) -> anyhow::Result<Vec<FluvioRecord>> {
    let config = ConsumerConfigExtBuilder::default()
        .topic(topic.to_owned())
        .partition(partition)
        .offset_start(start)
        .disable_continuous(true)
        .retry_mode(RetryMode::Disabled)
        .build()?;
    let mut stream = client.consumer_with_config(config).await?;
    let mut out = Vec::new();
    while out.len() < max {
        match stream.next().await {
            Some(Ok(r)) => out.push(r),
            Some(Err(code)) => anyhow::bail!("{code}"),
            None => break,
        }
    }
    Ok(out)
}

/// The task behind a [`PartitionStream`].
struct StreamTask {
    /// The Fluvio consumer whose offset the client commits.
    consumer: Option<String>,
    client: Arc<Fluvio>,
    endpoint: String,
    topic: String,
    partition: u32,
    /// The next offset to hand over.
    next: u64,
    tx: tokio::sync::mpsc::Sender<Result<Vec<FluvioRecord>, FluvioError>>,
    wake: Arc<Wake>,
    /// Gaps and stalls repaired (both: offsets the stream failed to deliver).
    gaps: Arc<AtomicU64>,
}

impl StreamTask {
    fn error(&self, message: String) -> FluvioError {
        FluvioError::Partition {
            endpoint: self.endpoint.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            message,
        }
    }

    /// The partition's end offset now, if the cluster answers (as [`Cluster::end_offset`]).
    async fn end_offset(&self) -> Option<u64> {
        let probe = read_once(
            &self.client,
            &self.topic,
            self.partition,
            Offset::from_end(1),
            1,
        );
        let last = tokio::time::timeout(CALL_TIMEOUT, probe).await.ok()?.ok()?;
        Some(last.first().map_or(0, |r| r.offset() as u64 + 1))
    }

    /// Hands `batch` over; false when the reader is gone.
    async fn deliver(&self, item: Result<Vec<FluvioRecord>, FluvioError>) -> bool {
        let ok = self.tx.send(item).await.is_ok();
        self.wake.notify();
        ok
    }

    async fn run(mut self) {
        let mut backoff = crate::time::Backoff::default();
        // Re-opens in a row at the same offset because of a gap.
        let mut reopened_at: Option<(u64, u32)> = None;
        loop {
            let mut builder = ConsumerConfigExtBuilder::default();
            builder
                .topic(self.topic.clone())
                .partition(self.partition)
                .offset_start(offset_at(self.next));
            if let Some(consumer) = &self.consumer {
                // A stored offset would win over `offset_start`: braid's position is the
                // truth, so the consumer starts afresh from it.
                let _ = self
                    .client
                    .delete_consumer_offset(consumer.clone(), (self.topic.clone(), self.partition))
                    .await;
                builder
                    .offset_consumer(consumer.clone())
                    .offset_strategy(OffsetManagementStrategy::Auto)
                    .offset_flush(Duration::from_secs(1));
            }
            let config = builder.build();
            let opened = match config {
                Ok(c) => self.client.consumer_with_config(c).await,
                Err(e) => Err(e),
            };
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    let e = self.error(format!("opening the consumer stream: {e:#}"));
                    if !self.deliver(Err(e)).await {
                        return;
                    }
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            };
            let mut batch = Vec::new();
            // Until the stream must be re-opened: a gap, an error, or its end (a
            // continuous stream only ends when the connection does).
            loop {
                let item = if batch.is_empty() {
                    match tokio::time::timeout(STALL_CHECK, stream.next()).await {
                        Ok(item) => item,
                        Err(_) => {
                            // Quiet for a while: fine at the tail, a stall if the
                            // partition holds records past ours (seen after re-opens).
                            if self.end_offset().await.is_some_and(|end| end > self.next) {
                                self.gaps.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    topic = %self.topic,
                                    partition = self.partition,
                                    at = self.next,
                                    "the Fluvio consumer stream stalled although the partition holds more records; re-opening it"
                                );
                                break;
                            }
                            continue;
                        }
                    }
                } else {
                    // Hand over what is here before waiting for more.
                    match futures_util::FutureExt::now_or_never(stream.next()) {
                        Some(item) => item,
                        None => {
                            if !self.deliver(Ok(std::mem::take(&mut batch))).await {
                                return;
                            }
                            continue;
                        }
                    }
                };
                match item {
                    Some(Ok(record)) => {
                        backoff = crate::time::Backoff::default();
                        let offset = record.offset() as u64;
                        if offset < self.next {
                            continue; // already handed over (a re-opened stream)
                        }
                        if offset > self.next {
                            let tries = match reopened_at {
                                Some((at, n)) if at == self.next => n + 1,
                                _ => 1,
                            };
                            if tries <= GAP_REOPENS {
                                self.gaps.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    topic = %self.topic,
                                    partition = self.partition,
                                    expected = self.next,
                                    got = offset,
                                    "the Fluvio consumer stream skipped offsets; re-opening it at the first missing one"
                                );
                                reopened_at = Some((self.next, tries));
                                break;
                            }
                            tracing::error!(
                                topic = %self.topic,
                                partition = self.partition,
                                from = self.next,
                                to = offset,
                                "offsets {}..{} are no longer in the partition (retention?); going on at {}",
                                self.next,
                                offset,
                                offset
                            );
                        }
                        reopened_at = None;
                        self.next = offset + 1;
                        batch.push(record);
                        if batch.len() >= STREAM_BATCH
                            && !self.deliver(Ok(std::mem::take(&mut batch))).await
                        {
                            return;
                        }
                    }
                    Some(Err(code)) => {
                        let e = self.error(format!("consumer stream: {code}"));
                        if !batch.is_empty() && !self.deliver(Ok(std::mem::take(&mut batch))).await
                        {
                            return;
                        }
                        if !self.deliver(Err(e)).await {
                            return;
                        }
                        tokio::time::sleep(backoff.failed()).await;
                        break;
                    }
                    None => break,
                }
            }
            if !batch.is_empty() && !self.deliver(Ok(batch)).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_endpoint_is_a_clear_error() {
        // Port 9 (discard) on loopback has no Fluvio SC.
        let err = ClusterConfig {
            endpoint: Some("127.0.0.1:9".into()),
        }
        .build()
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("Fluvio cluster at 127.0.0.1:9: cannot connect: ")
                || message
                    == "Fluvio cluster at 127.0.0.1:9: connecting did not answer within 20 s",
            "{message}"
        );
    }

    #[test]
    fn consumer_names_follow_fluvio_rules() {
        assert_eq!(
            consumer_name("customer-journey/instance-0-of-2"),
            "customer-journey-instance-0-of-2"
        );
        assert_eq!(consumer_name("Orders_v2"), "orders-v2");
    }

    #[test]
    fn wake_reports_a_notification_once() {
        let wake = Wake::default();
        assert!(!wake.wait_timeout(Duration::from_millis(1)));
        wake.notify();
        assert!(wake.wait_timeout(Duration::from_millis(1)));
        assert!(!wake.wait_timeout(Duration::from_millis(1)));
    }
}
