//! The `braid` binary end to end: topics, produce → consume, positions, exit codes.

mod common;

use common::{Running, TempLog, lines_of, ok, run_with_stdin, stderr, stdout};

fn cmd(t: &TempLog, args: &[&str]) -> std::process::Command {
    let mut c = t.braid();
    c.args(args);
    c
}

#[test]
fn topic_create_list_describe() {
    let t = TempLog::new();
    assert_eq!(
        ok(
            cmd(&t, &["topic", "create", "page.viewed", "--partitions", "3"])
                .output()
                .unwrap()
        ),
        "topic page.viewed ready with 3 partitions\n"
    );
    ok(cmd(&t, &["topic", "create", "order.placed"])
        .output()
        .unwrap());
    assert_eq!(
        ok(cmd(&t, &["topic", "list"]).output().unwrap()),
        "order.placed\t1\npage.viewed\t3\n"
    );
    let out = cmd(&t, &["topic", "create", "page.viewed", "--partitions", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: topic page.viewed already exists with 3 partitions, not 2\n"
    );
    ok(run_with_stdin(
        cmd(&t, &["produce", "order.placed"]),
        b"{\"a\":1}\n{\"a\":2}\n",
    ));
    let json: serde_json::Value = serde_json::from_str(&ok(cmd(
        &t,
        &["topic", "describe", "order.placed", "--json"],
    )
    .output()
    .unwrap()))
    .unwrap();
    assert_eq!(json["topic"], "order.placed");
    assert_eq!(json["partitions"][0]["end_offset"], 2);
    assert!(json["partitions"][0]["bytes"].as_u64().unwrap() > 14);
    let table = ok(cmd(&t, &["topic", "describe", "order.placed"])
        .output()
        .unwrap());
    assert!(
        table.starts_with("topic order.placed (1 partitions)\n"),
        "{table}"
    );
}

#[test]
fn produce_then_consume_round_trip_with_keys() {
    let t = TempLog::new();
    ok(cmd(&t, &["topic", "create", "views", "--partitions", "4"])
        .output()
        .unwrap());
    let lines: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"customer_id":"c-{}","n":{i}}}"#, i % 7))
        .chain([
            "not json at all".to_string(),
            r#"{"customer_id":17,"n":99}"#.to_string(),
        ])
        .collect();
    let input = lines.join("\n") + "\n\n";
    let out = run_with_stdin(
        cmd(&t, &["produce", "views", "--key-pointer", "/customer_id"]),
        input.as_bytes(),
    );
    let err = stderr(&out);
    ok(out);
    assert!(
        err.contains("produced 42 records to views (41 keyed, 1 unkeyed, 1 not JSON)"),
        "{err}"
    );

    let out = ok(cmd(&t, &["consume", "views", "--meta"]).output().unwrap());
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 42);
    for r in &recs {
        let p = r["partition"].as_u64().unwrap() as u32;
        if let Some(key) = r["key"].as_str() {
            assert_eq!(braid::log::partition_for_key(key.as_bytes(), 4), p, "{r}");
        }
    }
    let n17 = recs.iter().find(|r| r["value"]["n"] == 99).unwrap();
    assert_eq!(n17["key"], "17", "integer keys become their decimal text");
    let poison = recs
        .iter()
        .find(|r| r["value"] == "not json at all")
        .unwrap();
    assert!(poison["key"].is_null());
    // Per partition, offsets are dense and values keep their order.
    for p in 0..4 {
        let mine: Vec<&serde_json::Value> = recs.iter().filter(|r| r["partition"] == p).collect();
        for (i, r) in mine.iter().enumerate() {
            assert_eq!(r["offset"], i as u64);
        }
    }
    // Without --meta: the values exactly as produced (here one partition's worth).
    let plain = ok(cmd(&t, &["consume", "views", "--partition", "0"])
        .output()
        .unwrap());
    for line in plain.lines() {
        assert!(lines.contains(&line.to_string()), "{line}");
    }
}

#[test]
fn consume_positions_and_limits() {
    let t = TempLog::new();
    ok(cmd(&t, &["topic", "create", "t"]).output().unwrap());
    let input: String = (0..10).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    ok(run_with_stdin(cmd(&t, &["produce", "t"]), input.as_bytes()));
    let values = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["consume", "t"];
        all.extend_from_slice(args);
        ok(cmd(&t, &all).output().unwrap())
            .lines()
            .map(String::from)
            .collect()
    };
    assert_eq!(
        values(&["--from", "offset:7"]),
        ["{\"n\":7}", "{\"n\":8}", "{\"n\":9}"]
    );
    assert_eq!(values(&["-n", "2"]), ["{\"n\":0}", "{\"n\":1}"]);
    assert!(values(&["--from", "end"]).is_empty());
    assert!(values(&["--from", "offset:50"]).is_empty());
    assert_eq!(
        values(&["--from", "timestamp:1970-01-01T00:00:00Z"]).len(),
        10
    );
    assert!(values(&["--from", "timestamp:2999-01-01T00:00:00Z"]).is_empty());
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    let t = TempLog::new();
    ok(cmd(&t, &["topic", "create", "t"]).output().unwrap());
    let out = cmd(&t, &["consume", "t", "--from", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "invalid value 'yesterday' for '--from <FROM>': invalid start position \"yesterday\": expected beginning, end, offset:N or timestamp:RFC3339"
        ),
        "{}",
        stderr(&out)
    );
    let out = cmd(&t, &["consume", "t", "--partition", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: --partition 3 does not exist: topic t has 1 partition(s)\n"
    );
    let out = run_with_stdin(
        cmd(&t, &["produce", "t", "--key-pointer", "customer_id"]),
        b"{}\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: --key-pointer \"customer_id\" is not a JSON pointer (hint: /customer_id)\n"
    );
    let out = cmd(&t, &["consume", "missing"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: topic missing does not exist in "),
        "{}",
        stderr(&out)
    );
    let out = run_with_stdin(
        cmd(&t, &["produce", "t", "--validate-json"]),
        b"{\"ok\":1}\nnope\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("stdin:2: not valid JSON; not appended"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&cmd(&t, &["consume", "t"]).output().unwrap()),
        "{\"ok\":1}\n"
    );
}

#[test]
fn every_subcommand_help_teaches_by_example() {
    for sub in [
        &["topic", "create"][..],
        &["topic", "list"],
        &["topic", "describe"],
        &["produce"],
        &["consume"],
        &["gen"],
        &["validate"],
        &["run"],
        &["replay"],
        &["inspect"],
        &["scan"],
    ] {
        let mut c = common::braid();
        c.args(sub).arg("--help");
        let help = ok(c.output().unwrap());
        assert!(
            help.contains("Example"),
            "{sub:?} --help has no example:\n{help}"
        );
    }
}

/// A stored record: topic, partition, offset, append time, key, value.
type Stored = (String, u32, u64, i64, Option<Vec<u8>>, Vec<u8>);

/// Everything stored in a log.
fn dump(t: &TempLog) -> Vec<Stored> {
    let mut out = Vec::new();
    for meta in t.log.topics().unwrap() {
        for p in 0..meta.partitions {
            for r in t
                .log
                .reader(&meta.name, p, 0)
                .unwrap()
                .read_batch(usize::MAX)
                .unwrap()
            {
                out.push((
                    meta.name.clone(),
                    p,
                    r.offset,
                    r.timestamp_ms,
                    r.key,
                    r.value,
                ));
            }
        }
    }
    out
}

#[test]
fn gen_is_deterministic_for_a_seed() {
    let args = [
        "gen",
        "--events",
        "3000",
        "--customers",
        "200",
        "--partitions",
        "order.placed=1",
    ];
    let (a, b, c) = (TempLog::new(), TempLog::new(), TempLog::new());
    let summary_a = ok(cmd(&a, &[&args[..], &["--seed", "9"]].concat())
        .output()
        .unwrap());
    let summary_b = ok(cmd(&b, &[&args[..], &["--seed", "9"]].concat())
        .output()
        .unwrap());
    ok(cmd(&c, &[&args[..], &["--seed", "10"]].concat())
        .output()
        .unwrap());
    assert_eq!(summary_a, summary_b);
    let (da, db, dc) = (dump(&a), dump(&b), dump(&c));
    assert_eq!(
        da, db,
        "same seed, same records in the same partitions and offsets"
    );
    assert_ne!(da, dc, "another seed, another dataset");
    let summary: serde_json::Value = serde_json::from_str(&summary_a).unwrap();
    assert_eq!(summary["journey_events"], 3000);
    assert_eq!(summary["records"].as_u64().unwrap(), da.len() as u64);
    let partitions: Vec<(String, u32)> = a
        .log
        .topics()
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.partitions))
        .collect();
    assert!(
        partitions.contains(&("page.viewed".into(), 4)),
        "{partitions:?}"
    );
    assert!(
        partitions.contains(&("order.placed".into(), 1)),
        "{partitions:?}"
    );
    // Records are keyed, so a customer's events share a partition.
    for (topic, p, _, _, key, _) in &da {
        let key = key.as_ref().expect("generated records are keyed");
        let n = partitions.iter().find(|(t, _)| t == topic).unwrap().1;
        assert_eq!(braid::log::partition_for_key(key, n), *p);
    }

    // The JSON-lines form holds the same values.
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    ok(cmd(
        &a,
        &[&args[..], &["--seed", "9", "--out-dir", out_dir]].concat(),
    )
    .output()
    .unwrap());
    let lines = std::fs::read_to_string(dir.path().join("page.viewed.jsonl")).unwrap();
    let mut from_file: Vec<&str> = lines.lines().collect();
    let mut from_log: Vec<String> = da
        .iter()
        .filter(|r| r.0 == "page.viewed")
        .map(|r| String::from_utf8_lossy(&r.5).replace('\n', " "))
        .collect();
    from_file.sort_unstable();
    from_log.sort_unstable();
    assert_eq!(from_file, from_log);
}

#[test]
fn gen_with_a_rate_appends_the_same_records_live() {
    let args = [
        "gen",
        "--events",
        "2000",
        "--customers",
        "100",
        "--seed",
        "9",
    ];
    let (paced, fast) = (TempLog::new(), TempLog::new());
    let before = braid::time::wall_clock_ms();
    ok(cmd(&paced, &[&args[..], &["--rate", "1000000"]].concat())
        .output()
        .unwrap());
    ok(cmd(&fast, &args).output().unwrap());
    // The same records at the same places; only the append times are the clock's.
    let strip = |d: Vec<Stored>| -> Vec<_> {
        d.into_iter()
            .map(|(t, p, o, _, k, v)| (t, p, o, k, v))
            .collect()
    };
    let paced_records = dump(&paced);
    assert!(
        paced_records.iter().all(|r| r.3 >= before),
        "append times from the clock"
    );
    assert_eq!(strip(paced_records), strip(dump(&fast)));
    let refused = |extra: &[&str]| {
        let out = cmd(&paced, &[&args[..], extra].concat()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        refused(&["--rate", "10", "--out-dir", "x"]),
        (
            Some(2),
            "error: --rate appends live to the log: not with --out-dir or --delay\n".into()
        )
    );
    assert_eq!(
        refused(&["--rate", "0"]),
        (
            Some(2),
            "error: --rate must be at least 1 record per second\n".into()
        )
    );
}

#[test]
fn validate_reports_every_problem_at_once_and_exits_2() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/topology/broken.toml"
    );
    let out = common::braid()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["validate", "tests/fixtures/topology/broken.toml"])
        .output()
        .unwrap();
    assert!(std::path::Path::new(fixture).exists());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "");
    let f = "tests/fixtures/topology/broken.toml";
    assert_eq!(
        stderr(&out),
        format!(
            "{f}:5:7: source[0].key: invalid JSON pointer \"customer_id\": it must start with \"/\" (hint: \"/customer_id\")\n\
             {f}:9:9: source[1].topic: topic \"page.viewed\" is already a source (source[0]) (hint: declare each topic once; remove one of the [[source]] sections)\n\
             {f}:14:8: correlate.kind: unknown correlation kind \"sesion\" (hint: did you mean \"session\"? known kinds: session, complete, interval, tumbling, hopping)\n\
             {f}:17:20: time.out_of_orderness: invalid duration \"5 seconds\" (hint: use a number and a unit: 250ms, 5s, 30m, 2h, 1d)\n\
             {f}:18:1: time.grce: unknown field (hint: did you mean `grace`?)\n\
             {f}:21:12: output.journeys: output topic \"page.viewed\" is also a source (hint: braid would read its own output; choose another topic)\n\
             error: {f} is not a valid topology (6 problems)\n"
        )
    );
}

#[test]
fn on_a_fluvio_broker_topic_names_follow_fluvios_rule() {
    let f = "tests/fixtures/topology/fluvio_names.toml";
    let out = common::braid()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["validate", f])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let hint = "hint: on Fluvio, use lowercase letters, digits and '-' (not first or last), at most 63 characters, e.g. \"page-viewed\"";
    assert_eq!(
        stderr(&out),
        format!(
            "{f}:6:9: source[0].topic: invalid topic name \"page.viewed\": it contains '.', which Fluvio does not allow in topic names ({hint})\n\
             {f}:20:12: output.journeys: invalid topic name \"Customer-Journey\": it contains 'C', which Fluvio does not allow in topic names ({hint})\n\
             {f}:21:8: output.late: invalid topic name \"journey-late-\": Fluvio topic names cannot start or end with '-' ({hint})\n\
             error: {f} is not a valid topology (3 problems)\n"
        )
    );
}

#[test]
fn every_shipped_topology_validates_through_the_cli() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/topologies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let summary = ok(common::braid().arg("validate").arg(&path).output().unwrap());
            assert!(summary.contains("fingerprint"), "{summary}");
            n += 1;
        }
    }
    assert!(n >= 4, "one topology per correlation kind family: {n}");
}

/// The binary turns transparent huge pages off for itself (src/main.rs says why); the
/// kernel reports the setting in the process's status (Linux 5.0 and later).
#[test]
fn the_binary_runs_without_transparent_huge_pages() {
    let t = TempLog::new();
    ok(cmd(&t, &["topic", "create", "t"]).output().unwrap());
    ok(run_with_stdin(cmd(&t, &["produce", "t"]), b"{\"n\":1}\n"));
    let mut child = Running(
        cmd(&t, &["consume", "t", "--follow"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The record on its stdout shows the process is well past the start of `main`.
    let line = lines_of(child.0.stdout.take().unwrap())
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the record within 30 s");
    assert_eq!(line, "{\"n\":1}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    assert!(status.contains("\nTHP_enabled:\t0\n"), "{status}");
}
