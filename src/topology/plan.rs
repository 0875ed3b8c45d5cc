//! The validated plan: what a topology file means once every default is applied and
//! every value parsed. The engine, the CLI and the state store read this, never the
//! TOML.
//!
//! Invariants (established by `validate`, relied upon downstream):
//! - names and topics are valid topic names; source topics are distinct; no output
//!   topic is a source topic;
//! - every topic named by the correlation is a declared source, and every declared
//!   source takes part in the correlation;
//! - durations that bound windows (`gap`, `size`, `hop`, `timeout`, ...) are > 0;
//! - `late` and `dead_letters` always name a topic (the journeys topic when omitted).
//!
//! The plan serializes with durations in their human form. [`Plan::fingerprint`]
//! hashes exactly the parts that change the meaning of persisted state.

use super::duration::{Human, human_serde};
use super::pointer::JsonPointer;
use super::size::Bytes;
use super::start::StartPosition;
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::hash::Hasher as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A validated topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The job's name (a valid topic name).
    pub name: String,
    pub broker: Broker,
    /// Where RocksDB keeps this job's state; as written, relative to the working
    /// directory (default `data/state/<name>`).
    pub state: PathBuf,
    /// Worker threads the key space is sharded over (≥ 1; `0`/absent in the file
    /// resolves to the number of cores when the file is validated).
    pub shards: usize,
    /// In declaration order, which is also the tie-break order of simultaneous events.
    pub sources: Vec<Source>,
    pub correlation: Correlation,
    pub time: TimePolicy,
    pub output: Outputs,
    pub limits: Limits,
    pub checkpoint: CheckpointPolicy,
}

/// Where topics live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Broker {
    /// braid's own log in a directory (relative to the working directory).
    Embedded { path: PathBuf },
    /// A Fluvio cluster; `None` uses the current Fluvio profile.
    Fluvio {
        endpoint: Option<String>,
        /// How long braid's producer waits to fill a batch.
        #[serde(with = "human_serde")]
        linger: Duration,
        /// A producer batch's size in bytes.
        batch_bytes: u64,
    },
}

/// One input topic and where its records keep the key, event time and event id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub topic: String,
    pub key: JsonPointer,
    pub time: JsonPointer,
    /// When set, a repeated (topic, id) is a duplicate.
    pub id: Option<JsonPointer>,
    pub start: StartPosition,
}

/// How events of one key are grouped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Correlation {
    /// All sources merged; a session ends after `gap` without events.
    Session {
        #[serde(with = "human_serde")]
        gap: Duration,
        /// Splits sessions that would otherwise never end.
        #[serde(with = "human_serde::option", default)]
        max_duration: Option<Duration>,
    },
    /// Fan-in: COMPLETE once every required part arrived, INCOMPLETE at the timeout.
    Complete {
        /// Topics that must all arrive, in declaration order of the file.
        required: Vec<String>,
        /// Topics included when they arrive before completion; never awaited.
        optional: Vec<String>,
        /// From the first event of the key; then INCOMPLETE is reported.
        #[serde(with = "human_serde")]
        timeout: Duration,
        /// Per required topic, how long after the first event it may arrive before
        /// the correlation is reported INCOMPLETE (≤ `timeout`; `timeout` when not
        /// set). Has exactly one entry per required topic.
        #[serde(with = "human_serde::map")]
        deadlines: BTreeMap<String, Duration>,
    },
    /// A chain of interval joins; see [`Join`].
    Interval { joins: Vec<Join> },
    /// Fixed, non-overlapping windows aligned to the epoch.
    Tumbling {
        #[serde(with = "human_serde")]
        size: Duration,
    },
    /// Windows of `size` starting every `hop` (aligned to the epoch); `hop ≤ size`.
    Hopping {
        #[serde(with = "human_serde")]
        size: Duration,
        #[serde(with = "human_serde")]
        hop: Duration,
    },
}

impl Correlation {
    /// The kind as written in the topology file.
    pub fn kind(&self) -> &'static str {
        match self {
            Correlation::Session { .. } => "session",
            Correlation::Complete { .. } => "complete",
            Correlation::Interval { .. } => "interval",
            Correlation::Tumbling { .. } => "tumbling",
            Correlation::Hopping { .. } => "hopping",
        }
    }
}

/// One link of an interval-join chain: events of `right` join the chain's result
/// through the event of `left` when `left.time - before <= right.time <= left.time +
/// after`. The first join's `left` is any source; a later join's `left` is a topic
/// already in the chain, and its `right` is a topic not yet in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    pub left: String,
    pub right: String,
    #[serde(with = "human_serde")]
    pub before: Duration,
    #[serde(with = "human_serde")]
    pub after: Duration,
    #[serde(rename = "type")]
    pub join_type: JoinType,
}

/// Which unmatched events are emitted once their window and grace have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinType {
    /// Only matches.
    Inner,
    /// Matches, and unmatched left-side results.
    Left,
    /// Matches, and unmatched events of both sides.
    Outer,
}

impl JoinType {
    /// The names accepted in the file, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["inner", "left", "outer"];

    pub fn as_str(self) -> &'static str {
        match self {
            JoinType::Inner => "inner",
            JoinType::Left => "left",
            JoinType::Outer => "outer",
        }
    }
}

/// Event-time policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimePolicy {
    /// Watermark = largest event time seen − this bound.
    #[serde(with = "human_serde")]
    pub out_of_orderness: Duration,
    /// Extra wait after a window's end before it closes.
    #[serde(with = "human_serde")]
    pub grace: Duration,
    /// A caught-up partition silent this long stops holding the watermark back (> 0).
    #[serde(with = "human_serde")]
    pub idle_timeout: Duration,
}

/// Output topics, all resolved (an omitted topic is the journeys topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    pub journeys: String,
    pub late: String,
    pub dead_letters: String,
    /// Whether correlation records carry each event's payload.
    pub include_payload: bool,
    /// How long a failing output append is retried before the job stops (0 = never).
    #[serde(with = "human_serde")]
    pub retry_for: Duration,
}

/// Input limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Larger records are dead-lettered (1 ..= 1 GiB).
    pub max_record_bytes: u64,
    /// Events kept per open session; later ones are counted in the journey, not kept
    /// (1 ..= 100,000,000).
    pub max_events_per_window: u64,
    /// Past this many open windows in a shard, only the partitions at the job
    /// watermark are read (1 ..= 1,000,000,000).
    pub max_open_windows_per_shard: u64,
    /// RocksDB's block cache, shared by all column families (1 MiB ..= 64 GiB).
    pub state_cache: u64,
    /// RocksDB's memtables, all column families together (4 MiB ..= 64 GiB).
    pub state_write_buffer: u64,
    /// Journeys and windows larger than this are published in parts
    /// (`max_record_bytes` + 16 KiB ..= 256 MiB).
    pub max_output_record_bytes: u64,
}

/// When state, positions and pending output are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    /// Processing-time interval between commits (> 0).
    #[serde(with = "human_serde")]
    pub interval: Duration,
    /// Also commit after this many input records, when set (≥ 1).
    pub max_records: Option<u64>,
}

/// A stable hash of what persisted state depends on; see [`Plan::fingerprint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Fingerprint(pub u128);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A fingerprint string that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {0:?}: expected 32 hexadecimal digits")]
pub struct FingerprintError(pub String);

impl FromStr for Fingerprint {
    type Err = FingerprintError;
    fn from_str(text: &str) -> Result<Self, FingerprintError> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FingerprintError(text.to_owned()));
        }
        u128::from_str_radix(text, 16)
            .map(Fingerprint)
            .map_err(|_| FingerprintError(text.to_owned()))
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.to_string()
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = FingerprintError;
    fn try_from(text: String) -> Result<Self, FingerprintError> {
        text.parse()
    }
}

impl Plan {
    /// The source declared for `topic`, with its index (its tie-break rank).
    pub fn source(&self, topic: &str) -> Option<(usize, &Source)> {
        self.sources
            .iter()
            .enumerate()
            .find(|(_, s)| s.topic == topic)
    }

    /// A stable 128-bit hash (SipHash-1-3, fixed keys) of [`Plan::fingerprint_input`]:
    /// equal fingerprints mean state written by one plan can be resumed by the other.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut hasher = SipHasher13::new_with_keys(0, 0);
        hasher.write(self.fingerprint_input().as_bytes());
        Fingerprint(hasher.finish128().as_u128())
    }

    /// The canonical text that [`Plan::fingerprint`] hashes: the correlation kind and
    /// its parameters, then each source's topic and key pointer in declaration order
    /// (the order ranks simultaneous events, so reordering is a change). Shown to the
    /// user when a restart finds state with another fingerprint. Time policy, outputs,
    /// limits and shard count are left out: changing them does not invalidate state.
    pub fn fingerprint_input(&self) -> String {
        let mut text = String::from("braid-state v1\n");
        // Writing to a String cannot fail.
        let _ = self.write_fingerprint_input(&mut text);
        text
    }

    fn write_fingerprint_input(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "kind {}", self.correlation.kind())?;
        match &self.correlation {
            Correlation::Session { gap, max_duration } => {
                writeln!(out, "gap {}", Human(*gap))?;
                match max_duration {
                    Some(d) => writeln!(out, "max_duration {}", Human(*d))?,
                    None => writeln!(out, "max_duration none")?,
                }
            }
            Correlation::Complete {
                required,
                optional,
                timeout,
                deadlines,
            } => {
                writeln!(out, "required {required:?}")?;
                writeln!(out, "optional {optional:?}")?;
                writeln!(out, "timeout {}", Human(*timeout))?;
                for (topic, deadline) in deadlines {
                    writeln!(out, "deadline {topic:?} {}", Human(*deadline))?;
                }
            }
            Correlation::Interval { joins } => {
                for j in joins {
                    writeln!(
                        out,
                        "join {:?} {:?} before {} after {} {}",
                        j.left,
                        j.right,
                        Human(j.before),
                        Human(j.after),
                        j.join_type.as_str()
                    )?;
                }
            }
            Correlation::Tumbling { size } => writeln!(out, "size {}", Human(*size))?,
            Correlation::Hopping { size, hop } => {
                writeln!(out, "size {} hop {}", Human(*size), Human(*hop))?;
            }
        }
        for source in &self.sources {
            writeln!(
                out,
                "source {:?} key {:?}",
                source.topic,
                source.key.as_str()
            )?;
        }
        Ok(())
    }

    /// A one-screen description of the plan, for `braid validate`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> fmt::Result {
        let n = self.sources.len();
        writeln!(
            out,
            "{}: {} correlation over {n} source{}, fingerprint {}",
            self.name,
            self.correlation.kind(),
            if n == 1 { "" } else { "s" },
            self.fingerprint()
        )?;
        match &self.broker {
            Broker::Embedded { path } => {
                writeln!(out, "  broker      embedded log in {}", path.display())?;
            }
            Broker::Fluvio {
                endpoint,
                linger,
                batch_bytes,
            } => {
                match endpoint {
                    Some(e) => writeln!(out, "  broker      Fluvio at {e}")?,
                    None => writeln!(
                        out,
                        "  broker      Fluvio (endpoint of the current Fluvio profile)"
                    )?,
                }
                writeln!(
                    out,
                    "              producer batches of {} or {} linger",
                    Bytes(*batch_bytes),
                    Human(*linger)
                )?;
            }
        }
        writeln!(out, "  state       {}", self.state.display())?;
        writeln!(out, "  shards      {}", self.shards)?;
        let width = self
            .sources
            .iter()
            .map(|s| s.topic.len())
            .max()
            .unwrap_or(0);
        for (i, s) in self.sources.iter().enumerate() {
            let label = if i == 0 { "sources" } else { "" };
            write!(
                out,
                "  {label:<11} {:<width$}  key {}  time {}",
                s.topic, s.key, s.time
            )?;
            if let Some(id) = &s.id {
                write!(out, "  id {id}")?;
            }
            writeln!(out, "  from {}", s.start)?;
        }
        self.write_correlation_summary(out)?;
        let t = &self.time;
        writeln!(
            out,
            "  time        out-of-orderness {}, grace {}, idle timeout {}",
            Human(t.out_of_orderness),
            Human(t.grace),
            Human(t.idle_timeout)
        )?;
        let o = &self.output;
        let payload = if o.include_payload { "with" } else { "without" };
        writeln!(
            out,
            "  output      journeys     → {} ({payload} payloads)",
            o.journeys
        )?;
        for (label, topic) in [("late", &o.late), ("dead letters", &o.dead_letters)] {
            if *topic == o.journeys {
                writeln!(
                    out,
                    "              {label:<12} → {topic} (with the journeys)"
                )?;
            } else {
                writeln!(out, "              {label:<12} → {topic}")?;
            }
        }
        writeln!(
            out,
            "              a failing append is retried for {}",
            Human(o.retry_for)
        )?;
        writeln!(
            out,
            "  limits      records up to {}, {} events kept per window, {} open windows per shard",
            Bytes(self.limits.max_record_bytes),
            self.limits.max_events_per_window,
            self.limits.max_open_windows_per_shard
        )?;
        writeln!(
            out,
            "              output records up to {} (longer ones in parts)",
            Bytes(self.limits.max_output_record_bytes)
        )?;
        writeln!(
            out,
            "              RocksDB cache {}, write buffers {}",
            Bytes(self.limits.state_cache),
            Bytes(self.limits.state_write_buffer)
        )?;
        write!(
            out,
            "  checkpoint  every {}",
            Human(self.checkpoint.interval)
        )?;
        if let Some(records) = self.checkpoint.max_records {
            write!(out, " or {records} records")?;
        }
        writeln!(out)
    }

    fn write_correlation_summary(&self, out: &mut String) -> fmt::Result {
        const LABEL: &str = "  correlate   ";
        match &self.correlation {
            Correlation::Session { gap, max_duration } => {
                write!(out, "{LABEL}session: gap {}", Human(*gap))?;
                match max_duration {
                    Some(d) => writeln!(out, ", at most {} long", Human(*d)),
                    None => writeln!(out, ", no maximum duration"),
                }
            }
            Correlation::Complete {
                required,
                optional,
                timeout,
                deadlines,
            } => {
                writeln!(
                    out,
                    "{LABEL}complete: requires {}; optional {}; timeout {}",
                    required.join(", "),
                    if optional.is_empty() {
                        "none".to_owned()
                    } else {
                        optional.join(", ")
                    },
                    Human(*timeout)
                )?;
                for (topic, deadline) in deadlines.iter().filter(|(_, d)| **d != *timeout) {
                    writeln!(out, "              {topic} due within {}", Human(*deadline))?;
                }
                Ok(())
            }
            Correlation::Interval { joins } => {
                writeln!(out, "{LABEL}interval joins, in order:")?;
                for (i, j) in joins.iter().enumerate() {
                    writeln!(
                        out,
                        "              {}. {} joins {} from {} before to {} after ({})",
                        i + 1,
                        j.right,
                        j.left,
                        Human(j.before),
                        Human(j.after),
                        j.join_type.as_str(),
                    )?;
                }
                Ok(())
            }
            Correlation::Tumbling { size } => {
                writeln!(out, "{LABEL}tumbling windows of {}", Human(*size))
            }
            Correlation::Hopping { size, hop } => writeln!(
                out,
                "{LABEL}hopping windows of {} every {}",
                Human(*size),
                Human(*hop)
            ),
        }
    }
}
