//! `braid replay` end to end, with real `braid` processes on generated data: a replay
//! reproduces the live job, a range replay equals a run over exactly that range, timestamp
//! positions, isolation from the live job, usage errors, watermark alignment, and resuming
//! an interrupted replay.
//!
//! Outputs are compared after removing the `producer` stamp (its `seq` is per run), both
//! as multisets and per key in publication order. Reading an output also checks the stamp:
//! per partition the `seq`s are exactly 1, 2, 3…, so nothing was published twice or lost.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use braid::log::WriterOptions;
use braid::topology::StartPosition;
use common::TempLog;
use serde_json::Value;

/// The live job's topology; `@LOG@` and `@STATE@` are filled in per test.
const TOPOLOGY: &str = include_str!("fixtures/replay/customer_journey.toml");
/// Output topics of the live job (a replay's are these, prefixed).
const JOURNEYS: &str = "customer.journey";
const LATE: &str = "customer.journey.late";
const DEAD_LETTERS: &str = "customer.journey.dlq";
const SOURCES: [&str; 3] = ["page.viewed", "cart.updated", "order.placed"];
/// Generous: one of these runs takes about a second in a debug build.
const LIMIT: Duration = Duration::from_secs(120);
/// The dataset of most tests: 20,000 journey events of 2,000 customers, plus late records,
/// duplicates and poison records (20,118 records in all).
const DATASET: [&str; 7] = [
    "--events",
    "20000",
    "--customers",
    "2000",
    "--seed",
    "7",
    "--no-fulfilment",
];

/// A generated log, the live job's topology over it, and a private temporary directory
/// (the replays' `TMPDIR`, where their temporary state goes).
struct Fixture {
    t: TempLog,
    topology: PathBuf,
    live_state: PathBuf,
    tmp: PathBuf,
}

impl Fixture {
    /// `braid gen DATASET extra…` into a fresh log.
    fn new(extra_gen_args: &[&str]) -> Self {
        let t = TempLog::new();
        let live_state = t.dir.path().join("live-state");
        let tmp = t.dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let topology = t.dir.path().join("customer_journey.toml");
        std::fs::write(
            &topology,
            TOPOLOGY
                .replace("@LOG@", &t.path().display().to_string())
                .replace("@STATE@", &live_state.display().to_string()),
        )
        .unwrap();
        let f = Fixture {
            t,
            topology,
            live_state,
            tmp,
        };
        let mut args = vec!["gen"];
        args.extend(DATASET);
        args.extend(extra_gen_args);
        f.ok(&args);
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.dir.path().join(name)
    }

    /// Runs `braid --log LOG args…` (within [`LIMIT`]).
    fn braid(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.t.braid();
        cmd.args(args).env("TMPDIR", &self.tmp);
        for (k, v) in env {
            cmd.env(k, v);
        }
        common::output_within(cmd, LIMIT)
    }

    fn ok(&self, args: &[&str]) -> String {
        common::ok(self.braid(args, &[]))
    }

    /// Runs a command that must be refused as a usage error; returns its stderr.
    fn usage_error(&self, args: &[&str]) -> String {
        let out = self.braid(args, &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: expected a usage error\nstdout:\n{}\nstderr:\n{}",
            common::stdout(&out),
            common::stderr(&out)
        );
        common::stderr(&out)
    }

    /// `braid run TOPOLOGY --bounded extra…`; returns the JSON summary.
    fn run_live(&self, extra: &[&str]) -> Value {
        self.with_summary(&["run", &self.topology_arg(), "--bounded"], extra)
    }

    /// `braid replay TOPOLOGY args…`; returns the JSON summary.
    fn replay(&self, args: &[&str]) -> Value {
        self.with_summary(&["replay", &self.topology_arg()], args)
    }

    fn with_summary(&self, head: &[&str], tail: &[&str]) -> Value {
        let file = tempfile::NamedTempFile::new_in(self.t.dir.path()).unwrap();
        let path = file.path().display().to_string();
        let mut args = head.to_vec();
        args.extend(tail);
        args.extend(["--summary-json", &path]);
        self.ok(&args);
        serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap()
    }

    fn topology_arg(&self) -> String {
        self.topology.display().to_string()
    }

    /// The output topics `prefix` + the live job's.
    fn outputs(&self, prefix: &str) -> Outputs {
        Outputs::read(&self.t.log, prefix)
    }

    /// Every record of every source partition, by (topic, partition).
    fn sources(&self) -> BTreeMap<(String, u32), Vec<braid::log::Record>> {
        let mut out: BTreeMap<(String, u32), Vec<_>> = BTreeMap::new();
        for topic in SOURCES {
            for p in 0..self.t.log.topic(topic).unwrap().partitions {
                out.insert((topic.to_owned(), p), Vec::new());
            }
            for (p, r) in common::read_topic(&self.t.log, topic) {
                out.get_mut(&(topic.to_owned(), p)).unwrap().push(r);
            }
        }
        out
    }

    /// What the replays left in their `TMPDIR`.
    fn leftovers(&self) -> Vec<PathBuf> {
        common::files_under(&self.tmp)
    }
}

/// One output topic, per key (the record key; `""` for none), in publication order,
/// without the `producer` stamp.
type ByKey = BTreeMap<String, Vec<Value>>;

/// A job's three outputs.
#[derive(Debug)]
struct Outputs {
    journeys: ByKey,
    late: ByKey,
    dead_letters: ByKey,
}

impl Outputs {
    fn read(log: &braid::log::Log, prefix: &str) -> Self {
        Outputs {
            journeys: read_output(log, &format!("{prefix}{JOURNEYS}")),
            late: read_output(log, &format!("{prefix}{LATE}")),
            dead_letters: read_output(log, &format!("{prefix}{DEAD_LETTERS}")),
        }
    }

    fn kinds(&self) -> [(&'static str, &ByKey); 3] {
        [
            ("journeys", &self.journeys),
            ("late reports", &self.late),
            ("dead letters", &self.dead_letters),
        ]
    }

    fn kinds_mut(&mut self) -> [&mut ByKey; 3] {
        [&mut self.journeys, &mut self.late, &mut self.dead_letters]
    }

    fn count(&self, kind: &str) -> usize {
        let by_key = self
            .kinds()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .unwrap()
            .1;
        by_key.values().map(Vec::len).sum()
    }

    fn journeys(&self) -> impl Iterator<Item = &Value> {
        self.journeys.values().flatten()
    }
}

/// Reads an output topic and checks its `producer` stamps: per partition one job, and
/// `seq` 1, 2, 3… with no gap or repeat.
fn read_output(log: &braid::log::Log, topic: &str) -> ByKey {
    let mut by_key = ByKey::new();
    let mut next_seq: BTreeMap<u32, u64> = BTreeMap::new();
    for (p, r) in common::read_topic(log, topic) {
        let mut v: Value = serde_json::from_slice(&r.value).unwrap();
        let producer = v
            .as_object_mut()
            .unwrap()
            .remove("producer")
            .unwrap_or_else(|| panic!("{topic}/{p}@{}: no producer stamp", r.offset));
        let expected = next_seq.entry(p).or_insert(1);
        assert_eq!(
            producer["seq"].as_u64(),
            Some(*expected),
            "{topic}/{p}@{}: producer seq",
            r.offset
        );
        *expected += 1;
        let key = r
            .key
            .map_or_else(String::new, |k| String::from_utf8(k).unwrap());
        by_key.entry(key).or_default().push(v);
    }
    by_key
}

/// Asserts that two jobs' outputs are the same records, as multisets and per key in the
/// same order; the message names the first difference instead of dumping thousands of
/// records.
fn assert_same(actual: &Outputs, expected: &Outputs, what: &str) {
    for ((kind, a), (_, e)) in actual.kinds().into_iter().zip(expected.kinds()) {
        let multiset = |m: &ByKey| {
            let mut v: Vec<String> = m.values().flatten().map(Value::to_string).collect();
            v.sort();
            v
        };
        let (ma, me) = (multiset(a), multiset(e));
        if ma != me {
            let only_a = ma.iter().find(|r| !me.contains(r));
            let only_e = me.iter().find(|r| !ma.contains(r));
            panic!(
                "{what}: {kind} differ as multisets ({} vs {} expected)\nfirst only in actual: {only_a:?}\nfirst only in expected: {only_e:?}",
                ma.len(),
                me.len()
            );
        }
        for (key, records) in e {
            assert!(
                a.get(key) == Some(records),
                "{what}: {kind} of key {key:?} come in another order"
            );
        }
    }
}

/// The same record with every source offset made relative to its range's start: what the
/// record says in a log holding only that range.
fn shift_offsets(
    outputs: &mut Outputs,
    from: &BTreeMap<(String, u32), u64>,
    to: &BTreeMap<(String, u32), u64>,
) {
    let shift = |place: &mut Value| {
        let topic = place["topic"].as_str().unwrap().to_owned();
        let partition = place["partition"].as_u64().unwrap() as u32;
        let offset = place["offset"].as_u64().unwrap();
        let (start, end) = (
            from[&(topic.clone(), partition)],
            to[&(topic.clone(), partition)],
        );
        assert!(
            (start..end).contains(&offset),
            "{topic}/{partition}@{offset} is outside the range {start}..{end}"
        );
        place["offset"] = Value::from(offset - start);
    };
    for by_key in outputs.kinds_mut() {
        for v in by_key.values_mut().flatten() {
            match v.get_mut("events") {
                Some(events) => events.as_array_mut().unwrap().iter_mut().for_each(shift),
                None => shift(v),
            }
        }
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// A summary's counts that must not depend on how the run was made.
fn counts(summary: &Value) -> [u64; 5] {
    [
        "records_in",
        "journeys",
        "late",
        "duplicates",
        "dead_letters",
    ]
    .map(|k| n(&summary[k]))
}

fn cut(journey: &Value) -> bool {
    journey.get("cut_by_replay_boundary") == Some(&Value::Bool(true))
}

#[test]
fn a_replay_from_the_beginning_reproduces_the_live_job_for_any_shard_count() {
    let f = Fixture::new(&[]);
    let s1 = f.path("S1").display().to_string();
    let live = f.run_live(&["--state", &s1]);
    let live_out = f.outputs("");
    assert_eq!(n(&live["records_in"]), 20_118);
    for (kind, by_key) in live_out.kinds() {
        assert!(!by_key.is_empty(), "the dataset gives {kind}");
    }
    assert_eq!(live_out.count("journeys") as u64, n(&live["journeys"]));
    // The end of a bounded run cuts the sessions still open then, not the others.
    assert!(live_out.journeys().any(cut) && !live_out.journeys().all(cut));

    // Default outputs (`replay.` + the live topics), temporary state, the topology's shards.
    let replay = f.replay(&["--from", "beginning"]);
    assert_eq!(counts(&replay), counts(&live));
    assert_same(
        &f.outputs("replay."),
        &live_out,
        "replay from the beginning",
    );
    assert_eq!(
        f.leftovers(),
        Vec::<PathBuf>::new(),
        "temporary state removed"
    );

    for shards in ["1", "3"] {
        let prefix = format!("shards{shards}.");
        let summary = f.replay(&[
            "--from",
            "beginning",
            "--shards",
            shards,
            "--output-prefix",
            &prefix,
        ]);
        assert_eq!(n(&summary["shards"]), shards.parse::<u64>().unwrap());
        assert_eq!(counts(&summary), counts(&live));
        assert_same(
            &f.outputs(&prefix),
            &live_out,
            &format!("replay with {shards} shards"),
        );
    }
}

#[test]
fn a_range_replay_equals_a_run_over_a_log_holding_just_that_range() {
    let f = Fixture::new(&[]);
    let sources = f.sources();
    // Per partition its own range, [1/5, 3/5) of its records: a mid-stream cut at both ends.
    let mut from = BTreeMap::new();
    let mut to = BTreeMap::new();
    // Everything else in the range (from the end back to the beginning) is overridden per
    // partition below: were the most specific spec not to win, the range would be inverted.
    let mut args: Vec<String> = [
        "--from",
        "end",
        "--to",
        "beginning",
        "--output-prefix",
        "range.",
    ]
    .map(String::from)
    .to_vec();
    for ((topic, p), records) in &sources {
        let len = records.len() as u64;
        let (start, end) = (len / 5, len * 3 / 5);
        assert!(start < end, "{topic}/{p} has {len} records");
        from.insert((topic.clone(), *p), start);
        to.insert((topic.clone(), *p), end);
        args.extend([
            "--from".into(),
            format!("{topic}/{p}=offset:{start}"),
            "--to".into(),
            format!("{topic}/{p}=offset:{end}"),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let summary = f.replay(&args);
    let in_range: u64 = from.iter().map(|(k, start)| to[k] - start).sum();
    assert_eq!(n(&summary["records_in"]), in_range);
    let mut replayed = f.outputs("range.");

    // The reference: a fresh log with exactly those records (keys, values, append times),
    // same topics and partition counts, and a plain bounded run of the same topology.
    let reference = TempLog::new();
    for topic in SOURCES {
        let partitions = f.t.log.topic(topic).unwrap().partitions;
        reference.log.create_topic(topic, partitions).unwrap();
    }
    for ((topic, p), records) in &sources {
        let range = from[&(topic.clone(), *p)] as usize..to[&(topic.clone(), *p)] as usize;
        let mut writer = reference
            .log
            .writer(topic, *p, WriterOptions::default())
            .unwrap();
        writer
            .append_timed(
                records[range]
                    .iter()
                    .map(|r| (r.key.as_deref(), r.value.as_slice(), r.timestamp_ms)),
            )
            .unwrap();
    }
    let state = reference.dir.path().join("state").display().to_string();
    let out = common::output_within(
        {
            let mut cmd = reference.braid();
            cmd.args(["run", &f.topology_arg(), "--bounded", "--state", &state]);
            cmd
        },
        LIMIT,
    );
    common::ok(out);
    let expected = Outputs::read(&reference.log, "");
    assert!(expected.count("journeys") > 0);

    // The replay names the records by their offsets in the full log.
    shift_offsets(&mut replayed, &from, &to);
    assert_same(&replayed, &expected, "range replay");

    // Sessions still open at the end of the range are cut by it and say so; those the
    // data's watermark closed inside the range do not.
    assert!(
        replayed.journeys().any(cut),
        "a mid-stream range cuts some sessions"
    );
    assert!(
        !replayed.journeys().all(cut),
        "most sessions close inside the range"
    );
}

#[test]
fn timestamp_positions_resolve_by_append_time() {
    let f = Fixture::new(&[]);
    let sources = f.sources();
    let total: u64 = sources.values().map(|r| r.len() as u64).sum();
    let first = sources.values().map(|r| r[0].timestamp_ms).min().unwrap();
    let last = sources
        .values()
        .map(|r| r.last().unwrap().timestamp_ms)
        .max()
        .unwrap();
    let at = |ms: i64| StartPosition::Timestamp(ms).to_string();

    // Before the first record: the same as from the beginning.
    let beginning = f.replay(&["--from", "beginning", "--output-prefix", "b."]);
    let early = f.replay(&[
        "--from",
        &at(first - 3_600_000),
        "--output-prefix",
        "early.",
    ]);
    assert_eq!(n(&early["records_in"]), total);
    assert_eq!(counts(&early), counts(&beginning));
    assert_same(
        &f.outputs("early."),
        &f.outputs("b."),
        "timestamp before the first record",
    );

    // After the last: nothing is read.
    let late = f.replay(&["--from", &at(last + 1), "--output-prefix", "after."]);
    assert_eq!(counts(&late), [0; 5]);
    let nothing = f.outputs("after.");
    assert_eq!(
        nothing.count("journeys") + nothing.count("late reports") + nothing.count("dead letters"),
        0
    );

    // In the middle: the append time of a record of page.viewed/0, so that record is the
    // first read there (≥, not >); elsewhere the first record appended at or after it.
    let pv0 = &sources[&("page.viewed".to_owned(), 0)];
    let t = pv0[pv0.len() / 2].timestamp_ms;
    let mut args: Vec<String> = vec![
        "--from".into(),
        "end".into(),
        "--output-prefix".into(),
        "off.".into(),
    ];
    let mut expected_in = 0;
    for ((topic, p), records) in &sources {
        let k = records
            .iter()
            .position(|r| r.timestamp_ms >= t)
            .unwrap_or(records.len());
        assert!(k > 0 && k < records.len(), "{topic}/{p}: T is mid-stream");
        assert_eq!(records[k].offset, k as u64);
        expected_in += (records.len() - k) as u64;
        args.extend(["--from".into(), format!("{topic}/{p}=offset:{k}")]);
    }
    let by_time = f.replay(&["--from", &at(t), "--output-prefix", "ts."]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let by_offset = f.replay(&args);
    assert_eq!(n(&by_time["records_in"]), expected_in);
    assert_eq!(counts(&by_time), counts(&by_offset));
    let by_time_out = f.outputs("ts.");
    assert!(by_time_out.count("journeys") > 0);
    assert_same(
        &by_time_out,
        &f.outputs("off."),
        "timestamp:T against offset:K",
    );
}

#[test]
fn a_replay_leaves_the_live_job_untouched_and_refuses_its_state_and_outputs() {
    let f = Fixture::new(&[]);
    let live_state = f.live_state.display().to_string();
    // Before the live job ran its state directory does not exist yet; it is refused all
    // the same.
    let live_state_refused = format!(
        "error: the replay's state directory {live_state} is the live job's state directory; a replay uses its own (omit --state for a temporary one)\n"
    );
    assert_eq!(
        f.usage_error(&[
            "replay",
            &f.topology_arg(),
            "--from",
            "beginning",
            "--state",
            &live_state
        ]),
        live_state_refused
    );

    f.run_live(&[]);
    let watched: Vec<PathBuf> = std::iter::once(f.live_state.clone())
        .chain(
            [JOURNEYS, LATE, DEAD_LETTERS]
                .into_iter()
                .chain(SOURCES)
                .map(|topic| f.t.path().join(topic)),
        )
        .collect();
    let snapshot = |dirs: &[PathBuf]| {
        dirs.iter()
            .map(|d| common::snapshot_files(d))
            .collect::<Vec<_>>()
    };
    let before = snapshot(&watched);
    assert!(
        before[0].len() > 3,
        "the live job has state: {:?}",
        before[0]
    );

    let replay = f.replay(&["--from", "beginning"]);
    assert!(n(&replay["journeys"]) > 0);
    assert_eq!(
        snapshot(&watched),
        before,
        "the replay changed the live job's files"
    );
    assert_eq!(
        f.leftovers(),
        Vec::<PathBuf>::new(),
        "temporary state removed"
    );

    // Resuming "into" the live state: refused before anything is opened.
    assert_eq!(
        f.usage_error(&[
            "replay",
            &f.topology_arg(),
            "--from",
            "beginning",
            "--state",
            &live_state,
            "--resume"
        ]),
        live_state_refused
    );
    // The live job's outputs, by an empty prefix or by name.
    let live_output_refused = |topic: &str| {
        format!(
            "error: the replay would write into the live job's output topic `{topic}`; choose other topics (--output-prefix, --journeys, --late, --dead-letters) or pass --into-live-outputs\n"
        )
    };
    assert_eq!(
        f.usage_error(&[
            "replay",
            &f.topology_arg(),
            "--from",
            "beginning",
            "--output-prefix",
            ""
        ]),
        live_output_refused(JOURNEYS)
    );
    assert_eq!(
        f.usage_error(&[
            "replay",
            &f.topology_arg(),
            "--from",
            "beginning",
            "--output-prefix",
            "fix.",
            "--dead-letters",
            DEAD_LETTERS
        ]),
        live_output_refused(DEAD_LETTERS)
    );
    assert_eq!(
        snapshot(&watched),
        before,
        "a refused replay changed the live job's files"
    );
}

#[test]
fn into_live_outputs_lifts_the_refusal() {
    // A log whose live job has not published yet (see the ignored test below for one that
    // has): the replay may then fill the live topics.
    let f = Fixture::new(&[]);
    let args = [
        "replay",
        &f.topology_arg(),
        "--from",
        "offset:100",
        "--to",
        "offset:400",
        "--output-prefix",
        "",
    ];
    assert_eq!(
        f.usage_error(&args),
        format!(
            "error: the replay would write into the live job's output topic `{JOURNEYS}`; choose other topics (--output-prefix, --journeys, --late, --dead-letters) or pass --into-live-outputs\n"
        )
    );
    let summary = f.replay(
        &args[2..]
            .iter()
            .copied()
            .chain(["--into-live-outputs"])
            .collect::<Vec<_>>(),
    );
    assert!(n(&summary["journeys"]) > 0);
    assert_eq!(
        f.outputs("").count("journeys") as u64,
        n(&summary["journeys"])
    );
}

#[test]
fn into_live_outputs_backfills_after_the_live_job_published() {
    let f = Fixture::new(&[]);
    f.run_live(&[]);
    // Today: exit 1, "state directory /tmp/…/braid-replay-customer-journey-… holds no
    // checkpoint, but output topic `customer.journey` partition 0 already holds records of
    // job `customer-journey` …: starting from scratch would publish them again".
    let summary = f.replay(&[
        "--from",
        "offset:100",
        "--to",
        "offset:400",
        "--into-live-outputs",
    ]);
    assert!(n(&summary["journeys"]) > 0);
}

#[test]
fn the_live_state_is_refused_as_such_once_it_holds_state() {
    let f = Fixture::new(&[]);
    f.run_live(&[]);
    let live_state = f.live_state.display().to_string();
    // Today: "error: …/live-state already holds a replay's state: add --resume to continue
    // it, or choose a new directory" — which calls the live state a replay's and suggests
    // --resume, which then gives the message below.
    assert_eq!(
        f.usage_error(&[
            "replay",
            &f.topology_arg(),
            "--from",
            "beginning",
            "--state",
            &live_state
        ]),
        format!(
            "error: the replay's state directory {live_state} is the live job's state directory; a replay uses its own (omit --state for a temporary one)\n"
        )
    );
}

#[test]
fn usage_errors_are_reported_word_for_word() {
    let f = Fixture::new(&[]);
    let topology = f.topology_arg();
    let replay = |args: &[&str]| {
        let mut all = vec!["replay", topology.as_str()];
        all.extend(args);
        f.usage_error(&all)
    };
    assert_eq!(
        replay(&["--from", "nope=beginning"]),
        "error: --from nope=beginning: `nope` is not a source of topology `customer-journey` (sources: page.viewed, cart.updated, order.placed)\n"
    );
    assert_eq!(
        replay(&["--from", "beginning", "--to", "page.viewed/4=end"]),
        "error: --to page.viewed/4=end: topic `page.viewed` has 4 partitions, numbered from 0 to 3\n"
    );
    assert_eq!(
        replay(&["--from", "offset:100", "--to", "offset:50"]),
        "error: topic `page.viewed` partition 0: the range starts at offset 100 but ends at offset 50\n"
    );
    // Per partition: the range of cart.updated/1 alone is inverted.
    let cart1 =
        f.t.log
            .partition_info("cart.updated", 1)
            .unwrap()
            .end_offset;
    assert_eq!(
        replay(&[
            "--from",
            "beginning",
            "--from",
            "cart.updated/1=end",
            "--to",
            "cart.updated=offset:10"
        ]),
        format!(
            "error: topic `cart.updated` partition 1: the range starts at offset {cart1} but ends at offset 10\n"
        )
    );
    // Malformed positions are refused by the argument parser.
    assert_eq!(
        replay(&["--from", "offset:x"]),
        "error: invalid value 'offset:x' for '--from <POS>': invalid position \"offset:x\": invalid start position \"offset:x\": the offset must be a non-negative integer (expected POS, TOPIC=POS or TOPIC/PARTITION=POS, where POS is beginning, end, offset:N or timestamp:RFC3339)\n\nFor more information, try '--help'.\n"
    );
    assert_eq!(
        replay(&["--from", "beginning", "--to", "page.viewed/x=end"]),
        "error: invalid value 'page.viewed/x=end' for '--to <POS>': invalid position \"page.viewed/x=end\": partition \"x\" is not a number (expected POS, TOPIC=POS or TOPIC/PARTITION=POS, where POS is beginning, end, offset:N or timestamp:RFC3339)\n\nFor more information, try '--help'.\n"
    );
    assert_eq!(
        replay(&["--from", "timestamp:yesterday"]),
        "error: invalid value 'timestamp:yesterday' for '--from <POS>': invalid position \"timestamp:yesterday\": invalid start position \"timestamp:yesterday\": the timestamp is not RFC 3339 (expected POS, TOPIC=POS or TOPIC/PARTITION=POS, where POS is beginning, end, offset:N or timestamp:RFC3339)\n\nFor more information, try '--help'.\n"
    );
    // --resume needs a replay to resume; a replay's state is not silently reused.
    let empty = f.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let empty = empty.display().to_string();
    assert_eq!(
        replay(&["--from", "beginning", "--state", &empty, "--resume"]),
        format!("error: --resume: {empty} holds no replay to resume\n")
    );
    let missing = f.path("missing").display().to_string();
    assert_eq!(
        replay(&["--from", "beginning", "--state", &missing, "--resume"]),
        format!("error: --resume: {missing} holds no replay to resume\n")
    );
    let used = f.path("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("CURRENT"), "MANIFEST-000001\n").unwrap();
    let used = used.display().to_string();
    assert_eq!(
        replay(&["--from", "beginning", "--state", &used]),
        format!(
            "error: {used} already holds a replay's state: add --resume to continue it, or choose a new directory\n"
        )
    );
    // A refused replay leaves nothing behind: no output topic, no state.
    let topics: Vec<String> =
        f.t.log
            .topics()
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
    let mut sources = SOURCES.map(String::from).to_vec();
    sources.sort();
    assert_eq!(topics, sources);
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
    assert!(!Path::new(&missing).exists());
}

#[test]
fn alignment_bounds_open_windows_when_a_topic_lags() {
    // Orders arrive an hour after their event time. Unaligned, the job watermark (the
    // minimum over partitions) trails the page views and cart updates by that hour, so
    // every session stays open an hour past its gap: the open windows at any moment are
    // the sessions of about 1.5 h instead of about 30 min. With --align 1m the page.viewed
    // and cart.updated partitions are not read while more than a minute ahead of the job
    // watermark and order.placed is read ahead instead, so sessions close about when their
    // gap ends. On this dataset the peak drops from about 950 to about 460 (without the
    // delay it is about 450); less than 0.7 x unaligned holds with a wide margin, and
    // fails without alignment (where the ratio is 1).
    let f = Fixture::new(&["--delay", "order.placed=1h"]);
    let unaligned = f.replay(&["--from", "beginning", "--output-prefix", "u."]);
    let aligned = f.replay(&[
        "--from",
        "beginning",
        "--output-prefix",
        "a.",
        "--align",
        "1m",
    ]);
    let peak = |s: &Value| n(&s["open_windows_peak"]);
    assert!(
        (peak(&aligned) as f64) < 0.7 * peak(&unaligned) as f64,
        "open windows peak: aligned {} against unaligned {}",
        peak(&aligned),
        peak(&unaligned)
    );
    // Reading out of arrival order changes which events are late, never whether every
    // record is accounted for.
    for (summary, prefix) in [(&unaligned, "u."), (&aligned, "a.")] {
        let out = f.outputs(prefix);
        let in_journeys: u64 = out
            .journeys()
            .map(|j| j["events"].as_array().unwrap().len() as u64)
            .sum();
        assert_eq!(out.count("late reports") as u64, n(&summary["late"]));
        assert_eq!(
            in_journeys
                + n(&summary["late"])
                + n(&summary["duplicates"])
                + n(&summary["dead_letters"]),
            n(&summary["records_in"]),
            "{prefix}"
        );
        assert_eq!(n(&summary["records_in"]), 20_118);
    }
}

#[test]
fn an_interrupted_replay_resumes_to_the_uninterrupted_output() {
    let f = Fixture::new(&[]);
    let full = f.replay(&["--from", "beginning", "--output-prefix", "full."]);
    let expected = f.outputs("full.");
    // Each point aborts the process like kill -9 (BRAID_CRASH_AT, see docs/semantics.md):
    // before a checkpoint is written, between two output partitions of one checkpoint, and
    // after publishing but before acknowledging. About ten checkpoints of 2,000 records
    // each, twelve output partitions: every point is mid-stream.
    for (i, point) in ["commit:4", "publish:25", "ack:3"].into_iter().enumerate() {
        let state = f.path(&format!("state-{i}")).display().to_string();
        let prefix = format!("resumed{i}.");
        let topology = f.topology_arg();
        let args = [
            "replay",
            &topology,
            "--from",
            "beginning",
            "--state",
            &state,
            "--output-prefix",
            &prefix,
        ];
        let crashed = f.braid(&args, &[("BRAID_CRASH_AT", point)]);
        assert!(
            !crashed.status.success(),
            "{point}: the replay was not interrupted"
        );
        assert!(
            common::stderr(&crashed).ends_with(&format!(
                "braid: BRAID_CRASH_AT={point} reached; aborting\n"
            )),
            "{point}: {}",
            common::stderr(&crashed)
        );
        let before = f.outputs(&prefix).count("journeys");
        assert!(
            before > 0 && before < expected.count("journeys"),
            "{point}: interrupted mid-stream ({before} journeys published)"
        );

        // The range is the one the replay started with, kept in its checkpoint: on resume
        // the positions given matter only for being valid.
        let from = if i == 2 { "end" } else { "beginning" };
        let resumed = f.replay(&[
            "--from",
            from,
            "--state",
            &state,
            "--resume",
            "--output-prefix",
            &prefix,
        ]);
        assert_eq!(resumed["resumed"], Value::Bool(true), "{point}");
        assert!(
            n(&resumed["records_in"]) < n(&full["records_in"]),
            "{point}"
        );
        assert_same(
            &f.outputs(&prefix),
            &expected,
            &format!("resumed after {point}"),
        );
    }
}

#[test]
fn resuming_as_the_docs_say_continues_into_the_same_topics() {
    let f = Fixture::new(&[]);
    f.replay(&["--from", "beginning", "--output-prefix", "full."]);
    let state = f.path("state").display().to_string();
    let topology = f.topology_arg();
    let crashed = f.braid(
        &[
            "replay",
            &topology,
            "--from",
            "beginning",
            "--state",
            &state,
            "--output-prefix",
            "x.",
        ],
        &[("BRAID_CRASH_AT", "publish:25")],
    );
    assert!(!crashed.status.success());
    // `braid replay TOPOLOGY --from beginning --state DIR --resume`, as docs/semantics.md
    // and the "replay interrupted; continue it with: …" hint put it. Today the resumed run
    // writes its new output into replay.customer.journey… (the topics of this command
    // line), and Outbox::recover, which looks for the last published seq only in those
    // topics, republishes every unacknowledged outbox entry of x.* into x.* — also those
    // published before the crash: e.g. x.customer.journey/0 held seq 107…130 twice.
    f.replay(&["--from", "beginning", "--state", &state, "--resume"]);
    assert_same(
        &f.outputs("x."),
        &f.outputs("full."),
        "resumed without repeating the outputs",
    );
}
