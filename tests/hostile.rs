//! Hostile input end to end: a job over records crafted to break a decoder (invalid
//! UTF-8, deep nesting, a 50 MB record, a 1 MB key, impossible times, times before 1970,
//! wrong types, a repeated key member)
//! mixed with good ones keeps running, dead-letters each bad one with its reason, and
//! accounts for every record.

mod common;

use braid::log::WriterOptions;
use common::{TempLog, ok, read_topic};
use serde_json::Value;

const TOPOLOGY: &str = r#"
name = "hostile"
broker = { kind = "embedded", path = "@LOG@" }
state = "@STATE@"

[[source]]
topic = "events"
key = "/customer_id"
time = "/ts"
id = "/event_id"

[correlate]
kind = "session"
gap = "30m"

[output]
journeys = "out"
late = "out.late"
dead_letters = "out.dlq"
"#;

/// Writes `topology` (`@LOG@` and `@STATE@` filled in) and runs it `--bounded` to its end
/// with info logs: (the run summary, its stderr).
fn run_bounded(t: &TempLog, topology: &str) -> (Value, String) {
    let path = t.dir.path().join("topology.toml");
    let text = topology
        .replace("@LOG@", &t.path().display().to_string())
        .replace("@STATE@", &t.dir.path().join("state").display().to_string());
    std::fs::write(&path, text).unwrap();
    let summary = t.dir.path().join("summary.json");
    let out = t
        .braid()
        .env("BRAID_LOG", "info")
        .arg("run")
        .arg(&path)
        .args(["--bounded", "--summary-json"])
        .arg(&summary)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(out);
    let summary = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    (summary, stderr)
}

#[test]
fn hostile_records_are_dead_letters_and_the_job_goes_on() {
    let t = TempLog::new();
    t.log.create_topic("events", 1).unwrap();
    let good = |i: u32| {
        format!(
            r#"{{"customer_id":"c-{}","ts":{},"event_id":"e{i}"}}"#,
            i % 3,
            1_767_600_000_000u64 + u64::from(i) * 1_000
        )
    };
    let deep = "[".repeat(100_000);
    let huge = format!(
        r#"{{"customer_id":"c-1","ts":1,"pad":"{}"}}"#,
        "x".repeat(50 << 20)
    );
    let huge_len = huge.len();
    let long_key = format!(r#"{{"customer_id":"{}","ts":1}}"#, "k".repeat(1_000_000));
    let hostile: Vec<(Vec<u8>, &str)> = vec![
        (b"\xff\xfe{}".to_vec(), "not_utf8"),
        (deep.into_bytes(), "too_deep"),
        (huge.into_bytes(), "too_large"),
        (long_key.into_bytes(), "key_too_long"),
        (Vec::new(), "empty"),
        (
            br#"{"customer_id":"c-1","ts":-62167219200001}"#.to_vec(),
            "time_out_of_range",
        ),
        (
            br#"{"customer_id":"c-1","ts":"10000-01-01T00:00:00Z"}"#.to_vec(),
            "unparsable_time",
        ),
        (
            br#"{"customer_id":"c-1","ts":"NaN"}"#.to_vec(),
            "unparsable_time",
        ),
        (br#"{"customer_id":1.5,"ts":1}"#.to_vec(), "key_wrong_type"),
        (
            br#"{"customer_id":{"id":1},"ts":1}"#.to_vec(),
            "key_wrong_type",
        ),
        (
            br#"{"customer_id":"c-1","ts":true}"#.to_vec(),
            "time_wrong_type",
        ),
        (br#"["customer_id"]"#.to_vec(), "not_object"),
        (
            br#"{"customer_id":"c-9","ts":-86400000}"#.to_vec(),
            "time_out_of_range",
        ),
        (
            br#"{"customer_id":"c-9","ts":"1969-07-20T20:17:40Z"}"#.to_vec(),
            "time_out_of_range",
        ),
        (
            br#"{"customer_id":"c-0","customer_id":"c-8","ts":1767600000500}"#.to_vec(),
            "duplicate_member",
        ),
    ];
    // Accepted although odd: an integer key, a repeated member off the pointers' paths.
    let odd: Vec<Vec<u8>> = vec![
        br#"{"customer_id":42,"ts":1767600000000,"event_id":"o1"}"#.to_vec(),
        br#"{"customer_id":"c-8","ts":1767600000500,"event_id":"o3","n":1,"n":2}"#.to_vec(),
    ];
    let mut w = t.log.writer("events", 0, WriterOptions::default()).unwrap();
    let mut records: Vec<Vec<u8>> = Vec::new();
    for i in 0..30 {
        records.push(good(i).into_bytes());
        if let Some((bad, _)) = hostile.get(i as usize) {
            records.push(bad.clone());
        }
    }
    records.extend(odd);
    w.append(records.iter().map(|r| (Some(&b"k"[..]), r.as_slice())))
        .unwrap();
    drop(w);

    let (summary, _) = run_bounded(&t, TOPOLOGY);
    let n = |v: &Value| v.as_u64().unwrap();
    assert_eq!(n(&summary["records_in"]), records.len() as u64);

    let dlq: Vec<Value> = read_topic(&t.log, "out.dlq")
        .into_iter()
        .map(|(_, r)| serde_json::from_slice(&r.value).unwrap())
        .collect();
    let mut codes: Vec<String> = dlq
        .iter()
        .map(|d| {
            d["reason_code"]
                .as_str()
                .unwrap_or_else(|| panic!("{d}"))
                .to_owned()
        })
        .collect();
    codes.sort();
    let mut expected: Vec<&str> = hostile.iter().map(|(_, c)| *c).collect();
    expected.sort();
    assert_eq!(codes, expected);
    // The 50 MB record: read through by the source (never held whole), its size and
    // prefix in the dead letter.
    let too_large = dlq
        .iter()
        .find(|d| d["reason_code"] == "too_large")
        .unwrap();
    assert_eq!(
        too_large["reason"],
        format!("record of {huge_len} bytes exceeds the limit of 1048576 bytes")
    );
    assert_eq!(too_large["raw_len"], huge_len);
    assert!(
        too_large["raw"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"customer_id":"c-1","ts":1,"pad":"xxx"#)
    );
    // The 50 MB record is represented by its prefix, not copied whole.
    let largest = read_topic(&t.log, "out.dlq")
        .into_iter()
        .map(|(_, r)| r.value.len())
        .max()
        .unwrap();
    assert!(largest < 64 << 10, "{largest}");

    let journeys: Vec<Value> = read_topic(&t.log, "out")
        .into_iter()
        .map(|(_, r)| serde_json::from_slice(&r.value).unwrap())
        .collect();
    let events: u64 = journeys
        .iter()
        .map(|j| j["events"].as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(
        events + n(&summary["late"]) + n(&summary["duplicates"]) + n(&summary["dead_letters"]),
        n(&summary["records_in"]),
        "every record accounted for"
    );
    let keys: Vec<&str> = journeys
        .iter()
        .map(|j| j["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"42") && keys.contains(&"c-8") && !keys.contains(&"c-9"),
        "{keys:?}"
    );
}

#[test]
fn a_bot_key_gives_one_truncated_journey_published_in_parts_that_fit() {
    let t = TempLog::new();
    t.log.create_topic("events", 2).unwrap();
    // 30,000 events of one key a second apart: one session; 5,000 are kept.
    let records: Vec<Vec<u8>> = (0..30_000u64)
        .map(|i| {
            format!(
                r#"{{"customer_id":"bot","ts":{},"event_id":"b{i}","page":"/p/{}"}}"#,
                1_767_600_000_000u64 + i * 1_000,
                i % 97
            )
            .into_bytes()
        })
        .collect();
    for p in 0..2u32 {
        let mut w = t.log.writer("events", p, WriterOptions::default()).unwrap();
        w.append(
            records
                .iter()
                .skip(p as usize)
                .step_by(2)
                .map(|r| (Some(&b"bot"[..]), r.as_slice())),
        )
        .unwrap();
    }
    let limits = "\n[limits]\nmax_record_bytes = \"1KiB\"\nmax_output_record_bytes = \"64KiB\"\nmax_events_per_window = 5000\n";
    let (summary, _) = run_bounded(&t, &(TOPOLOGY.to_owned() + limits));
    assert_eq!(summary["records_in"], 30_000);

    let published = read_topic(&t.log, "out");
    let parts: Vec<Value> = published
        .iter()
        .map(|(_, r)| {
            assert!(r.value.len() <= (64 << 10) + 64, "{} bytes", r.value.len());
            serde_json::from_slice(&r.value).unwrap()
        })
        .collect();
    let n = parts.len();
    assert!(n > 5, "{n} parts");
    let mut ids: Vec<String> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part["id"], parts[0]["id"], "one journey");
        assert_eq!(part["part"], serde_json::json!({"index": i + 1, "of": n}));
        assert_eq!(part["truncated"], true);
        assert_eq!(part["dropped_events"], 25_000);
        assert_eq!(part["counts"]["events"], 5_000);
        ids.extend(
            part["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
    }
    // 5,000 distinct events, in time order across the parts.
    let numbers: Vec<u64> = ids.iter().map(|id| id[1..].parse().unwrap()).collect();
    assert_eq!(numbers.len(), 5_000);
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "in order, each once"
    );
}

#[test]
fn an_interval_join_dead_letters_what_a_bot_key_holds_beyond_the_limit() {
    let t = TempLog::new();
    for topic in ["clicks", "carts"] {
        t.log.create_topic(topic, 1).unwrap();
    }
    let record = |i: u64| {
        format!(
            r#"{{"customer_id":"bot","ts":{},"event_id":"x{i}"}}"#,
            1_767_600_000_000u64 + i
        )
        .into_bytes()
    };
    for (topic, from) in [("clicks", 0u64), ("carts", 100)] {
        let mut w = t.log.writer(topic, 0, WriterOptions::default()).unwrap();
        let records: Vec<Vec<u8>> = (from..from + 10).map(record).collect();
        w.append(records.iter().map(|r| (Some(&b"bot"[..]), r.as_slice())))
            .unwrap();
    }
    let (summary, _) = run_bounded(
        &t,
        r#"name = "join"
broker = { kind = "embedded", path = "@LOG@" }
state = "@STATE@"

[[source]]
topic = "clicks"
key = "/customer_id"
time = "/ts"
id = "/event_id"

[[source]]
topic = "carts"
key = "/customer_id"
time = "/ts"
id = "/event_id"

[correlate]
kind = "interval"

[[correlate.join]]
left = "clicks"
right = "carts"
before = "1m"
after = "1m"

[output]
journeys = "out"
dead_letters = "out.dlq"

[limits]
max_events_per_window = 12
"#,
    );
    let dlq: Vec<Value> = read_topic(&t.log, "out.dlq")
        .into_iter()
        .map(|(_, r)| serde_json::from_slice(&r.value).unwrap())
        .collect();
    // 20 events of one key, 12 held: 8 dead letters, each naming the limit.
    assert_eq!(dlq.len(), 8, "{dlq:?}");
    assert_eq!(summary["dead_letters"], 8);
    for d in &dlq {
        assert_eq!(d["reason_code"], "over_limit");
        assert_eq!(
            d["reason"],
            r#"key "bot" already holds 12 events of an interval join (limits.max_events_per_window): this event joins nothing"#
        );
    }
    // The held ones joined: every row pairs held events only.
    let rows = read_topic(&t.log, "out");
    assert!(!rows.is_empty());
}

const AHEAD: &str = r#"name = "ahead"
broker = { kind = "embedded", path = "@LOG@" }
state = "@STATE@"
shards = 1

[[source]]
topic = "fast"
key = "/customer_id"
time = "/ts"
id = "/event_id"

[[source]]
topic = "slow"
key = "/customer_id"
time = "/ts"
id = "/event_id"

[correlate]
kind = "session"
gap = "10m"

[output]
journeys = "out"
"#;

#[test]
fn too_many_open_windows_make_the_sources_ahead_wait_for_the_slowest() {
    // "fast" brings 40,000 customers' sessions an hour ahead of "slow", whose watermark
    // holds the job's back: their sessions cannot close until "slow" catches up.
    let run = |limit: Option<u64>| {
        let t = TempLog::new();
        for topic in ["fast", "slow"] {
            t.log.create_topic(topic, 1).unwrap();
        }
        let base = 1_767_600_000_000i64;
        for (topic, offset_ms, key) in [("fast", 0i64, "c"), ("slow", -3_600_000, "s")] {
            let mut w = t.log.writer(topic, 0, WriterOptions::default()).unwrap();
            let mut batch = Vec::new();
            for i in 0..40_000i64 {
                let key = if key == "c" {
                    format!("c{i}")
                } else {
                    "s".to_owned()
                };
                let r = format!(
                    r#"{{"customer_id":"{key}","ts":{},"event_id":"{topic}{i}"}}"#,
                    base + offset_ms + i * 100
                );
                batch.push((key, r));
            }
            // Appended in step: a thousand records of both topics per second of append
            // time.
            for (n, chunk) in batch.chunks(1_000).enumerate() {
                w.append_at(
                    chunk
                        .iter()
                        .map(|(k, r)| (Some(k.as_bytes()), r.as_bytes())),
                    1_000 * (n as i64 + 1),
                )
                .unwrap();
            }
        }
        let limits = limit.map_or(String::new(), |n| {
            format!("\n[limits]\nmax_open_windows_per_shard = {n}\n")
        });
        let (summary, stderr) = run_bounded(&t, &(AHEAD.to_owned() + &limits));
        let journeys = read_topic(&t.log, "out").len();
        (summary, journeys, stderr)
    };
    let (free, free_journeys, _) = run(None);
    let (held, held_journeys, stderr) = run(Some(5_000));
    let peak = |s: &Value| s["open_windows_peak"].as_u64().unwrap();
    assert!(peak(&free) > 35_000, "{free}");
    // The events in the shard's channel when it crosses the limit (at most 8 batches
    // of 1,024) overshoot it; the rest waits.
    assert!(peak(&held) < 5_000 + 10 * 1_024, "{held}");
    assert!(
        stderr.contains(
            "open windows exceed the limit per shard: partitions ahead of the job watermark wait"
        ),
        "{stderr}"
    );
    // Nothing is lost: the same journeys, every record accounted for.
    assert_eq!(held["records_in"], 80_000);
    assert_eq!(
        (held_journeys, held["late"].as_u64()),
        (free_journeys, free["late"].as_u64())
    );
}
