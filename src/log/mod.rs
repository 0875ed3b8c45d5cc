//! The embedded log: braid's single-machine broker, and the backend of every test.
//!
//! ```text
//! <root>/<topic>/topic.json                      partition count (written once, atomically)
//! <root>/<topic>/<partition>/writer.lock         held (flock) by the partition's only writer
//! <root>/<topic>/<partition>/<base:020>.log      CRC-framed records, offsets base, base+1, …
//! <root>/<topic>/<partition>/<base:020>.index    sparse offset + time index of that segment
//! ```
//!
//! - [`record`]: the frame layout; [`segment`]: segment files and the sparse index;
//!   [`partition`]: the writer (torn-tail recovery, rolling, fsync policy) and readers;
//!   [`tail`]: waking readers on append; [`Producer`]: keyed/round-robin produce.
//! - Keyed records go to `partition_for_key(key, n)`: SipHash-2-4 with zero keys over the key
//!   bytes as Rust's `Hash` for `[u8]` feeds them (length as a native `usize`, then the bytes),
//!   modulo `n` — the same rule as Fluvio's default partitioner, so data produced by either
//!   lands in the same partition number, and topics with equal partition counts are
//!   co-partitioned. Unkeyed records are spread round-robin.

pub mod partition;
pub mod record;
pub mod segment;
pub mod tail;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use partition::{FsyncPolicy, PartitionInfo, PartitionReader, PartitionWriter, WriterOptions};
pub use record::Record;
pub use tail::{TailSignal, TailWatcher};

use partition::PartitionRef;

/// Errors of the embedded log; each names the topic, partition and file concerned.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("topic {topic} partition {partition}: {path}")]
    PartitionIo {
        topic: String,
        partition: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "topic {topic} does not exist in {root} (create it with `braid topic create {topic} --partitions N`)"
    )]
    UnknownTopic { root: PathBuf, topic: String },
    #[error("topic {topic} already exists with {existing} partitions, not {requested}")]
    PartitionCountMismatch {
        topic: String,
        existing: u32,
        requested: u32,
    },
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        name: String,
        reason: crate::topology::NameError,
    },
    #[error("topic {topic} has {partitions} partitions; partition {partition} does not exist")]
    NoSuchPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("topic {topic} needs at least one partition")]
    NoPartitions { topic: String },
    #[error("topic {topic} partition {partition} already has a writer (lock held on {path})")]
    WriterLocked {
        topic: String,
        partition: u32,
        path: PathBuf,
    },
    #[error(
        "topic {topic} partition {partition}: corrupt record in {path} at byte {position}: {reason}"
    )]
    Corrupt {
        topic: String,
        partition: u32,
        path: PathBuf,
        position: u64,
        reason: &'static str,
    },
    #[error(
        "topic {topic} partition {partition}: record of {size} bytes exceeds the limit of {max} bytes"
    )]
    RecordTooLarge {
        topic: String,
        partition: u32,
        size: usize,
        max: usize,
    },
    #[error(
        "topic {topic} partition {partition}: no record readable at offset {position} although the log ended at {end} when the run started"
    )]
    Stalled {
        topic: String,
        partition: u32,
        position: u64,
        end: u64,
    },
    #[error("topic metadata {path} is unreadable: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error(
        "{path} is a symbolic link; braid does not follow links out of its log directory (replace it with the directory itself)"
    )]
    Symlink { path: PathBuf },
    #[error("cannot watch {path} for appends: {message}")]
    Watch { path: PathBuf, message: String },
}

/// Creates `dir` and its missing parents readable by the owner only (0700): topics
/// hold whatever producers wrote, not something to share with every local user.
/// Directories that exist keep their permissions.
fn create_private_dir(dir: &Path) -> Result<(), LogError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| LogError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Persisted description of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMeta {
    pub name: String,
    pub partitions: u32,
}

/// A directory of topics.
#[derive(Debug, Clone)]
pub struct Log {
    root: PathBuf,
}

const META_FILE: &str = "topic.json";

impl Log {
    /// Opens (creating if needed, owner-only) the log rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, LogError> {
        let root = root.into();
        create_private_dir(&root)?;
        Ok(Log { root })
    }

    /// Refuses a topic or partition directory that is a symbolic link: writes and
    /// truncations of a corrupt tail must stay inside the log directory.
    fn no_symlink(path: &Path) -> Result<(), LogError> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => Err(LogError::Symlink {
                path: path.to_path_buf(),
            }),
            _ => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a topic, or confirms an existing one with the same partition count.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicMeta, LogError> {
        validate_topic_name(name)?;
        if partitions == 0 {
            return Err(LogError::NoPartitions { topic: name.into() });
        }
        if let Some(existing) = self.read_meta(name)? {
            if existing.partitions != partitions {
                return Err(LogError::PartitionCountMismatch {
                    topic: name.into(),
                    existing: existing.partitions,
                    requested: partitions,
                });
            }
            return Ok(existing);
        }
        let dir = self.root.join(name);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogError::Io { path, source }
        };
        Self::no_symlink(&dir)?;
        for p in 0..partitions {
            let pdir = dir.join(p.to_string());
            create_private_dir(&pdir)?;
        }
        let meta = TopicMeta {
            name: name.into(),
            partitions,
        };
        // Written last and renamed into place: a topic exists only once all its partition
        // directories do, and a concurrent create sees either nothing or the whole file.
        let tmp = dir.join(format!(".{META_FILE}.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(&meta).expect("plain struct serialises");
        segment::no_follow(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
        )
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &json))
        .map_err(io(&tmp))?;
        let path = dir.join(META_FILE);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(meta)
    }

    /// The topic's metadata, or [`LogError::UnknownTopic`].
    pub fn topic(&self, name: &str) -> Result<TopicMeta, LogError> {
        validate_topic_name(name)?;
        self.read_meta(name)?.ok_or_else(|| LogError::UnknownTopic {
            root: self.root.clone(),
            topic: name.into(),
        })
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Result<Vec<TopicMeta>, LogError> {
        let io = |source| LogError::Io {
            path: self.root.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io)? {
            let entry = entry.map_err(io)?;
            if let Some(name) = entry.file_name().to_str()
                && validate_topic_name(name).is_ok()
                && let Some(meta) = self.read_meta(name)?
            {
                out.push(meta);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_meta(&self, name: &str) -> Result<Option<TopicMeta>, LogError> {
        Self::no_symlink(&self.root.join(name))?;
        let path = self.root.join(name).join(META_FILE);
        let bytes = match segment::read_file(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if segment::is_symlink_error(&e) => return Err(LogError::Symlink { path }),
            Err(source) => return Err(LogError::Io { path, source }),
        };
        let meta: TopicMeta =
            serde_json::from_slice(&bytes).map_err(|e| LogError::BadMetadata {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if meta.name != name || meta.partitions == 0 {
            return Err(LogError::BadMetadata {
                path,
                reason: format!(
                    "names topic {:?} with {} partitions",
                    meta.name, meta.partitions
                ),
            });
        }
        Ok(Some(meta))
    }

    fn partition_ref(&self, topic: &str, partition: u32) -> Result<PartitionRef, LogError> {
        let meta = self.topic(topic)?;
        if partition >= meta.partitions {
            return Err(LogError::NoSuchPartition {
                topic: topic.into(),
                partition,
                partitions: meta.partitions,
            });
        }
        let dir = self.partition_dir(topic, partition);
        Self::no_symlink(&dir)?;
        Ok(PartitionRef {
            topic: topic.into(),
            partition,
            dir,
        })
    }

    /// Directory of one partition (what a [`TailWatcher`] watches).
    pub fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.root.join(topic).join(partition.to_string())
    }

    /// Takes the single-writer lock of a partition and recovers its tail.
    pub fn writer(
        &self,
        topic: &str,
        partition: u32,
        opts: WriterOptions,
    ) -> Result<PartitionWriter, LogError> {
        PartitionWriter::open(self.partition_ref(topic, partition)?, opts)
    }

    /// A reader positioned at `offset`.
    pub fn reader(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<PartitionReader, LogError> {
        PartitionReader::open(self.partition_ref(topic, partition)?, offset)
    }

    pub fn partition_info(&self, topic: &str, partition: u32) -> Result<PartitionInfo, LogError> {
        partition::info(&self.partition_ref(topic, partition)?)
    }

    /// First offset whose append time is ≥ `timestamp_ms` (the end offset when none is).
    pub fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, LogError> {
        partition::offset_for_timestamp(&self.partition_ref(topic, partition)?, timestamp_ms)
    }

    /// The offset a start position names in a partition described by `info`.
    pub fn resolve_start(
        &self,
        topic: &str,
        info: &PartitionInfo,
        start: crate::topology::StartPosition,
    ) -> Result<u64, LogError> {
        use crate::topology::StartPosition;
        Ok(match start {
            StartPosition::Beginning => info.start_offset,
            StartPosition::End => info.end_offset,
            StartPosition::Offset(o) => o,
            StartPosition::Timestamp(ts) => self.offset_for_timestamp(topic, info.partition, ts)?,
        })
    }

    /// A producer for `topic`, taking each partition's writer lock on first use.
    pub fn producer(&self, topic: &str, opts: WriterOptions) -> Result<Producer, LogError> {
        let meta = self.topic(topic)?;
        Ok(Producer {
            log: self.clone(),
            writers: (0..meta.partitions).map(|_| None).collect(),
            pending: (0..meta.partitions).map(|_| Vec::new()).collect(),
            pending_bytes: 0,
            next_round_robin: 0,
            meta,
            opts,
        })
    }
}

/// Checks a topic name against the rule shared with topology files
/// ([`crate::topology::validate_topic_name`]): it also keeps a name from ever being a path.
pub fn validate_topic_name(name: &str) -> Result<(), LogError> {
    crate::topology::validate_topic_name(name).map_err(|reason| LogError::InvalidTopicName {
        name: name.into(),
        reason,
    })
}

/// Partition of a keyed record (see the module documentation for the exact rule).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    partition_of_hash(key_hash(key), partitions)
}

/// The hash [`partition_for_key`] places a key by.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = siphasher::sip::SipHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The partition of a [`key_hash`] among `partitions`.
pub fn partition_of_hash(hash: u64, partitions: u32) -> u32 {
    (hash % u64::from(partitions.max(1))) as u32
}

/// Appends to every partition of a topic: keyed records by [`partition_for_key`], unkeyed
/// round-robin. Records are buffered and appended per partition in batches.
pub struct Producer {
    log: Log,
    meta: TopicMeta,
    opts: WriterOptions,
    writers: Vec<Option<PartitionWriter>>,
    pending: Vec<Vec<Queued>>,
    pending_bytes: usize,
    next_round_robin: u32,
}

/// A queued record: optional key, value, append time.
type Queued = (Option<Vec<u8>>, Vec<u8>, i64);

/// Buffered bytes that trigger an append.
const PRODUCER_BATCH_BYTES: usize = 1024 * 1024;

impl Producer {
    pub fn topic(&self) -> &TopicMeta {
        &self.meta
    }

    /// Queues a record stamped with the wall clock; returns the partition it goes to.
    pub fn send(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<u32, LogError> {
        self.send_at(key, value, crate::time::wall_clock_ms())
    }

    /// Queues a record with its own append time (e.g. a simulated arrival time, so that a
    /// generated log is reproducible down to its time index).
    pub fn send_at(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<u32, LogError> {
        let partition = match key {
            Some(k) => partition_for_key(k, self.meta.partitions),
            None => {
                let p = self.next_round_robin;
                self.next_round_robin = (p + 1) % self.meta.partitions;
                p
            }
        };
        self.pending_bytes += value.len() + key.map_or(0, <[u8]>::len);
        self.pending[partition as usize].push((
            key.map(<[u8]>::to_vec),
            value.to_vec(),
            timestamp_ms,
        ));
        if self.pending_bytes >= PRODUCER_BATCH_BYTES {
            self.flush()?;
        }
        Ok(partition)
    }

    /// Appends everything queued (one batch per partition, synced per the fsync policy).
    pub fn flush(&mut self) -> Result<(), LogError> {
        for p in 0..self.meta.partitions as usize {
            if self.pending[p].is_empty() {
                continue;
            }
            if self.writers[p].is_none() {
                self.writers[p] = Some(self.log.writer(&self.meta.name, p as u32, self.opts)?);
            }
            let writer = self.writers[p].as_mut().expect("opened above");
            let batch = std::mem::take(&mut self.pending[p]);
            writer.append_timed(
                batch
                    .iter()
                    .map(|(k, v, t)| (k.as_deref(), v.as_slice(), *t)),
            )?;
        }
        self.pending_bytes = 0;
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if self.pending_bytes > 0 {
            tracing::warn!(topic = %self.meta.name, "producer dropped without flush; flushing now");
            let _ = self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked() {
        for bad in ["", ".", "..", "a/b", "a\\b", "x\ny", "ü", &"t".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "page.viewed",
            "customer.journey.dlq",
            "A_b-9",
            &"t".repeat(249),
        ] {
            validate_topic_name(good).unwrap();
        }
        assert_eq!(
            validate_topic_name("a/b").unwrap_err().to_string(),
            "invalid topic name \"a/b\": it contains the path separator '/'"
        );
    }

    #[test]
    fn key_partitioning_is_the_documented_hash() {
        // Independent computation of the documented rule: length prefix, then bytes.
        let mut h = siphasher::sip::SipHasher::new_with_keys(0, 0);
        h.write(&(5usize).to_ne_bytes());
        h.write(b"c-001");
        assert_eq!(partition_for_key(b"c-001", 7), (h.finish() % 7) as u32);
        // Pinned values: a change of rule would silently break co-partitioning of existing data.
        let pinned: Vec<u32> = ["c-000001", "c-000002", "o-1", ""]
            .iter()
            .map(|k| partition_for_key(k.as_bytes(), 12))
            .collect();
        assert_eq!(pinned, PINNED_PARTITIONS);
    }

    const PINNED_PARTITIONS: [u32; 4] = [1, 3, 3, 11];
}

#[cfg(test)]
mod file_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_are_created_owner_only() {
        let tmp = tempfile::TempDir::new().unwrap();
        let root = tmp.path().join("data").join("log");
        let log = Log::open(&root).unwrap();
        log.create_topic("page.viewed", 2).unwrap();
        for dir in [
            root.clone(),
            root.join("page.viewed"),
            root.join("page.viewed").join("1"),
        ] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        let state = tmp.path().join("state");
        crate::state::StateStore::open(&state, 1, crate::state::StateOptions::default()).unwrap();
        assert_eq!(mode(&state), 0o700);
    }

    #[test]
    fn a_topic_or_partition_directory_that_is_a_symlink_is_refused() {
        let tmp = tempfile::TempDir::new().unwrap();
        let elsewhere = Log::open(tmp.path().join("elsewhere")).unwrap();
        elsewhere.create_topic("orders", 1).unwrap();
        let root = tmp.path().join("log");
        let log = Log::open(&root).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere/orders"), root.join("orders"))
            .unwrap();
        let err = log.topic("orders").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}/orders is a symbolic link; braid does not follow links out of its log directory (replace it with the directory itself)",
                root.display()
            )
        );
        assert!(matches!(
            log.create_topic("orders", 1),
            Err(LogError::Symlink { .. })
        ));
        // A partition directory swapped for a link is refused when opened.
        log.create_topic("views", 1).unwrap();
        let p0 = root.join("views").join("0");
        std::fs::remove_dir(&p0).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere/orders/0"), &p0).unwrap();
        assert!(matches!(
            log.reader("views", 0, 0),
            Err(LogError::Symlink { .. })
        ));
        assert!(matches!(
            log.writer("views", 0, WriterOptions::default()),
            Err(LogError::Symlink { .. })
        ));
    }

    #[test]
    fn files_inside_a_partition_that_are_symlinks_are_never_followed() {
        let tmp = tempfile::TempDir::new().unwrap();
        let outside = tmp.path().join("precious.txt");
        std::fs::write(&outside, "not braid's").unwrap();
        let root = tmp.path().join("log");
        let log = Log::open(&root).unwrap();
        log.create_topic("views", 1).unwrap();
        let mut w = log.writer("views", 0, WriterOptions::default()).unwrap();
        w.append([(None, &b"{}"[..])]).unwrap();
        drop(w);
        let dir = log.partition_dir("views", 0);
        let segment = segment::log_path(&dir, 0);
        // The segment swapped for a link to a file outside: neither read nor written
        // (a writer would otherwise truncate it as a torn tail).
        std::fs::remove_file(&segment).unwrap();
        std::os::unix::fs::symlink(&outside, &segment).unwrap();
        let expected = format!(
            "{} is a symbolic link; braid does not follow links out of its log directory (replace it with the directory itself)",
            segment.display()
        );
        let read = log
            .reader("views", 0, 0)
            .and_then(|mut r| r.read_batch(10).map(|_| ()));
        assert_eq!(read.unwrap_err().to_string(), expected);
        let written = log.writer("views", 0, WriterOptions::default()).map(|_| ());
        assert_eq!(written.unwrap_err().to_string(), expected);
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "not braid's");
        // The writer's lock file too.
        std::fs::remove_file(&segment).unwrap();
        let lock = dir.join("writer.lock");
        std::fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink(&outside, &lock).unwrap();
        assert!(matches!(
            log.writer("views", 0, WriterOptions::default()),
            Err(LogError::Symlink { .. })
        ));
        // And the topic's metadata.
        let meta = root.join("views").join(META_FILE);
        std::fs::remove_file(&meta).unwrap();
        std::os::unix::fs::symlink(&outside, &meta).unwrap();
        assert!(matches!(log.topic("views"), Err(LogError::Symlink { .. })));
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "not braid's");
    }
}
