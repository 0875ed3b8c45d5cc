//! `braid inspect`: what a job's state directory holds, read without disturbing the job.
//!
//! The store is opened read-only ([`StateStore::open_read_only`]), so this works while
//! the job runs and shows the state as of its last committed checkpoint. Nothing here
//! writes. The report lists the checkpoint number and job watermark, every source
//! partition's checkpointed position with its lag behind the log's end, the output not
//! yet published, and the open windows or correlations of the topology's kind: how
//! many, the oldest, and for `complete` which parts they wait for.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::engine::{Inspect, OpenItem, complete, interval, session, window};
use crate::job::JobSnapshot;
use crate::source::{Backend, SourceError};
use crate::state::{StateError, StateStore};
use crate::topology::{Correlation, Plan};

/// Why a state directory could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("inspect: {0}")]
    State(#[from] StateError),
    #[error("inspect: {0}")]
    Source(#[from] SourceError),
}

/// What `braid inspect` reports (`--json` prints it as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub topology: String,
    pub kind: &'static str,
    pub state: PathBuf,
    /// The last committed checkpoint; `None` before the first.
    pub checkpoint: Option<u64>,
    /// The job watermark of that checkpoint, epoch ms (`i64::MAX`: end of input).
    pub job_watermark_ms: Option<i64>,
    pub positions: Vec<Position>,
    /// Committed output records not yet acknowledged as published.
    pub pending_output: u64,
    /// Keys with state.
    pub keys: u64,
    /// Open windows or correlations.
    pub open: u64,
    pub oldest: Option<Open>,
    /// For `complete`: per required source, the correlations still waiting for it.
    pub waiting: Vec<Waiting>,
}

/// One source partition's checkpointed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    pub topic: String,
    pub partition: u32,
    /// The next offset the job reads.
    pub next_offset: u64,
    /// The log's end offset now (when the log is at hand).
    pub end_offset: Option<u64>,
    pub lag: Option<u64>,
}

/// One open window or correlation and its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Open {
    pub key: String,
    pub start_ms: i64,
    pub events: Option<usize>,
}

/// The open correlations still waiting for one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub topic: String,
    pub correlations: u64,
    pub oldest: Open,
}

/// Reads `store` (of `plan`'s job) and, when given, the end offsets of the sources.
pub fn inspect(
    plan: &Plan,
    store: &StateStore,
    backend: Option<&Backend>,
) -> Result<Report, InspectError> {
    let snapshot = JobSnapshot::read(store)?;
    let mut positions = Vec::new();
    for ((topic, partition), next_offset) in store.positions()? {
        let end_offset = match backend {
            Some(b) if b.has_topic(&topic)? => Some(b.end_offset(&topic, partition)?),
            _ => None,
        };
        positions.push(Position {
            lag: end_offset.map(|end| end.saturating_sub(next_offset)),
            topic,
            partition,
            next_offset,
            end_offset,
        });
    }
    let open = match &plan.correlation {
        Correlation::Session { .. } => scan::<session::KeyState>(store, &[])?,
        Correlation::Tumbling { .. } | Correlation::Hopping { .. } => {
            scan::<window::KeyState>(store, &[])?
        }
        Correlation::Complete { required, .. } => {
            let indexes: Vec<u16> = plan
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| required.contains(&s.topic))
                .map(|(i, _)| i as u16)
                .collect();
            scan::<complete::KeyState>(store, &indexes)?
        }
        Correlation::Interval { .. } => scan::<interval::KeyState>(store, &[])?,
    };
    let topics: Vec<&str> = plan.sources.iter().map(|s| s.topic.as_str()).collect();
    let waiting = open
        .waiting
        .into_iter()
        .map(|(source, (correlations, oldest))| Waiting {
            topic: topics
                .get(usize::from(source))
                .map_or_else(|| format!("source #{source}"), |t| (*t).to_owned()),
            correlations,
            oldest,
        })
        .collect();
    Ok(Report {
        topology: plan.name.clone(),
        kind: plan.correlation.kind(),
        state: store.dir().to_path_buf(),
        checkpoint: snapshot.as_ref().map(|s| s.epoch),
        job_watermark_ms: snapshot
            .as_ref()
            .map(|s| s.watermarks.job)
            .filter(|&w| w != i64::MIN),
        positions,
        pending_output: store.outbox().count() as u64,
        keys: open.keys,
        open: open.open,
        oldest: open.oldest,
        waiting,
    })
}

/// What a pass over the key states found.
#[derive(Debug, Default)]
struct Scan {
    keys: u64,
    open: u64,
    oldest: Option<Open>,
    /// Per missing source index: how many wait for it, and the oldest.
    waiting: BTreeMap<u16, (u64, Open)>,
}

fn older(candidate: &Open, than: Option<&Open>) -> bool {
    than.is_none_or(|o| (candidate.start_ms, &candidate.key) < (o.start_ms, &o.key))
}

fn scan<S: crate::state::Persist + Inspect>(
    store: &StateStore,
    required: &[u16],
) -> Result<Scan, StateError> {
    let mut scan = Scan::default();
    let mut items: Vec<OpenItem> = Vec::new();
    for entry in store.keys::<S, _>(|_| true) {
        let (key, state) = entry?;
        scan.keys += 1;
        items.clear();
        state.open_items(required, &mut items);
        for item in &items {
            scan.open += 1;
            let open = Open {
                key: key.clone(),
                start_ms: item.start,
                events: item.events,
            };
            for &source in &item.missing {
                let slot = scan
                    .waiting
                    .entry(source)
                    .or_insert_with(|| (0, open.clone()));
                slot.0 += 1;
                if older(&open, Some(&slot.1)) {
                    slot.1 = open.clone();
                }
            }
            if older(&open, scan.oldest.as_ref()) {
                scan.oldest = Some(open);
            }
        }
    }
    Ok(scan)
}

/// A watermark or event time for people: RFC 3339, or what the sentinel means.
fn time_text(ms: i64) -> String {
    match ms {
        i64::MAX => "end of input".into(),
        i64::MIN => "none yet".into(),
        _ => chrono::DateTime::from_timestamp_millis(ms).map_or_else(
            || ms.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        ),
    }
}

impl Report {
    /// What the kind calls its open things, plural.
    fn things(&self) -> &'static str {
        match self.kind {
            "session" => "sessions",
            "tumbling" | "hopping" => "windows",
            "interval" => "held events",
            _ => "correlations",
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "topology {} ({}), state {}",
            self.topology,
            self.kind,
            self.state.display()
        )?;
        match self.checkpoint {
            None => writeln!(f, "no checkpoint yet")?,
            Some(n) => writeln!(
                f,
                "checkpoint {n}, job watermark {}",
                time_text(self.job_watermark_ms.unwrap_or(i64::MIN))
            )?,
        }
        if !self.positions.is_empty() {
            writeln!(f, "sources (next offset / end / lag):")?;
        }
        for p in &self.positions {
            let end = p.end_offset.map_or_else(|| "?".into(), |e| e.to_string());
            let lag = p.lag.map_or_else(|| "?".into(), |l| l.to_string());
            writeln!(
                f,
                "  {}/{}  {} / {} / {}",
                p.topic, p.partition, p.next_offset, end, lag
            )?;
        }
        writeln!(f, "output not yet published: {}", self.pending_output)?;
        write!(
            f,
            "open {}: {} over {} keys",
            self.things(),
            self.open,
            self.keys
        )?;
        if let Some(o) = &self.oldest {
            write!(f, "; oldest {} since {}", o.key, time_text(o.start_ms))?;
            if let Some(n) = o.events {
                write!(f, " ({n} events)")?;
            }
        }
        writeln!(f)?;
        for w in &self.waiting {
            writeln!(
                f,
                "waiting for {}: {}; oldest {}, first part {}",
                w.topic,
                w.correlations,
                w.oldest.key,
                time_text(w.oldest.start_ms)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tempfile::TempDir;

    use super::*;
    use crate::decode::Event;
    use crate::engine::{Checkpointed, Operator, SessionConfig};
    use crate::state::{Checkpoint, StateOptions, encode};
    use crate::time::WatermarkSnapshot;

    fn plan() -> Plan {
        let text = r#"
name = "cj"
[[source]]
topic = "page.viewed"
key = "/k"
time = "/t"
[[source]]
topic = "order.placed"
key = "/k"
time = "/t"
[correlate]
kind = "session"
gap = "10ms"
[output]
journeys = "cj.out"
"#;
        crate::topology::parse(text, "cj.toml").unwrap()
    }

    fn ev(source: u16, offset: u64, key: &str, time: i64) -> Event {
        Event {
            source,
            partition: 0,
            offset,
            key: key.into(),
            time,
            id: None,
            payload: "{}".into(),
        }
    }

    #[test]
    fn reports_positions_watermark_and_the_oldest_open_session() {
        let tmp = TempDir::new().unwrap();
        let plan = plan();
        let sources = ["page.viewed", "order.placed"];
        let mut op = SessionConfig::with_gap("cj", &sources, Duration::from_millis(10))
            .build()
            .unwrap();
        let mut out = Vec::new();
        // a: one session at 100 (closed by watermark 200) and one at 300; b: one at 250.
        for (o, k, t) in [(0, "a", 100), (1, "a", 105), (2, "b", 250), (3, "a", 300)] {
            op.on_event(ev(o as u16 % 2, o, k, t), 90, &mut out);
        }
        op.on_watermark(200, &mut out);
        let writes = op.drain_writes(1, &mut Vec::new()).unwrap();
        let dir = tmp.path().join("state");
        let store = StateStore::open(&dir, 1, StateOptions::default()).unwrap();
        let snapshot = JobSnapshot {
            epoch: 7,
            watermarks: WatermarkSnapshot {
                job: 200,
                partitions: vec![],
            },
            ..JobSnapshot::default()
        };
        store
            .commit(Checkpoint {
                upserts: writes
                    .heads
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect(),
                chunks: writes.chunks.clone(),
                positions: vec![("page.viewed", 0, 2), ("order.placed", 0, 2)],
                watermarks: Some(encode("snapshot", &snapshot).unwrap()),
                ..Checkpoint::default()
            })
            .unwrap();
        drop(store);
        let store = StateStore::open_read_only(&dir).unwrap();
        let report = inspect(&plan, &store, None).unwrap();
        assert_eq!(report.checkpoint, Some(7));
        assert_eq!(report.job_watermark_ms, Some(200));
        assert_eq!((report.keys, report.open), (2, 2));
        assert_eq!(
            report.oldest,
            Some(Open {
                key: "b".into(),
                start_ms: 250,
                events: Some(1)
            })
        );
        assert_eq!(
            report.to_string(),
            format!(
                "topology cj (session), state {}\ncheckpoint 7, job watermark 1970-01-01T00:00:00.200Z\nsources (next offset / end / lag):\n  order.placed/0  2 / ? / ?\n  page.viewed/0  2 / ? / ?\noutput not yet published: 0\nopen sessions: 2 over 2 keys; oldest b since 1970-01-01T00:00:00.250Z (1 events)\n",
                dir.display()
            )
        );
    }

    #[test]
    fn complete_lists_what_open_correlations_wait_for() {
        let text = r#"
name = "of"
[[source]]
topic = "pay"
key = "/k"
time = "/t"
[[source]]
topic = "inv"
key = "/k"
time = "/t"
[[source]]
topic = "ship"
key = "/k"
time = "/t"
[correlate]
kind = "complete"
required = ["pay", "inv", "ship"]
timeout = "1h"
[output]
journeys = "of.out"
"#;
        let plan = crate::topology::parse(text, "of.toml").unwrap();
        let mut op = crate::engine::CompleteConfig {
            topology: "of".into(),
            sources: vec!["pay".into(), "inv".into(), "ship".into()],
            required: vec!["pay".into(), "inv".into(), "ship".into()],
            optional: vec![],
            timeout: Duration::from_secs(3600),
            deadlines: Default::default(),
            grace: Duration::ZERO,
            retention: None,
            include_payload: true,
            max_events: None,
        }
        .build()
        .unwrap();
        let mut out = Vec::new();
        for (s, o, k, t) in [
            (0, 0, "o1", 1_000),
            (0, 1, "o2", 2_000),
            (1, 2, "o2", 2_100),
            (1, 3, "o3", 500),
        ] {
            op.on_event(ev(s, o, k, t), i64::MIN, &mut out);
        }
        let writes = op.drain_writes(1, &mut Vec::new()).unwrap();
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("state");
        let store = StateStore::open(&dir, 1, StateOptions::default()).unwrap();
        store
            .commit(Checkpoint {
                upserts: writes
                    .heads
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone()))
                    .collect(),
                chunks: writes.chunks.clone(),
                ..Checkpoint::default()
            })
            .unwrap();
        let report = inspect(&plan, &store, None).unwrap();
        assert_eq!((report.open, report.keys), (3, 3));
        let waiting: Vec<(&str, u64, &str)> = report
            .waiting
            .iter()
            .map(|w| (w.topic.as_str(), w.correlations, w.oldest.key.as_str()))
            .collect();
        assert_eq!(
            waiting,
            vec![("pay", 1, "o3"), ("inv", 1, "o1"), ("ship", 3, "o3")]
        );
        assert!(
            report.to_string().ends_with(
                "open correlations: 3 over 3 keys; oldest o3 since 1970-01-01T00:00:00.500Z (1 events)\nwaiting for pay: 1; oldest o3, first part 1970-01-01T00:00:00.500Z\nwaiting for inv: 1; oldest o1, first part 1970-01-01T00:00:01.000Z\nwaiting for ship: 3; oldest o3, first part 1970-01-01T00:00:00.500Z\n"
            ),
            "{report}"
        );
    }

    #[test]
    fn an_empty_directory_is_not_a_state_store() {
        let tmp = TempDir::new().unwrap();
        let err = StateStore::open_read_only(&tmp.path().join("none")).unwrap_err();
        assert!(
            err.to_string().contains("is not a braid state store"),
            "{err}"
        );
    }
}
