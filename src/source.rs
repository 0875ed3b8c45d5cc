//! Sources: the broker a job reads, and its partitions, on the embedded log or on a
//! Fluvio cluster behind one interface.
//!
//! The job reads every partition in slices of append time (see `job`), so a partition
//! reader offers exactly three things: its position, the append time of its next record
//! (if one is available now), and the records before a given append time. Both
//! backends hand records over as borrowed [`RecordRef`]s, so the hot path allocates
//! nothing per record on the embedded log.
//!
//! Invariants:
//! - A reader returns every offset of its partition from its start, densely, or fails:
//!   the embedded log checks this itself, the Fluvio stream repairs the gaps Fluvio's
//!   consumer can leave ([`crate::fluvio`]).
//! - Positions are braid's own: a restart resumes from the checkpoint, never from a
//!   broker-side consumer offset.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::fluvio::{Cluster, ClusterConfig, FluvioError, PartitionStream, Wake};
use crate::log::{Log, LogError, PartitionReader, TailWatcher};
use crate::topology::{Broker, StartPosition};

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Fluvio(#[from] FluvioError),
}

impl SourceError {
    /// Whether the failure may pass (a disk or network fault): the read is retried.
    /// Corruption, a missing topic or a refused configuration stop the job.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Log(e) => matches!(e, LogError::Io { .. } | LogError::PartitionIo { .. }),
            SourceError::Fluvio(e) => e.is_transient(),
        }
    }
}

/// Which broker a job talks to: the topology's `broker`, or an override from the
/// command line (`--log DIR`, `--fluvio [ENDPOINT]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Embedded { path: PathBuf },
    Fluvio(ClusterConfig),
}

impl BackendConfig {
    /// The topology's broker.
    pub fn of(broker: &Broker) -> BackendConfig {
        match broker {
            Broker::Embedded { path } => BackendConfig::Embedded { path: path.clone() },
            Broker::Fluvio { endpoint, .. } => BackendConfig::Fluvio(ClusterConfig {
                endpoint: endpoint.clone(),
            }),
        }
    }

    /// Opens the log or connects to the cluster.
    pub fn build(&self) -> Result<Backend, SourceError> {
        Ok(match self {
            BackendConfig::Embedded { path } => Backend::Embedded(Log::open(path)?),
            BackendConfig::Fluvio(c) => Backend::Fluvio(Arc::new(c.build()?)),
        })
    }
}

/// An open broker, shared by a job's sources and sinks (cheap to clone).
#[derive(Debug, Clone)]
pub enum Backend {
    Embedded(Log),
    Fluvio(Arc<Cluster>),
}

/// One record as a source hands it over.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub offset: u64,
    /// Append time, epoch ms.
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    /// The value, or only a prefix of it when `value_len` is larger (a record too large
    /// to buffer, read through by the embedded log).
    pub value: &'a [u8],
    pub value_len: usize,
}

impl Backend {
    /// Where the records are, for messages: the log's directory or the cluster.
    pub fn describe(&self) -> String {
        match self {
            Backend::Embedded(log) => format!("the embedded log in {}", log.root().display()),
            Backend::Fluvio(c) => format!("the Fluvio cluster at {}", c.endpoint()),
        }
    }

    /// The partition count of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32, SourceError> {
        Ok(match self {
            Backend::Embedded(log) => log.topic(topic)?.partitions,
            Backend::Fluvio(c) => c.partitions(topic)?,
        })
    }

    /// Whether `topic` exists.
    pub fn has_topic(&self, topic: &str) -> Result<bool, SourceError> {
        match self {
            Backend::Embedded(log) => Ok(log.topic(topic).is_ok()),
            Backend::Fluvio(c) => match c.partitions(topic) {
                Ok(_) => Ok(true),
                Err(FluvioError::TopicNotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), SourceError> {
        match self {
            Backend::Embedded(log) => {
                log.create_topic(topic, partitions)?;
            }
            Backend::Fluvio(c) => c.create_topic(topic, partitions)?,
        }
        Ok(())
    }

    /// A partition's first offset and end offset (the offset of the next record).
    pub fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), SourceError> {
        Ok(match self {
            Backend::Embedded(log) => {
                let info = log.partition_info(topic, partition)?;
                (info.start_offset, info.end_offset)
            }
            Backend::Fluvio(c) => c.offsets(topic, partition)?,
        })
    }

    /// A partition's end offset (cheaper than [`Backend::offsets`] on Fluvio).
    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, SourceError> {
        Ok(match self {
            Backend::Embedded(log) => log.partition_info(topic, partition)?.end_offset,
            Backend::Fluvio(c) => c.end_offset(topic, partition)?,
        })
    }

    /// The offset `start` names in a partition whose offsets are `(first, end)`.
    pub fn resolve_start(
        &self,
        topic: &str,
        partition: u32,
        (first, end): (u64, u64),
        start: StartPosition,
    ) -> Result<u64, SourceError> {
        Ok(match start {
            StartPosition::Beginning => first,
            StartPosition::End => end,
            StartPosition::Offset(o) => o,
            StartPosition::Timestamp(ts) => match self {
                Backend::Embedded(log) => log.offset_for_timestamp(topic, partition, ts)?,
                Backend::Fluvio(c) => c.offset_for_timestamp(topic, partition, ts)?,
            },
        })
    }

    /// What wakes a live job when records arrive (`None` for a bounded run, which never
    /// waits for more).
    pub fn wakeup(&self, live: bool) -> Result<Option<Wakeup>, SourceError> {
        if !live {
            return Ok(None);
        }
        Ok(Some(match self {
            Backend::Embedded(_) => Wakeup::Tail(TailWatcher::new()?),
            Backend::Fluvio(_) => Wakeup::Signal(Arc::default()),
        }))
    }

    /// A reader of `topic` partition `partition` from `from`. Records with values over
    /// `value_limit` bytes may be handed over with only a prefix of their value. With a
    /// `consumer` (a live job), a Fluvio reader's position is also committed as that
    /// Fluvio consumer's offset, so `fluvio consumer list` shows its lag.
    pub fn reader(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        value_limit: usize,
        wakeup: Option<&mut Wakeup>,
        consumer: Option<&str>,
    ) -> Result<PartitionInput, SourceError> {
        Ok(match self {
            Backend::Embedded(log) => {
                let signal = match wakeup {
                    Some(Wakeup::Tail(w)) => Some(w.watch(&log.partition_dir(topic, partition))?),
                    _ => None,
                };
                let mut reader = log.reader(topic, partition, from)?;
                reader.limit_values(value_limit);
                if let Some(signal) = signal {
                    reader.follow(signal);
                }
                PartitionInput::Embedded(reader)
            }
            Backend::Fluvio(c) => {
                let wake = match wakeup {
                    Some(Wakeup::Signal(w)) => Arc::clone(w),
                    _ => Arc::default(),
                };
                PartitionInput::Fluvio(Box::new(c.stream(
                    topic,
                    partition,
                    from,
                    wake,
                    consumer.map(str::to_owned),
                )))
            }
        })
    }

    /// The error a test's injected read fault stands for on this backend.
    pub fn injected_fault(
        &self,
        topic: &str,
        partition: u32,
        source: std::io::Error,
    ) -> SourceError {
        match self {
            Backend::Embedded(log) => SourceError::Log(LogError::PartitionIo {
                topic: topic.to_owned(),
                partition,
                path: log.partition_dir(topic, partition),
                source,
            }),
            Backend::Fluvio(c) => SourceError::Fluvio(FluvioError::Partition {
                endpoint: c.endpoint().to_owned(),
                topic: topic.to_owned(),
                partition,
                message: source.to_string(),
            }),
        }
    }
}

/// Wakes a live job's source stage when records arrive.
pub enum Wakeup {
    /// File-system notifications on the embedded log's partition directories.
    Tail(TailWatcher),
    /// Fluvio's stream tasks signal it.
    Signal(Arc<Wake>),
}

impl Wakeup {
    /// Waits for an arrival or `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) {
        match self {
            Wakeup::Tail(w) => {
                w.wait_timeout(timeout);
            }
            Wakeup::Signal(w) => {
                w.wait_timeout(timeout);
            }
        }
    }
}

/// A reader of one source partition.
pub enum PartitionInput {
    Embedded(PartitionReader),
    Fluvio(Box<PartitionStream>),
}

impl PartitionInput {
    /// Offset of the next record.
    pub fn position(&self) -> u64 {
        match self {
            PartitionInput::Embedded(r) => r.position(),
            PartitionInput::Fluvio(s) => s.position(),
        }
    }

    /// Append time of the next record, when one is available now.
    pub fn peek_timestamp(&mut self) -> Result<Option<i64>, SourceError> {
        Ok(match self {
            PartitionInput::Embedded(r) => r.peek_timestamp()?,
            PartitionInput::Fluvio(s) => s.peek_timestamp()?,
        })
    }

    /// Hands up to `max` available records appended before `before_ms` to `f`; returns
    /// how many. A read that fails part-way has still handed over the records before
    /// the failure.
    pub fn read_before(
        &mut self,
        max: usize,
        before_ms: i64,
        mut f: impl FnMut(RecordRef<'_>),
    ) -> Result<usize, SourceError> {
        Ok(match self {
            PartitionInput::Embedded(r) => r.read_before(max, before_ms, |view, buf| {
                f(RecordRef {
                    offset: view.offset,
                    timestamp_ms: view.timestamp_ms,
                    key: view.key.clone().map(|k| &buf[k]),
                    value: &buf[view.value.clone()],
                    value_len: view.value_len,
                })
            })?,
            PartitionInput::Fluvio(s) => s.read_before(max, before_ms, |r| {
                f(RecordRef {
                    offset: r.offset() as u64,
                    timestamp_ms: crate::fluvio::append_time(r),
                    key: r.key(),
                    value: r.value(),
                    value_len: r.value().len(),
                })
            })?,
        })
    }

    /// Makes this a bounded reader that ends at `end`: on Fluvio, where records arrive
    /// asynchronously, reads below `end` wait for records not delivered yet (the
    /// embedded log reads them synchronously anyway).
    pub fn read_until(&mut self, end: u64) {
        if let PartitionInput::Fluvio(s) = self {
            s.read_until(end);
        }
    }

    /// Gaps in a Fluvio consumer stream repaired so far (0 on the embedded log).
    pub fn gaps(&self) -> u64 {
        match self {
            PartitionInput::Embedded(_) => 0,
            PartitionInput::Fluvio(s) => s.gaps(),
        }
    }
}

/// The partitions one instance of a scaled-out job reads: the same subset of every
/// source topic (`--instance I/N` or `--partitions 0,2,4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Partitions `p` with `p % count == index`.
    Instance { index: u32, count: u32 },
    /// These partitions.
    List(Vec<u32>),
}

impl Assignment {
    pub fn contains(&self, partition: u32) -> bool {
        match self {
            Assignment::Instance { index, count } => partition % count == *index,
            Assignment::List(list) => list.contains(&partition),
        }
    }

    /// A name for the instance: its state directory and producer name carry it.
    pub fn label(&self) -> String {
        match self {
            Assignment::Instance { index, count } => format!("instance-{index}-of-{count}"),
            Assignment::List(list) => format!(
                "partitions-{}",
                list.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("-")
            ),
        }
    }

    /// Parses `I/N` (0 ≤ I < N).
    pub fn parse_instance(text: &str) -> Result<Assignment, String> {
        let bad = || format!("--instance {text}: expected I/N with 0 <= I < N, e.g. 0/2");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if index >= count {
            return Err(bad());
        }
        Ok(Assignment::Instance { index, count })
    }

    /// Parses `0,2,4`.
    pub fn parse_list(text: &str) -> Result<Assignment, String> {
        let mut list = text
            .split(',')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("--partitions {text}: expected partition numbers, e.g. 0,2,4"))?;
        list.sort_unstable();
        list.dedup();
        Ok(Assignment::List(list))
    }

    /// Checks the sources against the assignment: every source topic has the same
    /// partition count (`counts`: topic and count, in the topology's order), and the
    /// assignment names at least one partition, and none beyond the count.
    pub fn check(&self, counts: &[(String, u32)]) -> Result<(), String> {
        let Some((_, first)) = counts.first() else {
            return Ok(());
        };
        if counts.iter().any(|(_, n)| n != first) {
            let list = counts
                .iter()
                .map(|(t, n)| format!("`{t}` has {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "a scaled-out job needs co-partitioned sources (the same partition count in every source topic, and the same key in the same partition), but {list}: recreate the topics with one partition count, or run a single instance"
            ));
        }
        match self {
            Assignment::List(list) => {
                if let Some(p) = list.iter().find(|&&p| p >= *first) {
                    return Err(format!(
                        "--partitions names partition {p}, but the sources have {first} partitions (0 to {})",
                        first - 1
                    ));
                }
                if list.is_empty() {
                    return Err("--partitions names no partition".into());
                }
            }
            Assignment::Instance { index, count } => {
                if index >= first {
                    return Err(format!(
                        "instance {index}/{count} would read no partition: the sources have only {first} partitions (run at most {first} instances)"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_split_the_partitions() {
        let a = Assignment::parse_instance("1/3").unwrap();
        let mine: Vec<u32> = (0..8).filter(|&p| a.contains(p)).collect();
        assert_eq!(mine, [1, 4, 7]);
        assert_eq!(a.label(), "instance-1-of-3");
        assert_eq!(
            Assignment::parse_instance("2/2").unwrap_err(),
            "--instance 2/2: expected I/N with 0 <= I < N, e.g. 0/2"
        );
        let l = Assignment::parse_list("4, 0,2,2").unwrap();
        assert_eq!(l, Assignment::List(vec![0, 2, 4]));
        assert_eq!(l.label(), "partitions-0-2-4");
    }

    #[test]
    fn scaling_out_needs_co_partitioned_sources() {
        let a = Assignment::parse_instance("0/2").unwrap();
        let counts = |ns: &[u32]| -> Vec<(String, u32)> {
            ns.iter()
                .enumerate()
                .map(|(i, &n)| (format!("t{i}"), n))
                .collect()
        };
        assert_eq!(a.check(&counts(&[4, 4, 4])), Ok(()));
        assert_eq!(
            a.check(&counts(&[4, 2, 4])).unwrap_err(),
            "a scaled-out job needs co-partitioned sources (the same partition count in every source topic, and the same key in the same partition), but `t0` has 4, `t1` has 2, `t2` has 4: recreate the topics with one partition count, or run a single instance"
        );
        assert_eq!(
            Assignment::parse_instance("2/3")
                .unwrap()
                .check(&counts(&[2, 2]))
                .unwrap_err(),
            "instance 2/3 would read no partition: the sources have only 2 partitions (run at most 2 instances)"
        );
        assert_eq!(
            Assignment::parse_list("1,5")
                .unwrap()
                .check(&counts(&[4]))
                .unwrap_err(),
            "--partitions names partition 5, but the sources have 4 partitions (0 to 3)"
        );
    }
}
