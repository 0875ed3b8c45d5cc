//! Operating a job: the Prometheus endpoint scraped over HTTP while a live job runs, its
//! figures checked against the records actually on the output topics; health endpoints;
//! JSON logs.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use braid::log::TailWatcher;
use common::{TempLog, ok};
use serde_json::Value;

const TOPOLOGY: &str = include_str!("fixtures/replay/customer_journey.toml");
const OUTPUTS: [&str; 3] = [
    "customer.journey",
    "customer.journey.late",
    "customer.journey.dlq",
];

/// The shared fixture with a long idle timeout, so that once the input is read nothing
/// more happens: the figures are then stable and can be compared with the topics.
fn topology(t: &TempLog) -> std::path::PathBuf {
    let text = TOPOLOGY
        .replace("@LOG@", &t.path().display().to_string())
        .replace("@STATE@", &t.dir.path().join("state").display().to_string())
        .replace("idle_timeout = \"30s\"", "idle_timeout = \"1h\"");
    let path = t.dir.path().join("topology.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// GET `path` over HTTP/1.1: (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Samples of one metric family: labels text (`{…}`) → value.
fn samples(body: &str, name: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            (labels.is_empty() || labels.starts_with('{'))
                .then(|| (labels.to_owned(), value.parse().unwrap()))
        })
        .collect()
}

fn sum(body: &str, name: &str) -> f64 {
    samples(body, name).values().sum()
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn scraped_figures_match_the_input_and_the_output_topics() {
    let t = TempLog::new();
    let generated = ok(t
        .braid()
        .args([
            "gen",
            "--events",
            "20000",
            "--customers",
            "2000",
            "--seed",
            "11",
            "--no-fulfilment",
        ])
        .output()
        .unwrap());
    let generated: Value = serde_json::from_str(&generated).unwrap();
    let input = generated["records"].as_f64().unwrap();
    let topo = topology(&t);
    // Created up front (as the job would, with the first source's 4 partitions) so that
    // their directories can be watched from the start.
    for topic in OUTPUTS {
        t.log.create_topic(topic, 4).unwrap();
    }
    let addr = free_port();
    let mut child = t
        .braid()
        .env("BRAID_LOG", "info")
        .args(["run"])
        .arg(&topo)
        .args(["--metrics-addr", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Await the endpoint: the job logs it once it is listening.
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the job announces its metrics endpoint");
        if line.contains("serving /metrics") {
            break;
        }
    }
    assert_eq!(
        get(addr, "/healthz"),
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );

    // Await the output: after each publication, scrape until every input record is read
    // and published (nothing else happens afterwards: no partition goes idle for 1 h).
    let mut watcher = TailWatcher::new().unwrap();
    for topic in OUTPUTS {
        for p in 0..4 {
            watcher.watch(&t.log.partition_dir(topic, p)).unwrap();
        }
    }
    let body = loop {
        assert!(
            Instant::now() < deadline,
            "the job did not read its input in time"
        );
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let read = sum(&body, "braid_records_in_total");
        let lag = sum(&body, "braid_consumer_lag");
        let published = sum(&body, "braid_output_records_total");
        let on_topics: usize = OUTPUTS
            .iter()
            .map(|topic| common::read_topic(&t.log, topic).len())
            .sum();
        if read == input && lag == 0.0 && published == on_topics as f64 && published > 0.0 {
            break body;
        }
        // Woken by the next publication (the timeout only bounds a missed wake-up).
        watcher.wait_timeout(Duration::from_secs(2));
    };
    assert_eq!(
        get(addr, "/readyz"),
        ("HTTP/1.1 200 OK".into(), "ready\n".into())
    );

    // Output counters equal the records found on each topic, per kind.
    let outputs = samples(&body, "braid_output_records_total");
    let on = |topic: &str| common::read_topic(&t.log, topic).len() as f64;
    let kind = |k: &str| {
        outputs
            .iter()
            .find(|(labels, _)| labels.contains(&format!("kind=\"{k}\"")))
            .map_or(0.0, |(_, v)| *v)
    };
    assert_eq!(kind("journey"), on("customer.journey"));
    assert_eq!(kind("late_arrival"), on("customer.journey.late"));
    assert_eq!(kind("dead_letter"), on("customer.journey.dlq"));
    // One lateness observation per late report; one latency observation per record.
    assert_eq!(
        sum(&body, "braid_lateness_ms_count"),
        on("customer.journey.late")
    );
    assert_eq!(
        sum(&body, "braid_end_to_end_latency_ms_count"),
        kind("journey") + kind("late_arrival") + kind("dead_letter")
    );
    // Positions are the end offsets; the job watermark is a real time.
    assert_eq!(sum(&body, "braid_source_position"), input);
    assert!(sum(&body, "braid_watermark_ms") > 1.7e12);
    assert!(sum(&body, "braid_checkpoints_total") >= 1.0);
    assert_eq!(sum(&body, "braid_outbox_depth"), 0.0);
    // Key lookups: new customers and returning ones, nothing evicted at this size.
    let lookups = samples(&body, "braid_state_cache_lookups_total");
    let result = |r: &str| {
        lookups
            .iter()
            .find(|(labels, _)| labels.contains(&format!("result=\"{r}\"")))
            .map_or(0.0, |(_, v)| *v)
    };
    assert!(result("new") > 0.0 && result("hit") > 0.0, "{lookups:?}");
    assert_eq!(result("read_back"), 0.0, "{lookups:?}");

    // SIGTERM: a clean stop.
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Its stderr closes when it exits.
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(stop_deadline.saturating_duration_since(Instant::now())) {
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("no exit within 30 s of SIGTERM");
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn json_logs_parse_and_carry_counts() {
    let t = TempLog::new();
    ok(t.braid()
        .args([
            "gen",
            "--events",
            "5000",
            "--customers",
            "500",
            "--seed",
            "3",
            "--no-fulfilment",
        ])
        .output()
        .unwrap());
    let topo = topology(&t);
    let out = t
        .braid()
        .env("BRAID_LOG", "info")
        .args(["--log-format", "json", "run"])
        .arg(&topo)
        .arg("--bounded")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    // Dead letters are summarised, not logged one line each: one warning with the count
    // and the coordinates of the last one.
    let dead: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("dead letters written"))
        })
        .collect();
    assert_eq!(dead.len(), 1, "{stderr}");
    // Every line about a record carries its coordinates as fields.
    let coordinates = |l: &Value| {
        let f = &l["fields"];
        assert!(f["count"].as_u64().unwrap() > 0, "{l}");
        assert!(f["topic"].is_string() && f["key"].is_string(), "{l}");
        assert!(f["partition"].is_u64() && f["offset"].is_u64(), "{l}");
        assert!(f["reason"].is_string(), "{l}");
    };
    coordinates(dead[0]);
    let late: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("late arrivals reported"))
        })
        .collect();
    assert!(!late.is_empty(), "{stderr}");
    late.iter().for_each(|l| coordinates(l));
    assert!(
        late[0]["fields"]["reason"]
            .as_str()
            .unwrap()
            .ends_with(" ms late")
    );
}

#[test]
fn readyz_turns_unready_while_checkpoints_stall_and_ready_again_after() {
    let t = TempLog::new();
    ok(t.braid()
        .args([
            "gen",
            "--events",
            "3000",
            "--customers",
            "300",
            "--seed",
            "4",
        ])
        .arg("--no-fulfilment")
        .output()
        .unwrap());
    let topo = topology(&t);
    let text = std::fs::read_to_string(&topo).unwrap();
    std::fs::write(
        &topo,
        text.replace("max_records = 2000", "interval = \"100ms\""),
    )
    .unwrap();
    let addr = free_port();
    // The third commit waits 7 s; readiness allows max(3 × 100 ms, 5 s) without one.
    let mut child = t
        .braid()
        .env("BRAID_LOG", "info,braid=debug")
        .env("BRAID_STALL_AT", "commit:3:7000")
        .args(["--log-format", "json", "run"])
        .arg(&topo)
        .args(["--metrics-addr", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let await_line = |what: &str, matches: &dyn Fn(&Value) -> bool| loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line: {what}"));
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && matches(&v["fields"])
        {
            break;
        }
    };
    let message = |m: &'static str| move |f: &Value| f["message"] == m;
    await_line("stalling", &message("BRAID_STALL_AT reached: stalling"));
    let stalled_at = Instant::now();
    // Commit 2 was a moment ago: still ready.
    assert_eq!(get(addr, "/readyz").0, "HTTP/1.1 200 OK");
    // Readiness depends on time passing, nothing to await but the clock.
    std::thread::sleep(
        (stalled_at + Duration::from_millis(5_500)).saturating_duration_since(Instant::now()),
    );
    let (status, body) = get(addr, "/readyz");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(
        body.starts_with("not ready: last checkpoint ")
            && body.ends_with(" ms ago (limit 5000 ms)\n"),
        "{body}"
    );
    assert_eq!(
        get(addr, "/healthz").0,
        "HTTP/1.1 200 OK",
        "alive all along"
    );
    await_line("commit 3", &|f: &Value| {
        f["message"] == "checkpoint committed" && f["epoch"] == 3
    });
    assert_eq!(
        get(addr, "/readyz"),
        ("HTTP/1.1 200 OK".into(), "ready\n".into())
    );
    let _ = child.kill();
    let _ = child.wait();
}
