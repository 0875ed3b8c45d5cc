//! Replay (backfill): a topology run over a fixed range of its sources, isolated from the
//! live job. This module resolves the range and the isolation rules; the run itself is
//! [`crate::job::run`] with a [`Range`].
//!
//! Invariants:
//! - A range is concrete before the run starts: one `[from, to)` offset pair per source
//!   partition, `from ≤ to`, both within the partition's offsets when resolved. `to`
//!   defaults to the end offsets at resolution time, and a resumed replay keeps the range
//!   it started with (it is part of its checkpoint), so "the same range" stays the same.
//! - A replay never uses the live job's state directory, and writes into the live job's
//!   output topics only when explicitly asked to.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::source::{Backend, SourceError};
use crate::topology::{Plan, StartPosition};

/// A position for all sources (`POS`), one topic (`topic=POS`) or one partition
/// (`topic/2=POS`), as given to `--from` / `--to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionSpec {
    pub topic: Option<String>,
    pub partition: Option<u32>,
    pub position: StartPosition,
}

/// Why a replay cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "invalid position {text:?}: {reason} (expected POS, TOPIC=POS or TOPIC/PARTITION=POS, where POS is beginning, end, offset:N or timestamp:RFC3339)"
    )]
    BadSpec { text: String, reason: String },
    #[error("{flag} {spec}: `{topic}` is not a source of topology `{job}` (sources: {sources})")]
    UnknownTopic {
        flag: &'static str,
        spec: String,
        topic: String,
        job: String,
        sources: String,
    },
    #[error(
        "{flag} {spec}: topic `{topic}` has {partitions} partitions, numbered from 0 to {}",
        .partitions.saturating_sub(1)
    )]
    UnknownPartition {
        flag: &'static str,
        spec: String,
        topic: String,
        partitions: u32,
    },
    #[error(
        "topic `{topic}` partition {partition}: the range starts at offset {from} but ends at offset {to}"
    )]
    Inverted {
        topic: String,
        partition: u32,
        from: u64,
        to: u64,
    },
    #[error(
        "the replay's state directory {dir} is the live job's state directory; a replay uses its own (omit --state for a temporary one)"
    )]
    LiveState { dir: PathBuf },
    #[error(
        "the replay would write into the live job's output topic `{topic}`; choose other topics (--output-prefix, --journeys, --late, --dead-letters) or pass --into-live-outputs"
    )]
    LiveOutput { topic: String },
    #[error("replay")]
    Source(#[from] SourceError),
}

impl FromStr for PositionSpec {
    type Err = ReplayError;

    fn from_str(text: &str) -> Result<Self, ReplayError> {
        let bad = |reason: String| ReplayError::BadSpec {
            text: text.to_owned(),
            reason,
        };
        let (target, pos) = match text.split_once('=') {
            Some((target, pos)) => (Some(target), pos),
            None => (None, text),
        };
        let position: StartPosition = pos.parse().map_err(|e| bad(format!("{e}")))?;
        let (topic, partition) = match target {
            None => (None, None),
            Some(t) => match t.rsplit_once('/') {
                Some((topic, p)) => {
                    let p = p
                        .parse::<u32>()
                        .map_err(|_| bad(format!("partition {p:?} is not a number")))?;
                    (Some(topic.to_owned()), Some(p))
                }
                None => (Some(t.to_owned()), None),
            },
        };
        if topic.as_deref() == Some("") {
            return Err(bad("the topic name is empty".into()));
        }
        Ok(PositionSpec {
            topic,
            partition,
            position,
        })
    }
}

impl fmt::Display for PositionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.topic, self.partition) {
            (Some(t), Some(p)) => write!(f, "{t}/{p}={}", self.position),
            (Some(t), None) => write!(f, "{t}={}", self.position),
            _ => write!(f, "{}", self.position),
        }
    }
}

/// A replay's range: per source topic/partition, `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub from: BTreeMap<(String, u32), u64>,
    pub to: BTreeMap<(String, u32), u64>,
}

impl Range {
    /// Records in the range.
    pub fn records(&self) -> u64 {
        self.to
            .iter()
            .map(|(k, to)| to.saturating_sub(self.from.get(k).copied().unwrap_or(*to)))
            .sum()
    }
}

/// Resolves `--from` and `--to` specs against the source topics: the most specific spec
/// wins (partition over topic over all sources); `to` defaults to the end offsets now.
pub fn resolve(
    plan: &Plan,
    backend: &Backend,
    from: &[PositionSpec],
    to: &[PositionSpec],
) -> Result<Range, ReplayError> {
    check_specs(plan, backend, "--from", from)?;
    check_specs(plan, backend, "--to", to)?;
    let mut range = Range::default();
    for src in &plan.sources {
        for p in 0..backend.partitions(&src.topic)? {
            let (first, last) = backend.offsets(&src.topic, p)?;
            let resolve = |specs: &[PositionSpec], default: u64| -> Result<u64, SourceError> {
                match most_specific(specs, &src.topic, p) {
                    None => Ok(default),
                    Some(pos) => Ok(backend
                        .resolve_start(&src.topic, p, (first, last), pos)?
                        .clamp(first, last)),
                }
            };
            let start = resolve(from, first)?;
            let end = resolve(to, last)?;
            if start > end {
                return Err(ReplayError::Inverted {
                    topic: src.topic.clone(),
                    partition: p,
                    from: start,
                    to: end,
                });
            }
            range.from.insert((src.topic.clone(), p), start);
            range.to.insert((src.topic.clone(), p), end);
        }
    }
    Ok(range)
}

fn most_specific(specs: &[PositionSpec], topic: &str, partition: u32) -> Option<StartPosition> {
    let rank = |s: &PositionSpec| match (&s.topic, s.partition) {
        (Some(t), Some(p)) if t == topic && p == partition => Some(2),
        (Some(t), None) if t == topic => Some(1),
        (None, _) => Some(0),
        _ => None,
    };
    // The last of the most specific ones, so a later flag overrides an earlier one.
    specs
        .iter()
        .filter_map(|s| rank(s).map(|r| (r, s.position)))
        .fold(
            None,
            |best: Option<(u8, StartPosition)>, (r, pos)| match best {
                Some((b, _)) if b > r => best,
                _ => Some((r, pos)),
            },
        )
        .map(|(_, pos)| pos)
}

fn check_specs(
    plan: &Plan,
    backend: &Backend,
    flag: &'static str,
    specs: &[PositionSpec],
) -> Result<(), ReplayError> {
    for spec in specs {
        let Some(topic) = &spec.topic else { continue };
        if plan.source(topic).is_none() {
            return Err(ReplayError::UnknownTopic {
                flag,
                spec: spec.to_string(),
                topic: topic.clone(),
                job: plan.name.clone(),
                sources: plan
                    .sources
                    .iter()
                    .map(|s| s.topic.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if let Some(p) = spec.partition {
            let partitions = backend.partitions(topic)?;
            if p >= partitions {
                return Err(ReplayError::UnknownPartition {
                    flag,
                    spec: spec.to_string(),
                    topic: topic.clone(),
                    partitions,
                });
            }
        }
    }
    Ok(())
}

/// Where a replay writes, relative to the live job's plan.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    pub state: Option<PathBuf>,
    pub output_prefix: Option<String>,
    pub journeys: Option<String>,
    pub late: Option<String>,
    pub dead_letters: Option<String>,
    pub into_live_outputs: bool,
}

/// The default prefix of a replay's output topics.
pub const DEFAULT_OUTPUT_PREFIX: &str = "replay.";

/// Turns the live plan into the replay's plan: its own state directory (`temp_state` when
/// none is given) and output topics (prefixed by `replay.` unless told otherwise).
pub fn isolate(live: &Plan, iso: &Isolation, temp_state: &Path) -> Result<Plan, ReplayError> {
    let mut plan = live.clone();
    plan.state = iso
        .state
        .clone()
        .unwrap_or_else(|| temp_state.to_path_buf());
    if same_dir(&plan.state, &live.state) {
        return Err(ReplayError::LiveState { dir: plan.state });
    }
    let explicit = iso.journeys.is_some() || iso.late.is_some() || iso.dead_letters.is_some();
    let prefix = match (&iso.output_prefix, explicit || iso.into_live_outputs) {
        (Some(p), _) => p.clone(),
        (None, true) => String::new(),
        (None, false) => DEFAULT_OUTPUT_PREFIX.to_owned(),
    };
    let pick = |given: &Option<String>, live: &str| {
        given.clone().unwrap_or_else(|| format!("{prefix}{live}"))
    };
    plan.output.journeys = pick(&iso.journeys, &live.output.journeys);
    plan.output.late = pick(&iso.late, &live.output.late);
    plan.output.dead_letters = pick(&iso.dead_letters, &live.output.dead_letters);
    if !iso.into_live_outputs {
        let live_topics = [
            &live.output.journeys,
            &live.output.late,
            &live.output.dead_letters,
        ];
        for topic in [
            &plan.output.journeys,
            &plan.output.late,
            &plan.output.dead_letters,
        ] {
            if live_topics.contains(&topic) {
                return Err(ReplayError::LiveOutput {
                    topic: topic.clone(),
                });
            }
        }
    }
    Ok(plan)
}

/// Whether two paths name the same directory (compared canonically when they exist).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s: PositionSpec = "page.viewed/2=offset:7".parse().unwrap();
        assert_eq!(
            s,
            PositionSpec {
                topic: Some("page.viewed".into()),
                partition: Some(2),
                position: StartPosition::Offset(7)
            }
        );
        assert_eq!(s.to_string(), "page.viewed/2=offset:7");
        let s: PositionSpec = "beginning".parse().unwrap();
        assert_eq!((s.topic, s.position), (None, StartPosition::Beginning));
        let s: PositionSpec = "t=end".parse().unwrap();
        assert_eq!((s.topic.as_deref(), s.partition), (Some("t"), None));
        assert_eq!(
            "t/x=end".parse::<PositionSpec>().unwrap_err().to_string(),
            "invalid position \"t/x=end\": partition \"x\" is not a number (expected POS, TOPIC=POS or TOPIC/PARTITION=POS, where POS is beginning, end, offset:N or timestamp:RFC3339)"
        );
        assert_eq!(
            "offset:-1".parse::<PositionSpec>().unwrap_err().to_string(),
            "invalid position \"offset:-1\": invalid start position \"offset:-1\": the offset must be a non-negative integer (expected POS, TOPIC=POS or TOPIC/PARTITION=POS, where POS is beginning, end, offset:N or timestamp:RFC3339)"
        );
        assert!("=end".parse::<PositionSpec>().is_err());
    }

    #[test]
    fn most_specific_wins_and_later_overrides() {
        let specs: Vec<PositionSpec> = ["offset:1", "a=offset:2", "a/1=offset:3", "offset:4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            most_specific(&specs, "a", 1),
            Some(StartPosition::Offset(3))
        );
        assert_eq!(
            most_specific(&specs, "a", 0),
            Some(StartPosition::Offset(2))
        );
        assert_eq!(
            most_specific(&specs, "b", 0),
            Some(StartPosition::Offset(4))
        );
        assert_eq!(most_specific(&[], "b", 0), None);
    }
}
