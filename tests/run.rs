//! `braid run --bounded` end to end on generated data: accounting, outputs, shard-count
//! independence.

mod common;

use std::collections::BTreeMap;

use common::{TempLog, ok};
use serde_json::Value;

fn topology(t: &TempLog, name: &str, shards: usize, suffix: &str) -> std::path::PathBuf {
    let path = t.dir.path().join(format!("{name}{suffix}.toml"));
    let text = format!(
        r#"
name = "{name}"
broker = {{ kind = "embedded", path = "{log}" }}
state = "{state}"
shards = {shards}

[[source]]
topic = "page.viewed"
key = "/customer_id"
time = "/ts"
id = "/event_id"

[[source]]
topic = "cart.updated"
key = "/customer_id"
time = "/ts"
id = "/event_id"

[[source]]
topic = "order.placed"
key = "/customer_id"
time = "/ts"
id = "/event_id"

[correlate]
kind = "session"
gap = "30m"

[time]
out_of_orderness = "5s"

[output]
journeys = "journeys{suffix}"
late = "late{suffix}"
dead_letters = "dlq{suffix}"
"#,
        log = t.path().display(),
        state = t
            .dir
            .path()
            .join("state")
            .join(format!("{name}{suffix}"))
            .display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn all_values(t: &TempLog, topic: &str) -> Vec<(Option<String>, Value)> {
    let meta = t.log.topic(topic).unwrap();
    let mut out = Vec::new();
    for p in 0..meta.partitions {
        for r in t
            .log
            .reader(topic, p, 0)
            .unwrap()
            .read_batch(usize::MAX)
            .unwrap()
        {
            let key = r.key.map(|k| String::from_utf8(k).unwrap());
            out.push((key, serde_json::from_slice(&r.value).unwrap()));
        }
    }
    out
}

fn generate(t: &TempLog) -> Value {
    let out = ok(t
        .braid()
        .args([
            "gen",
            "--events",
            "4000",
            "--customers",
            "150",
            "--seed",
            "3",
            "--no-fulfilment",
        ])
        .output()
        .unwrap());
    serde_json::from_str(&out).unwrap()
}

#[test]
fn bounded_run_accounts_for_every_record() {
    let t = TempLog::new();
    let generated = generate(&t);
    let topo = topology(&t, "journeys-test", 2, "");
    let summary_path = t.dir.path().join("summary.json");
    let line = ok(t
        .braid()
        .arg("run")
        .arg(&topo)
        .args(["--bounded", "--summary-json"])
        .arg(&summary_path)
        .output()
        .unwrap());
    assert!(line.starts_with("journeys-test: "), "{line}");
    let summary: Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    let n = |v: &Value| v.as_u64().unwrap();

    assert_eq!(n(&summary["records_in"]), n(&generated["records"]));
    assert_eq!(
        n(&summary["dead_letters"]),
        n(&generated["classes"]["poison"])
    );
    assert_eq!(
        n(&summary["duplicates"]),
        n(&generated["classes"]["duplicate"])
    );

    let journeys = all_values(&t, "journeys");
    let late = all_values(&t, "late");
    let dlq = all_values(&t, "dlq");
    assert_eq!(journeys.len() as u64, n(&summary["journeys"]));
    assert_eq!(late.len() as u64, n(&summary["late"]));
    assert_eq!(dlq.len() as u64, n(&summary["dead_letters"]));
    // Accounting: every record is in exactly one journey, late report, duplicate or dead letter.
    let in_journeys: u64 = journeys
        .iter()
        .map(|(_, j)| j["events"].as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(
        in_journeys + late.len() as u64 + n(&summary["duplicates"]) + dlq.len() as u64,
        n(&summary["records_in"])
    );
    // Journeys are keyed by their customer, events in chronological order.
    for (key, j) in &journeys {
        assert_eq!(j["kind"], "journey");
        assert_eq!(key.as_deref(), j["key"].as_str());
        let times: Vec<&str> = j["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["time"].as_str().unwrap())
            .collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted);
    }
    for (_, l) in &late {
        assert_eq!(l["kind"], "late_arrival");
    }
    for (_, d) in &dlq {
        assert_eq!(d["kind"], "dead_letter");
    }
    assert!(n(&summary["late"]) > 0, "the dataset has late events");
    // The CPU split scripts/bench.sh prints: these five stages, in ms.
    let cpu = summary["cpu"].as_object().unwrap();
    let mut stages: Vec<&str> = cpu.keys().map(String::as_str).collect();
    stages.sort_unstable();
    assert_eq!(
        stages,
        [
            "committer_ms",
            "other_ms",
            "publisher_ms",
            "shards_ms",
            "source_ms"
        ]
    );
    assert!(cpu.values().all(Value::is_u64), "{cpu:?}");
    // The latency's three parts cover every journey; per journey they add up to its
    // latency, so no part's maximum exceeds the whole's and together they reach it.
    let whole = &summary["latency_ms"];
    let parts = ["checkpoint", "commit", "publish"].map(|p| &summary["latency_parts_ms"][p]);
    for part in parts {
        assert_eq!(n(&part["records"]), n(&summary["journeys"]), "{part}");
        assert!(n(&part["max"]) <= n(&whole["max"]), "{part} within {whole}");
    }
    assert!(parts.iter().map(|p| n(&p["max"])).sum::<u64>() >= n(&whole["max"]));

    // The benchmarks' baseline reads and parses the same records.
    let scan_path = t.dir.path().join("scan.json");
    ok(t.braid()
        .arg("scan")
        .arg(&topo)
        .arg("--summary-json")
        .arg(&scan_path)
        .output()
        .unwrap());
    let scan: Value = serde_json::from_slice(&std::fs::read(&scan_path).unwrap()).unwrap();
    assert_eq!(n(&scan["records"]), n(&generated["records"]));
    assert_eq!(
        n(&scan["not_json"]),
        n(&generated["poison"]["not_json"]) + n(&generated["poison"]["truncated"])
    );
}

#[test]
fn results_do_not_depend_on_the_shard_count() {
    let t = TempLog::new();
    generate(&t);
    let mut per_shards = Vec::new();
    for shards in [1, 4] {
        let suffix = format!("-{shards}");
        let topo = topology(&t, "shards-test", shards, &suffix);
        ok(t.braid()
            .arg("run")
            .arg(&topo)
            .arg("--bounded")
            .output()
            .unwrap());
        // Per key, the records in emission order (a key's records share a partition).
        let mut by_key: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for topic in ["journeys", "late"] {
            for (key, v) in all_values(&t, &format!("{topic}{suffix}")) {
                by_key
                    .entry(format!("{topic}/{}", key.unwrap()))
                    .or_default()
                    .push(v);
            }
        }
        per_shards.push(by_key);
    }
    assert!(!per_shards[0].is_empty());
    assert_eq!(per_shards[0], per_shards[1]);
}

#[test]
fn live_run_emits_when_the_watermark_passes_and_stops_on_sigterm() {
    use std::time::{Duration, Instant};
    let t = TempLog::new();
    for topic in ["page.viewed", "cart.updated", "order.placed"] {
        t.log.create_topic(topic, 1).unwrap();
    }
    t.log.create_topic("journeys-live", 1).unwrap();
    let topo = topology(&t, "live", 2, "-live");
    // Silent partitions must stop holding the watermark back quickly in this test.
    let text = std::fs::read_to_string(&topo).unwrap().replace(
        "out_of_orderness = \"5s\"",
        "out_of_orderness = \"1s\"\nidle_timeout = \"100ms\"",
    );
    std::fs::write(&topo, text).unwrap();
    let job = t
        .braid()
        .arg("run")
        .arg(&topo)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut watcher = braid::log::TailWatcher::new().unwrap();
    watcher
        .watch(&t.log.partition_dir("journeys-live", 0))
        .unwrap();

    // Customer a's session, then an event two hours later that moves the watermark past it.
    let events = [
        r#"{"customer_id":"a","ts":"2026-01-05T08:00:00Z","event_id":"1"}"#,
        r#"{"customer_id":"a","ts":"2026-01-05T08:10:00Z","event_id":"2"}"#,
        r#"{"customer_id":"b","ts":"2026-01-05T10:00:00Z","event_id":"3"}"#,
    ];
    common::ok(common::run_with_stdin(
        {
            let mut c = t.braid();
            c.args(["produce", "page.viewed", "--key-pointer", "/customer_id"]);
            c
        },
        (events.join("\n") + "\n").as_bytes(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let journey = loop {
        let recs = t
            .log
            .reader("journeys-live", 0, 0)
            .unwrap()
            .read_batch(10)
            .unwrap();
        if let Some(r) = recs.first() {
            break serde_json::from_slice::<Value>(&r.value).unwrap();
        }
        assert!(Instant::now() < deadline, "no journey within 60 s");
        watcher.wait_timeout(Duration::from_secs(1));
    };
    assert_eq!(journey["key"], "a");
    assert_eq!(journey["events"].as_array().unwrap().len(), 2);

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &job.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(job.wait_with_output()));
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("braid run did not stop within 30 s of SIGTERM")
        .unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        common::stderr(&out)
    );
    // b's session is still open: a stopped live job does not emit it.
    assert_eq!(
        t.log.partition_info("journeys-live", 0).unwrap().end_offset,
        1
    );
}
