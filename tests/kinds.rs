//! Every correlation kind end to end: the shipped topology of each kind runs `--bounded`
//! over `braid gen` data; the accounting invariant holds from the summary and the output
//! topics, and records have their documented shape. (`session` is modelled in depth in
//! the engine's tests and `tests/run.rs`; here its shipped file runs as it is.)

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::{TempLog, ok, read_topic};
use serde_json::Value;

/// The shipped topology `file` pointed at the temporary log and state, with its
/// `[correlate]` section replaced by `correlate` when given.
fn shipped(t: &TempLog, file: &str, correlate: Option<&str>) -> PathBuf {
    let text = std::fs::read_to_string(format!("topologies/{file}")).unwrap();
    let name = file.trim_end_matches(".toml");
    let state = t.dir.path().join("state").join(name);
    let mut text = text
        .replace(
            r#"path = "data/log""#,
            &format!("path = {:?}", t.path().display().to_string()),
        )
        .lines()
        .map(|l| {
            if l.starts_with("state = ") {
                format!("state = {:?}", state.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(c) = correlate {
        let from = text.find("[correlate]").unwrap();
        let to = text.find("[time]").unwrap();
        text.replace_range(from..to, &format!("[correlate]\n{c}\n\n"));
    }
    let path = t.dir.path().join(file);
    std::fs::write(&path, text).unwrap();
    path
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
            "5",
            "--no-fulfilment",
        ])
        .output()
        .unwrap());
    serde_json::from_str(&out).unwrap()
}

fn values(t: &TempLog, topic: &str) -> Vec<(Option<String>, Value)> {
    read_topic(&t.log, topic)
        .into_iter()
        .map(|(_, r)| {
            let key = r.key.map(|k| String::from_utf8(k).unwrap());
            (key, serde_json::from_slice(&r.value).unwrap())
        })
        .collect()
}

fn run_bounded(t: &TempLog, topology: &PathBuf) -> Value {
    let summary_path = t.dir.path().join("summary.json");
    ok(t.braid()
        .arg("run")
        .arg(topology)
        .args(["--bounded", "--summary-json"])
        .arg(&summary_path)
        .output()
        .unwrap());
    serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap()
}

/// What a shipped topology wrote, run `--bounded` over [`generate`]'s data: its
/// summary and its three output topics (`{output}`, `{output}.late`, `{output}.dlq`).
struct Ran {
    generated: Value,
    summary: Value,
    records: Vec<(Option<String>, Value)>,
    late: Vec<(Option<String>, Value)>,
    dlq: Vec<(Option<String>, Value)>,
}

fn run_shipped(file: &str, correlate: Option<&str>, output: &str) -> Ran {
    let t = TempLog::new();
    let generated = generate(&t);
    let topology = shipped(&t, file, correlate);
    let summary = run_bounded(&t, &topology);
    assert_eq!(n(&summary["records_in"]), n(&generated["records"]));
    let records = values(&t, output);
    assert_eq!(records.len() as u64, n(&summary["journeys"]));
    Ran {
        late: values(&t, &format!("{output}.late")),
        dlq: values(&t, &format!("{output}.dlq")),
        generated,
        summary,
        records,
    }
}

/// (topic, partition, offset) of an event inside a record.
fn coordinates(e: &Value) -> (String, u64, u64) {
    (
        e["topic"].as_str().unwrap().to_string(),
        e["partition"].as_u64().unwrap(),
        e["offset"].as_u64().unwrap(),
    )
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Checks every window record's shape; returns the events they hold, counted once per
/// record, and the distinct (topic, partition, offset) among them.
fn check_windows(
    records: &[(Option<String>, Value)],
    size: i64,
    hop: i64,
) -> (u64, BTreeSet<(String, u64, u64)>) {
    let mut in_records = 0;
    let mut distinct = BTreeSet::new();
    let mut windows = BTreeSet::new();
    for (key, r) in records {
        assert_eq!(r["kind"], "window", "{r}");
        assert_eq!(key.as_deref(), r["key"].as_str());
        let (start, end) = (ms(&r["window"]["start"]), ms(&r["window"]["end"]));
        assert_eq!((end - start, start.rem_euclid(hop)), (size, 0), "{r}");
        assert!(
            windows.insert((key.clone(), start)),
            "one record per window"
        );
        assert_eq!(r["id"].as_str().unwrap().len(), 32);
        let events = r["events"].as_array().unwrap();
        assert!(!events.is_empty());
        let times: Vec<i64> = events.iter().map(|e| ms(&e["time"])).collect();
        assert!(times.is_sorted(), "chronological: {r}");
        assert!(times.iter().all(|&t| start <= t && t < end), "{r}");
        let counted: u64 = r["counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(counted, events.len() as u64);
        for e in events {
            assert!(e["payload"].is_object());
            distinct.insert(coordinates(e));
        }
        in_records += events.len() as u64;
    }
    (in_records, distinct)
}

#[test]
fn hourly_activity_tumbling_accounts_for_every_record() {
    let Ran {
        generated,
        summary,
        records,
        late,
        dlq,
    } = run_shipped("hourly_activity.toml", None, "customer.hourly");
    assert_eq!(
        n(&summary["dead_letters"]),
        n(&generated["classes"]["poison"])
    );
    assert_eq!(late.len() as u64, n(&summary["late"]));
    assert_eq!(dlq.len() as u64, n(&summary["dead_letters"]));
    let (in_records, distinct) = check_windows(&records, 3_600_000, 3_600_000);
    // Tumbling: every accepted event is in exactly one record.
    assert_eq!(in_records, distinct.len() as u64);
    assert_eq!(
        in_records + late.len() as u64 + n(&summary["duplicates"]) + dlq.len() as u64,
        n(&summary["records_in"])
    );
    assert!(n(&summary["late"]) > 0, "the dataset has late events");
    assert!(
        n(&summary["duplicates"]) > 0,
        "the dataset has re-sent events"
    );
    for (_, l) in &late {
        assert_eq!(l["kind"], "late_arrival");
    }
    // End of input closed the last windows, and says so.
    assert!(
        records
            .iter()
            .any(|(_, r)| r["cut_by_replay_boundary"] == true)
    );
}

#[test]
fn customer_journey_puts_every_record_in_exactly_one_place() {
    let Ran {
        generated,
        summary,
        records: journeys,
        late,
        dlq,
    } = run_shipped("customer_journey.toml", None, "customer.journey");
    assert_eq!(late.len() as u64, n(&summary["late"]));
    assert_eq!(dlq.len() as u64, n(&generated["classes"]["poison"]));
    let mut distinct = BTreeSet::new();
    let mut in_journeys = 0u64;
    for (key, j) in &journeys {
        assert_eq!(j["kind"], "journey", "{j}");
        assert_eq!(key.as_deref(), j["key"].as_str());
        let events = j["events"].as_array().unwrap();
        let times: Vec<i64> = events.iter().map(|e| ms(&e["time"])).collect();
        assert!(times.is_sorted(), "chronological: {j}");
        // Consecutive events at most the gap (30 minutes) apart; the window is
        // [first, last + gap).
        assert!(times.windows(2).all(|w| w[1] - w[0] <= 1_800_000), "{j}");
        assert_eq!(ms(&j["window"]["start"]), times[0]);
        assert_eq!(ms(&j["window"]["end"]), times[times.len() - 1] + 1_800_000);
        for e in events {
            assert!(e["payload"].is_object());
            distinct.insert(coordinates(e));
        }
        in_journeys += events.len() as u64;
    }
    assert_eq!(
        in_journeys,
        distinct.len() as u64,
        "an event in two journeys"
    );
    assert_eq!(
        in_journeys + late.len() as u64 + n(&summary["duplicates"]) + dlq.len() as u64,
        n(&summary["records_in"])
    );
    assert!(n(&summary["late"]) > 0 && n(&summary["duplicates"]) > 0);
}

#[test]
fn hopping_windows_hold_each_accepted_event_at_least_once() {
    let Ran {
        summary,
        records,
        late,
        dlq,
        ..
    } = run_shipped(
        "hourly_activity.toml",
        Some("kind = \"hopping\"\nsize = \"1h\"\nhop = \"20m\""),
        "customer.hourly",
    );
    let (in_records, distinct) = check_windows(&records, 3_600_000, 1_200_000);
    // Up to three windows per event; counted once, the accounting is exact.
    assert!(in_records > distinct.len() as u64);
    assert!(in_records <= 3 * distinct.len() as u64);
    assert_eq!(
        distinct.len() as u64 + late.len() as u64 + n(&summary["duplicates"]) + dlq.len() as u64,
        n(&summary["records_in"])
    );
}

#[test]
fn order_fulfillment_accounts_for_every_part_and_names_what_is_missing() {
    let t = TempLog::new();
    ok(t.braid()
        .args([
            "gen",
            "--events",
            "3000",
            "--customers",
            "200",
            "--seed",
            "7",
        ])
        .output()
        .unwrap());
    let topology = shipped(&t, "order_fulfillment.toml", None);
    let summary = run_bounded(&t, &topology);
    let sources = [
        "payment.processed",
        "inventory.reserved",
        "shipment.created",
    ];
    let input: usize = sources.iter().map(|s| read_topic(&t.log, s).len()).sum();
    assert_eq!(n(&summary["records_in"]), input as u64);

    let records = values(&t, "order.fulfillment");
    let late = values(&t, "order.fulfillment.late");
    let dlq = values(&t, "order.fulfillment.dlq");
    assert_eq!(records.len() as u64, n(&summary["journeys"]));
    assert_eq!(late.len() as u64, n(&summary["late"]));
    let mut ids = BTreeSet::new();
    let mut distinct = BTreeSet::new();
    let mut in_records = 0;
    let mut kinds = std::collections::BTreeMap::new();
    for (key, r) in &records {
        let kind = r["kind"].as_str().unwrap();
        *kinds.entry(kind).or_insert(0) += 1;
        assert_eq!(key.as_deref(), r["key"].as_str());
        assert!(ids.insert(r["id"].as_str().unwrap().to_string()), "{r}");
        let events = r["events"].as_array().unwrap();
        let times: Vec<i64> = events.iter().map(|e| ms(&e["time"])).collect();
        assert!(times.is_sorted(), "chronological: {r}");
        assert!(ms(&r["window"]["start"]) <= times[times.len() - 1]);
        let elapsed = times[times.len() - 1] - times.iter().min().unwrap();
        assert_eq!(r["elapsed_ms"].as_i64(), Some(elapsed), "{r}");
        let counts = r["counts"].as_object().unwrap();
        assert_eq!(
            counts.values().map(|c| c.as_u64().unwrap()).sum::<u64>(),
            events.len() as u64
        );
        let missing: Vec<&str> = r["missing"]
            .as_array()
            .map(|m| m.iter().map(|t| t.as_str().unwrap()).collect())
            .unwrap_or_default();
        match kind {
            "complete" => {
                assert!(missing.is_empty(), "{r}");
                assert!(
                    sources.iter().all(|s| counts[*s].as_u64() >= Some(1)),
                    "{r}"
                );
            }
            "incomplete" => {
                assert!(!missing.is_empty(), "{r}");
                // Parts past their deadline are reported late, never listed here.
                assert!(missing.iter().all(|m| counts[*m] == 0), "{r}");
                assert!(r["waited_ms"].as_i64().unwrap() > 0);
            }
            other => panic!("unexpected kind {other}"),
        }
        for e in events {
            distinct.insert((
                e["topic"].as_str().unwrap().to_string(),
                e["partition"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
            ));
        }
        in_records += events.len() as u64;
    }
    assert_eq!(in_records, distinct.len() as u64, "each part in one record");
    assert_eq!(
        in_records + late.len() as u64 + n(&summary["duplicates"]) + dlq.len() as u64,
        n(&summary["records_in"])
    );
    assert!(
        kinds["complete"] > 0 && kinds["incomplete"] > 0,
        "{kinds:?}"
    );
    assert!(
        !late.is_empty(),
        "delayed parts arrive after their order was reported"
    );
    for (_, l) in &late {
        if let Some(id) = l["would_join"].as_str() {
            assert!(ids.contains(id), "late part names an emitted record: {l}");
        }
    }
}

#[test]
fn click_cart_order_joins_and_accounts_for_every_event() {
    let Ran {
        summary,
        records,
        late,
        dlq,
        ..
    } = run_shipped("click_cart_order.toml", None, "customer.joins");
    let topics = ["page.viewed", "cart.updated", "order.placed"];
    let mut distinct = BTreeSet::new();
    let (mut matched, mut abandoned) = (0, 0);
    for (key, r) in &records {
        assert_eq!(r["kind"], "join");
        assert_eq!(key.as_deref(), r["key"].as_str());
        let events = r["events"].as_array().unwrap();
        assert_eq!(events.len(), 3);
        // Inner first link, left second: a view and a cart always, an order maybe.
        let (view, cart) = (&events[0], &events[1]);
        let (v, c) = (ms(&view["time"]), ms(&cart["time"]));
        assert!((v - c).abs() <= 300_000, "{r}");
        if events[2].is_null() {
            abandoned += 1;
            assert_eq!(r["matched"], false);
        } else {
            matched += 1;
            assert_eq!(r["matched"], true);
            let o = ms(&events[2]["time"]);
            assert!(c <= o && o <= c + 600_000, "{r}");
        }
        for (e, topic) in events.iter().zip(topics) {
            if !e.is_null() {
                assert_eq!(e["topic"], topic);
                distinct.insert((topic, e["partition"].as_u64(), e["offset"].as_u64()));
            }
        }
    }
    assert!(matched > 0 && abandoned > 0, "{matched} {abandoned}");
    // Every event in a record, late, a duplicate, unjoined or a dead letter; only one.
    assert_eq!(
        distinct.len() as u64
            + late.len() as u64
            + n(&summary["duplicates"])
            + n(&summary["unjoined"])
            + dlq.len() as u64,
        n(&summary["records_in"])
    );
    assert!(n(&summary["unjoined"]) > 0, "views without a cart update");
}
