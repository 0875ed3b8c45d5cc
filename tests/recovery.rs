//! Crash recovery end to end, with real `braid run --bounded` processes on generated data:
//! SIGKILL at random moments and `BRAID_CRASH_AT` aborts inside a checkpoint write and the
//! outbox drain, SIGTERM, a torn output tail, bounded state, and the refusals of a restart
//! on incompatible or missing state.
//!
//! Every interrupted job is compared with an uninterrupted run of the same topology over its
//! own copy of the same data (`braid gen` is deterministic): the three output topics must
//! hold the same records once the `producer` stamp is removed (as multisets, and per key in
//! the same order), every journey id and every late report or dead letter (named by its
//! source topic, partition and offset) exactly once, and per output partition the producer
//! seqs exactly 1..=n.
//!
//! Waits are on conditions (output partitions growing, seen through a
//! [`braid::log::TailWatcher`], or the child exiting), each with a time limit; nothing sleeps.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use braid::log::{Log, TailWatcher};
use common::TempLog;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// The job's topology; `@LOG@`, `@STATE@` and `@MAX_RECORDS@` are filled in per dataset.
const TOPOLOGY: &str = include_str!("fixtures/recovery/customer_journey.toml");
const JOB: &str = "customer-journey";
const JOURNEYS: &str = "customer.journey";
const LATE: &str = "customer.journey.late";
const DEAD_LETTERS: &str = "customer.journey.dlq";
const OUTPUTS: [&str; 3] = [JOURNEYS, LATE, DEAD_LETTERS];
/// Generous: the longest of these runs takes a few seconds in a debug build.
const LIMIT: Duration = Duration::from_secs(120);
/// SIGABRT, how `BRAID_CRASH_AT` ends the process.
const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;

/// What `braid gen` makes, and how often the job checkpoints over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dataset {
    events: u64,
    customers: u64,
    seed: u64,
    max_records: u64,
}

/// 30,000 journey events of 2,000 customers (about 30,150 records with the late, duplicate
/// and poison ones), a checkpoint every 500 records: about 60 checkpoints, most of them
/// publishing output, and a debug-build run of about 2.5 s. A killed run goes on for a
/// moment before it dies, often a checkpoint or two: that many checkpoints keep the kill
/// loop's 24 cycles from reaching the end of the input.
const SMALL: Dataset = Dataset {
    events: 30_000,
    customers: 2_000,
    seed: 5,
    max_records: 500,
};

/// Three times the events of the same 2,000 customers: the generator spreads them over
/// three times the event time (about 15 h instead of 5 h) at the same rate per customer.
const LARGE: Dataset = Dataset {
    events: 60_000,
    customers: 2_000,
    seed: 5,
    max_records: 5_000,
};

/// [`LARGE`]'s first third: the same customers and rate, a third of the event time.
const LARGE_THIRD: Dataset = Dataset {
    events: 20_000,
    ..LARGE
};

/// A generated log, the topology over it, and its state directory, in a temporary
/// directory removed on drop.
struct Job {
    t: TempLog,
    topology: PathBuf,
    state: PathBuf,
}

impl Job {
    fn new(d: Dataset) -> Self {
        let t = TempLog::new();
        let state = t.dir.path().join("state");
        let topology = t.dir.path().join("customer_journey.toml");
        std::fs::write(
            &topology,
            TOPOLOGY
                .replace("@LOG@", &t.path().display().to_string())
                .replace("@STATE@", &state.display().to_string())
                .replace("@MAX_RECORDS@", &d.max_records.to_string()),
        )
        .unwrap();
        let job = Job { t, topology, state };
        let (events, customers, seed) = (
            d.events.to_string(),
            d.customers.to_string(),
            d.seed.to_string(),
        );
        common::ok(common::output_within(
            job.braid(&[
                "gen",
                "--events",
                &events,
                "--customers",
                &customers,
                "--seed",
                &seed,
                "--no-fulfilment",
            ]),
            LIMIT,
        ));
        job
    }

    fn log(&self) -> &Log {
        &self.t.log
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.dir.path().join(name)
    }

    /// `braid --log LOG args…`.
    fn braid(&self, args: &[&str]) -> Command {
        let mut cmd = self.t.braid();
        cmd.args(args);
        cmd
    }

    /// `braid run TOPOLOGY --bounded extra…`.
    fn run_cmd(&self, extra: &[&str]) -> Command {
        let mut cmd = self.t.braid();
        cmd.arg("run")
            .arg(&self.topology)
            .arg("--bounded")
            .args(extra);
        cmd
    }

    /// A bounded run with `env` set that must fail with exit code 1: (its `error:` line,
    /// all of its stderr).
    fn fail_with(&self, env: (&str, &str)) -> (String, String) {
        let mut cmd = self.run_cmd(&[]);
        cmd.env(env.0, env.1);
        let out = common::output_within(cmd, LIMIT);
        assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
        let stderr = common::stderr(&out);
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{stderr}"))
            .to_owned();
        (line, stderr)
    }

    /// A bounded run to its end; returns the JSON summary.
    fn run_to_end(&self, extra: &[&str]) -> Value {
        self.run_to_end_in(extra, &[])
    }

    /// [`Job::run_to_end`] with environment variables set.
    fn run_to_end_with(&self, env: &[(&str, &str)]) -> Value {
        self.run_to_end_in(&[], env)
    }

    fn run_to_end_in(&self, extra: &[&str], env: &[(&str, &str)]) -> Value {
        let summary = self.path("summary.json");
        let mut cmd = self.run_cmd(extra);
        cmd.envs(env.iter().copied());
        cmd.arg("--summary-json").arg(&summary);
        common::ok(common::output_within(cmd, LIMIT));
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap()
    }

    /// Starts a bounded run; its stderr goes to a file (read by [`Job::stderr`]), so a
    /// chatty child never blocks on a full pipe.
    fn spawn(&self, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let mut cmd = self.run_cmd(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.path("stderr.txt")).unwrap())
            .spawn()
            .expect("spawn braid run")
    }

    /// Spawns a bounded run and waits for its first published output, which exists only
    /// once a checkpoint is committed; fails if the run ends before that.
    fn spawn_until_output(&self, env: &[(&str, &str)], watcher: &TailWatcher) -> Child {
        let mut child = self.spawn(&[], env);
        let status =
            common::await_exit_or(&mut child, watcher, LIMIT, || self.output_records() > 0);
        assert!(
            status.is_none(),
            "the run ended ({status:?}) before its first output:\n{}",
            self.stderr()
        );
        child
    }

    /// The stderr of the last [`Job::spawn`]ed run.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.txt")).unwrap_or_default()
    }

    /// Creates the output topics as the job would (the first source's partition count),
    /// so that they can be watched before the first run starts.
    fn create_outputs(&self) {
        let partitions = self.log().topic("page.viewed").unwrap().partitions;
        for topic in OUTPUTS {
            self.log().create_topic(topic, partitions).unwrap();
        }
    }

    /// A watcher of every output partition.
    fn watch_outputs(&self) -> TailWatcher {
        let mut w = TailWatcher::new().unwrap();
        for topic in OUTPUTS {
            for p in 0..self.log().topic(topic).unwrap().partitions {
                w.watch(&self.log().partition_dir(topic, p)).unwrap();
            }
        }
        w
    }

    /// Records in the output topics now (whole frames only).
    fn output_records(&self) -> u64 {
        let mut n = 0;
        for topic in OUTPUTS {
            let Ok(meta) = self.log().topic(topic) else {
                continue;
            };
            for p in 0..meta.partitions {
                n += self.log().partition_info(topic, p).unwrap().end_offset;
            }
        }
        n
    }

    fn outputs(&self) -> Outputs {
        Outputs::read(self.log())
    }
}

/// What an uninterrupted run of a dataset produced.
struct Reference {
    summary: Value,
    outputs: Outputs,
    /// Key states left in the store after the run.
    keys_after: usize,
}

impl Reference {
    fn compute(d: Dataset) -> Self {
        let job = Job::new(d);
        let summary = job.run_to_end(&[]);
        let outputs = job.outputs();
        assert_eq!(n(&summary["resumed"]), 0, "a fresh state directory");
        assert_eq!(outputs.len(JOURNEYS) as u64, n(&summary["journeys"]));
        assert_eq!(outputs.len(LATE) as u64, n(&summary["late"]));
        assert_eq!(
            outputs.len(DEAD_LETTERS) as u64,
            n(&summary["dead_letters"])
        );
        for topic in OUTPUTS {
            assert!(
                outputs.len(topic) > 0,
                "the dataset gives records on {topic}"
            );
        }
        let keys_after = key_states(&job.state);
        Reference {
            summary,
            outputs,
            keys_after,
        }
    }
}

/// The uninterrupted run of `d`, computed once per test binary (several tests compare
/// with it); its temporary directory is gone once it is computed.
fn reference(d: Dataset) -> &'static Reference {
    static SMALL_REF: OnceLock<Reference> = OnceLock::new();
    static LARGE_REF: OnceLock<Reference> = OnceLock::new();
    let cell = if d == SMALL {
        &SMALL_REF
    } else if d == LARGE {
        &LARGE_REF
    } else {
        panic!("no reference cell for {d:?}")
    };
    cell.get_or_init(|| Reference::compute(d))
}

/// One output record without its `producer` stamp, and what names it: a journey's id, or
/// a late report's or dead letter's source topic, partition and offset.
struct OutputRecord {
    key: String,
    identity: String,
    value: Value,
}

/// The three output topics, checked for their stamps while read.
struct Outputs {
    by_topic: BTreeMap<&'static str, Vec<OutputRecord>>,
}

impl Outputs {
    /// Reads every output topic; per partition every record must carry this job's stamp,
    /// with seqs exactly 1, 2, 3… (a gap is a lost record, a repeat a duplicate).
    fn read(log: &Log) -> Self {
        let mut by_topic = BTreeMap::new();
        for topic in OUTPUTS {
            let mut next_seq: BTreeMap<u32, u64> = BTreeMap::new();
            let mut records = Vec::new();
            for (p, r) in common::read_topic(log, topic) {
                let mut value: Value = serde_json::from_slice(&r.value)
                    .unwrap_or_else(|e| panic!("{topic}/{p}@{}: not JSON: {e}", r.offset));
                let stamp = value
                    .as_object_mut()
                    .and_then(|o| o.remove("producer"))
                    .unwrap_or_else(|| panic!("{topic}/{p}@{}: no producer stamp", r.offset));
                assert_eq!(stamp["job"], JOB, "{topic}/{p}@{}: producer", r.offset);
                let expected = next_seq.entry(p).or_insert(1);
                assert_eq!(
                    stamp["seq"].as_u64(),
                    Some(*expected),
                    "{topic}/{p}@{}: producer seq (a gap is a lost record, a repeat a duplicate)",
                    r.offset
                );
                *expected += 1;
                let identity = match value["kind"].as_str() {
                    Some("journey") => value["id"].as_str().unwrap().to_owned(),
                    _ => format!(
                        "{}/{}@{}",
                        value["topic"].as_str().unwrap(),
                        value["partition"],
                        value["offset"]
                    ),
                };
                let key = r
                    .key
                    .map_or_else(String::new, |k| String::from_utf8(k).unwrap());
                records.push(OutputRecord {
                    key,
                    identity,
                    value,
                });
            }
            by_topic.insert(topic, records);
        }
        Outputs { by_topic }
    }

    fn len(&self, topic: &str) -> usize {
        self.by_topic[topic].len()
    }

    fn total(&self) -> u64 {
        self.by_topic.values().map(|r| r.len() as u64).sum()
    }

    /// Per key, the records in publication order (a key's records share a partition).
    fn by_key(&self, topic: &str) -> BTreeMap<&str, Vec<&Value>> {
        let mut out: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for r in &self.by_topic[topic] {
            out.entry(&r.key).or_default().push(&r.value);
        }
        out
    }
}

/// Asserts exactly once against an uninterrupted run: nothing twice, nothing missing,
/// nothing else, and per key the same order. Messages name the first difference instead
/// of dumping thousands of records.
fn assert_exactly_once(actual: &Outputs, expected: &Outputs, what: &str) {
    for topic in OUTPUTS {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &actual.by_topic[topic] {
            *seen.entry(&r.identity).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            twice.is_empty(),
            "{what}: {topic} holds records more than once (identity, times): {twice:?}"
        );
        let missing: Vec<&str> = expected.by_topic[topic]
            .iter()
            .map(|r| r.identity.as_str())
            .filter(|id| !seen.contains_key(id))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "{what}: {topic} lacks {} records of the uninterrupted run, e.g. {missing:?}",
            expected.len(topic).saturating_sub(actual.len(topic))
        );
        let multiset = |o: &Outputs| {
            let mut v: Vec<String> = o.by_topic[topic]
                .iter()
                .map(|r| r.value.to_string())
                .collect();
            v.sort();
            v
        };
        let (a, e) = (multiset(actual), multiset(expected));
        if a != e {
            let only_a = a.iter().find(|r| e.binary_search(r).is_err());
            let only_e = e.iter().find(|r| a.binary_search(r).is_err());
            panic!(
                "{what}: {topic} differs from the uninterrupted run ({} vs {} records)\nfirst only here: {only_a:?}\nfirst only there: {only_e:?}",
                a.len(),
                e.len()
            );
        }
        let (a, e) = (actual.by_key(topic), expected.by_key(topic));
        for (key, records) in &e {
            assert!(
                a.get(key) == Some(records),
                "{what}: {topic} records of key {key:?} come in another order"
            );
        }
    }
}

fn n(v: &Value) -> u64 {
    match v {
        Value::Bool(b) => u64::from(*b),
        _ => v.as_u64().unwrap_or_else(|| panic!("not a count: {v}")),
    }
}

/// How a run ended, for the kill loop's bookkeeping; anything else fails the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Finished,
    Killed,
    Aborted,
}

fn ended(status: ExitStatus, job: &Job, what: &str) -> Ended {
    match (status.code(), status.signal()) {
        (Some(0), _) => Ended::Finished,
        (_, Some(SIGKILL)) => Ended::Killed,
        (_, Some(SIGABRT)) => {
            assert!(
                job.stderr().contains("BRAID_CRASH_AT="),
                "{what}: aborted, but not by the crash hook:\n{}",
                job.stderr()
            );
            Ended::Aborted
        }
        _ => panic!("{what}: braid run ended with {status:?}:\n{}", job.stderr()),
    }
}

#[test]
fn killed_and_crashed_at_random_moments_the_output_is_exactly_once() {
    let clean = reference(SMALL);
    let job = Job::new(SMALL);
    job.create_outputs();
    let watcher = job.watch_outputs();
    let mut rng = ChaCha8Rng::seed_from_u64(0x6b69_6c6c);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    const CYCLES: usize = 24;
    for cycle in 0..CYCLES {
        // A third of the cycles die by the crash hook (at most a checkpoint or two in, so
        // that 24 cycles do not reach the end of the input): before a checkpoint's batch is
        // written, between two partitions of the outbox drain (also the drain of a
        // restart's recovery), or after the drain and before the acknowledgement.
        let crash = rng
            .random_bool(1.0 / 3.0)
            .then(|| match rng.random_range(0..3) {
                0 => format!("commit:{}", rng.random_range(1..=2)),
                1 => format!("publish:{}", rng.random_range(1..=6)),
                _ => format!("ack:{}", rng.random_range(1..=2)),
            });
        // The shard count is not part of the state's fingerprint: a restart may change it.
        let shards = rng.random_range(1..=3).to_string();
        // A checkpoint publishes about 45 records: the kill comes in the middle of a drain
        // (often the first one: a restart's republishing), a checkpoint or so in, so that
        // the kills spread over the whole run.
        let grow = rng.random_range(1..=12);
        let before = job.output_records();
        let env: Vec<(&str, &str)> = crash
            .as_deref()
            .map(|c| ("BRAID_CRASH_AT", c))
            .into_iter()
            .collect();
        let mut child = job.spawn(&["--shards", &shards], &env);
        let what = format!("cycle {cycle} (shards {shards}, crash {crash:?}, grow {grow})");
        // A crash cycle runs until its hook fires, so that every one of them is a crash
        // at the point it names; the others are killed once the output grew.
        let status = common::await_exit_or(&mut child, &watcher, LIMIT, || {
            crash.is_none() && job.output_records() >= before + grow
        });
        let end = match status {
            Some(status) => ended(status, &job, &what),
            None => {
                // Child::kill is SIGKILL on unix: no handler, no flush, like kill -9.
                child.kill().unwrap();
                let status = child.wait().unwrap();
                ended(status, &job, &what)
            }
        };
        let point = crash.as_deref().and_then(|c| c.split(':').next());
        let entry = match (end, point) {
            (Ended::Aborted, Some(point)) => format!("Aborted at {point}"),
            _ => format!("{end:?}"),
        };
        *tally.entry(entry).or_default() += 1;
    }
    eprintln!(
        "kill cycles: {tally:?}; output before the last run: {} of {}",
        job.output_records(),
        clean.outputs.total()
    );
    let interrupted = CYCLES - tally.get("Finished").unwrap_or(&0);
    assert!(
        interrupted >= 20,
        "only {interrupted} of {CYCLES} cycles were interrupted: {tally:?}"
    );
    for point in ["commit", "publish", "ack"] {
        assert!(
            tally.contains_key(&format!("Aborted at {point}")),
            "no cycle crashed at {point}: {tally:?}"
        );
    }
    let last = job.run_to_end(&[]);
    assert_eq!(n(&last["resumed"]), 1);
    assert_exactly_once(&job.outputs(), &clean.outputs, "killed and restarted");
}

#[test]
fn sigterm_checkpoints_publishes_and_exits_0_and_the_restart_finishes_exactly_once() {
    let clean = reference(LARGE);
    let job = Job::new(LARGE);
    job.create_outputs();
    let watcher = job.watch_outputs();
    let mut child = job.spawn_until_output(&[], &watcher);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Stopping takes one checkpoint and one drain: well within the bound.
    let status = common::await_exit_or(&mut child, &watcher, Duration::from_secs(30), || false)
        .expect("exited");
    assert_eq!(status.code(), Some(0), "after SIGTERM:\n{}", job.stderr());
    let published = job.output_records();
    assert!(
        published < clean.outputs.total(),
        "the run had published all {published} records before SIGTERM: nothing was interrupted"
    );
    // Everything the stopped run checkpointed is published: nothing is left to republish.
    let last = job.run_to_end(&[]);
    assert_eq!(n(&last["resumed"]), 1);
    assert_eq!(
        n(&last["republished"]),
        0,
        "SIGTERM left output unpublished"
    );
    assert!(n(&last["records_in"]) < n(&clean.summary["records_in"]));
    assert_exactly_once(
        &job.outputs(),
        &clean.outputs,
        "stopped by SIGTERM and restarted",
    );
}

#[test]
fn a_second_run_on_a_state_directory_in_use_is_refused_and_the_first_finishes() {
    let clean = reference(LARGE);
    let job = Job::new(LARGE);
    job.create_outputs();
    let watcher = job.watch_outputs();
    // The first run's second commit waits 5 s: its first output is the sign that it
    // holds the state directory open, and the wait keeps it open meanwhile.
    let mut first = job.spawn_until_output(&[("BRAID_STALL_AT", "commit:2:5000")], &watcher);
    let refused = failure(&job);
    assert_eq!(
        refused,
        format!(
            "error: job customer-journey: state directory {} is locked by another open store (another `braid run` on the same state?)\n",
            job.state.display()
        )
    );
    let status = common::await_exit_or(&mut first, &watcher, LIMIT, || false).expect("exited");
    assert_eq!(status.code(), Some(0), "{}", job.stderr());
    assert_exactly_once(
        &job.outputs(),
        &clean.outputs,
        "beside a refused second run",
    );
}

/// Appends `garbage` to the newest segment of every output partition written so far (the
/// one the crash interrupted among them), as a crash in the middle of an append leaves it.
/// Returns how many were torn.
fn tear_tails(job: &Job, garbage: &[u8]) -> usize {
    let mut torn = 0;
    for topic in OUTPUTS {
        for p in 0..job.log().topic(topic).unwrap().partitions {
            if let Some(path) = common::newest_segment(job.log(), topic, p) {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(garbage).unwrap();
                torn += 1;
            }
        }
    }
    torn
}

/// Crashes between two partitions of an outbox drain, tears every output tail with
/// `garbage`, restarts and finishes.
fn crash_tear_and_finish(garbage: &[u8], what: &str) {
    let clean = reference(SMALL);
    let job = Job::new(SMALL);
    // The 40th partition batch: a few checkpoints in, in the middle of one's drain.
    let out = common::output_within(
        {
            let mut cmd = job.run_cmd(&[]);
            cmd.env("BRAID_CRASH_AT", "publish:40");
            cmd
        },
        LIMIT,
    );
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "expected the crash hook:\n{}",
        common::stderr(&out)
    );
    let published = job.output_records();
    assert!(
        published > 0 && published < clean.outputs.total(),
        "{what}: the crash came at {published} of {} output records",
        clean.outputs.total()
    );
    assert!(
        tear_tails(&job, garbage) >= 4,
        "{what}: journey partitions torn"
    );
    // The torn frames are not records.
    assert_eq!(job.output_records(), published, "{what}: end offsets");
    let last = job.run_to_end(&[]);
    assert_eq!(n(&last["resumed"]), 1);
    assert_exactly_once(&job.outputs(), &clean.outputs, what);
}

/// The start of a frame whose body never made it to the disk: a plausible length (200
/// bytes), a checksum, and 30 of the 200 bytes.
fn partial_frame() -> Vec<u8> {
    let mut garbage = 200u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    garbage.extend_from_slice(&[0x5a; 30]);
    garbage
}

#[test]
fn a_torn_output_tail_after_a_crash_in_the_drain_is_truncated_and_exactly_once_holds() {
    crash_tear_and_finish(&partial_frame(), "a partial frame at the tail");
}

#[test]
fn a_corrupt_output_tail_after_a_crash_in_the_drain_is_truncated_and_exactly_once_holds() {
    // Zeros (a length the file system extended but whose data never came, as after a power
    // loss), then a whole frame whose checksum does not match.
    let mut garbage = vec![0u8; 16];
    let mut frame = 40u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    frame.extend_from_slice(&[0x5a; 40]);
    garbage.extend_from_slice(&frame);
    crash_tear_and_finish(&garbage, "a corrupt tail");
}

#[test]
fn state_is_bounded_by_open_windows_not_by_input_and_empty_after_a_bounded_run() {
    let large = reference(LARGE);
    let third = Job::new(LARGE_THIRD).run_to_end(&[]);
    let (peak_large, peak_third) = (
        n(&large.summary["state_keys_peak"]),
        n(&third["state_keys_peak"]),
    );
    eprintln!("state_keys_peak: {peak_large} (60k events) vs {peak_third} (20k events)");
    assert!(peak_third > 0);
    // Both inputs come from the same 2,000 customers at the same rate per customer; the
    // large one lasts three times as long in event time. A key's state lives while it has
    // an open session, a journey remembered for late events or a dedup id not yet expired,
    // all of which the watermark ends. So at any moment about the same number of customers
    // hold state in both runs: the peak stays about the same (±noise of which customers
    // happen to overlap). State that leaked — kept until the end of input — would grow with
    // the input: every key of the input, 2,000, in the large run. Twice the small peak plus
    // 10% of the key space leaves room for noise and still fails a leak.
    let slack = LARGE.customers / 10;
    assert!(
        peak_large < 2 * peak_third + slack,
        "state grew with the input: {peak_large} keys at peak vs {peak_third} for a third of it"
    );
    assert!(
        peak_large < LARGE.customers / 2,
        "{peak_large} of {} keys held at once: state is not bounded by open windows",
        LARGE.customers
    );
    // The end of a bounded run closes every window; nothing of any key is left.
    assert_eq!(large.keys_after, 0, "key states left after a bounded run");
}

/// The key states in `dir`.
fn key_states(dir: &std::path::Path) -> usize {
    let store = braid::state::StateStore::open_read_only(dir).unwrap();
    store
        .keys::<braid::engine::session::KeyState, _>(|_| true)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .len()
}

/// A run that must fail with exit 1; returns its stderr.
fn failure(job: &Job) -> String {
    let out: Output = common::output_within(job.run_cmd(&[]), LIMIT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a failure\nstdout:\n{}\nstderr:\n{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    common::stderr(&out)
}

#[test]
fn a_restart_refuses_a_changed_fingerprint_and_a_lost_state_word_for_word() {
    let job = Job::new(Dataset {
        events: 3_000,
        customers: 300,
        seed: 9,
        max_records: 500,
    });
    job.run_to_end(&[]);
    assert_eq!(key_states(&job.state), 0);
    let output = job.outputs();
    let original = std::fs::read_to_string(&job.topology).unwrap();
    let stored = braid::topology::load(&job.topology)
        .unwrap()
        .fingerprint()
        .0;

    // A shorter session gap gives the stored sessions another meaning.
    std::fs::write(
        &job.topology,
        original.replace("gap = \"30m\"", "gap = \"20m\""),
    )
    .unwrap();
    let expected = braid::topology::load(&job.topology)
        .unwrap()
        .fingerprint()
        .0;
    assert_ne!(stored, expected);
    assert_eq!(
        failure(&job),
        format!(
            "error: job {JOB}: state directory {} was written for plan fingerprint {stored:032x}, but this plan has fingerprint {expected:032x}; the topology changed in a way the state cannot follow: replay into a new state directory\n",
            job.state.display()
        )
    );

    // The original topology without its state: starting over would publish it all again.
    std::fs::write(&job.topology, &original).unwrap();
    std::fs::remove_dir_all(&job.state).unwrap();
    // The first output partition checked that holds a record of the job: journeys first.
    let (topic, partition, last) = OUTPUTS
        .iter()
        .find_map(|topic| {
            let meta = job.log().topic(topic).unwrap();
            (0..meta.partitions).find_map(|p| {
                let end = job.log().partition_info(topic, p).unwrap().end_offset;
                (end > 0).then_some((*topic, p, end - 1))
            })
        })
        .unwrap();
    // Outputs::read checked that seqs are 1..=n at offsets 0..n.
    let seq = last + 1;
    assert_eq!(
        failure(&job),
        format!(
            "error: job {JOB}: state directory {} holds no checkpoint, but output topic `{topic}` partition {partition} already holds records of job `{JOB}` (seq {seq} at offset {last}): starting from scratch would publish them again; restore the state directory, or replay into a new state directory and another output topic\n",
            job.state.display()
        )
    );
    // Refusing published nothing.
    assert_eq!(job.outputs().total(), output.total());
}

/// `braid inspect --json` of the job's state directory.
fn inspect(job: &Job) -> Value {
    let mut cmd = job.braid(&["inspect", "--json"]);
    cmd.arg(&job.topology);
    let out = common::ok(common::output_within(cmd, LIMIT));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn inspect_reads_the_state_while_the_job_runs_and_after_it() {
    let job = Job::new(LARGE);
    job.create_outputs();
    let watcher = job.watch_outputs();
    let partitions: u64 = ["page.viewed", "cart.updated", "order.placed"]
        .iter()
        .map(|t| u64::from(job.log().topic(t).unwrap().partitions))
        .sum();
    // The second commit waits 5 s, so the run is still going while it is inspected
    // (before, a run that had already finished skipped the live assertions).
    let mut child = job.spawn_until_output(&[("BRAID_STALL_AT", "commit:2:5000")], &watcher);
    let live = inspect(&job);
    // A run of LARGE that has committed one checkpoint has customers with open sessions.
    assert!(n(&live["checkpoint"]) >= 1, "{live}");
    assert!(n(&live["open"]) > 0 && n(&live["keys"]) > 0, "{live}");
    assert!(live["oldest"]["key"].is_string(), "{live}");
    assert_eq!(
        live["positions"].as_array().unwrap().len() as u64,
        partitions
    );
    let status = common::await_exit_or(&mut child, &watcher, LIMIT, || false).expect("exited");
    assert_eq!(status.code(), Some(0), "{}", job.stderr());

    let done = inspect(&job);
    // The end of a bounded run closes everything but checkpoints the watermark the data
    // gave, so that a later run over the same state goes on from there.
    let watermark = done["job_watermark_ms"].as_i64().unwrap();
    assert!(watermark > 0 && watermark < i64::MAX, "{done}");
    assert_eq!(
        (
            n(&done["open"]),
            n(&done["keys"]),
            n(&done["pending_output"])
        ),
        (0, 0, 0),
        "{done}"
    );
    for p in done["positions"].as_array().unwrap() {
        assert_eq!(p["next_offset"], p["end_offset"], "{p}");
        assert_eq!(n(&p["lag"]), 0, "{p}");
    }
    let mut cmd = job.braid(&["inspect"]);
    cmd.arg(&job.topology);
    let text = common::ok(common::output_within(cmd, LIMIT));
    assert!(
        text.contains("output not yet published: 0\nopen sessions: 0 over 0 keys\n"),
        "{text}"
    );
}

#[test]
fn a_failed_output_append_stops_the_job_clearly_and_the_restart_is_exactly_once() {
    let clean = reference(SMALL);
    let job = Job::new(SMALL);
    // From the third on, every append of output fails as on a disk that stays full;
    // the topology retries for 1 s (100 + 200 + 400 ms of backoff), then gives up.
    let (line, stderr) = job.fail_with(("BRAID_FAIL_AT", "publish:3"));
    let dir = job.log().root().display().to_string();
    assert!(
        line.starts_with(
            "error: job customer-journey: publishing output (gave up after 4 attempts in "
        ) && line.contains(&format!(" ms): {dir}/customer.journey"))
            && line.ends_with(": No space left on device (injected by BRAID_FAIL_AT=publish:3)"),
        "{line}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("publishing output failed; retrying"))
            .count(),
        3,
        "{stderr}"
    );
    let published = job.output_records();
    assert!(published < clean.outputs.total());
    // Space is back: the restart republishes what was committed and goes on.
    let summary = job.run_to_end(&[]);
    assert_eq!(n(&summary["resumed"]), 1);
    assert!(n(&summary["republished"]) > 0);
    assert_exactly_once(&job.outputs(), &clean.outputs, "after a failed append");
}

#[test]
fn a_failed_checkpoint_write_stops_the_job_clearly_and_the_restart_is_exactly_once() {
    let clean = reference(SMALL);
    let job = Job::new(SMALL);
    // The fourth checkpoint's RocksDB write fails, as on a full disk: not retried.
    let (line, _) = job.fail_with(("BRAID_FAIL_AT", "commit:4"));
    assert_eq!(
        line,
        format!(
            "error: job customer-journey: committing a checkpoint: state directory {}: writing checkpoint failed: No space left on device (injected by BRAID_FAIL_AT=commit:4)",
            job.state.display()
        )
    );
    // Three checkpoints were committed and their output published; nothing after.
    let mut cmd = job.braid(&["inspect", "--json"]);
    cmd.arg(&job.topology);
    let inspected: Value =
        serde_json::from_str(&common::ok(common::output_within(cmd, LIMIT))).unwrap();
    assert_eq!(n(&inspected["checkpoint"]), 3, "{inspected}");
    assert!(job.output_records() < clean.outputs.total());
    // Space is back: the restart goes on from checkpoint 3, exactly once.
    let summary = job.run_to_end(&[]);
    assert_eq!(n(&summary["resumed"]), 1);
    assert_exactly_once(
        &job.outputs(),
        &clean.outputs,
        "after a failed checkpoint write",
    );
}

#[test]
fn transient_append_failures_are_retried_through_exactly_once() {
    let clean = reference(SMALL);
    let job = Job::new(SMALL);
    // Two appends fail, then space is back: the job waits it out without stopping.
    let summary = job.run_to_end_with(&[("BRAID_FAIL_AT", "publish:2:2")]);
    assert_eq!(n(&summary["sink_retries"]), 2);
    assert_eq!(n(&summary["source_retries"]), 0);
    assert_exactly_once(&job.outputs(), &clean.outputs, "after retried appends");
}

#[test]
fn transient_read_failures_are_retried_and_nothing_is_lost_or_late() {
    let clean = reference(SMALL);
    // Reads of source partitions fail with an I/O error: while the first pass peeks at
    // every partition, and later half-way through slices. A partition that failed is read
    // again after its backoff, and meanwhile nothing else is read, so the output is
    // exactly the undisturbed run's: no record lost, none made late or kept from being
    // late.
    for (plan, failures) in [("read:5:3", 3), ("read:40:2", 2), ("read:150:4", 4)] {
        let job = Job::new(SMALL);
        let summary = job.run_to_end_with(&[("BRAID_FAIL_AT", plan)]);
        assert_eq!(n(&summary["source_retries"]), failures, "{plan}");
        assert_eq!(
            n(&summary["records_in"]),
            n(&clean.summary["records_in"]),
            "{plan}"
        );
        assert_exactly_once(&job.outputs(), &clean.outputs, plan);
    }
}
