//! Operating a job: the Prometheus endpoint scraped over HTTP while a live job runs, its
//! figures checked against the records actually on the output topics; health endpoints;
//! JSON logs.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use braid::log::TailWatcher;
use common::{Running, TempLog, lines_of, ok};
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

/// GET `path` with an HTTP client (ureq): (status code, body). /metrics must say it is
/// Prometheus' text format.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    if path == "/metrics" {
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
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
    // Output topics created up front (as the job would, with the first source's 4
    // partitions) so that their directories can be watched from the start.
    let job = LiveJob::start(
        (20_000, 2_000, 11),
        &[],
        |text| text,
        |t| {
            for topic in OUTPUTS {
                t.log.create_topic(topic, 4).unwrap();
            }
        },
    );
    let (t, addr, input, deadline) = (&job.t, job.addr, job.input, job.deadline);
    // The endpoint: the job logs it once it is listening.
    job.await_line("the metrics endpoint", &|f: &Value| {
        f["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("serving /metrics"))
    });
    assert_eq!(get(addr, "/healthz"), (200, "ok\n".into()));

    // Await the output: after each publication, scrape until every input record is read
    // and published (nothing else happens afterwards: no partition goes idle for 1 h).
    let mut watcher = TailWatcher::new().unwrap();
    for topic in OUTPUTS {
        for p in 0..4 {
            watcher.watch(&t.log.partition_dir(topic, p)).unwrap();
        }
    }
    // What the previous round saw, for the message if the figures never agree.
    let mut last = String::from("no scrape yet");
    let body = loop {
        assert!(
            Instant::now() < deadline,
            "the job did not read and publish its input in time; last round: {last}"
        );
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        let read = sum(&body, "braid_records_in_total");
        let lag = sum(&body, "braid_consumer_lag");
        let published = sum(&body, "braid_output_records_total");
        // Each output topic read once a round: [journeys, late, dead letters].
        let on_each = OUTPUTS.map(|topic| common::read_topic(&t.log, topic).len());
        let on_topics: usize = on_each.iter().sum();
        // A scrape reads one family after another while the publisher updates them: the
        // latency count must have caught up with the output counters too.
        let latencies = sum(&body, "braid_end_to_end_latency_ms_count");
        // Every input record read is not yet every record published: the last reads'
        // output waits in the shards for the next checkpoint. A late report is counted
        // (lateness) when a shard makes it, so the late topic catching up with that count
        // is what says the last checkpoint is out.
        let late_made = sum(&body, "braid_lateness_ms_count");
        let late_on_topic = on_each[1];
        if read == input
            && lag == 0.0
            && published == on_topics as f64
            && published > 0.0
            && latencies == published
            && late_made == late_on_topic as f64
        {
            break body;
        }
        last = format!(
            "read {read} of {input}, lag {lag}, published {published}, on the topics {on_topics}, latencies {latencies}, late reports made {late_made}, on the late topic {late_on_topic}"
        );
        // Woken by the next publication (the timeout only bounds a missed wake-up).
        watcher.wait_timeout(Duration::from_secs(2));
    };
    assert_eq!(get(addr, "/readyz"), (200, "ready\n".into()));

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
    // One lateness observation per late report (the wait above already required it: a
    // job that counts lateness apart from its reports fails there, at the deadline, with
    // both figures); one latency observation per record.
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
    // Nothing failed, so nothing was retried.
    assert_eq!(sum(&body, "braid_sink_errors_total"), 0.0);
    assert_eq!(sum(&body, "braid_sink_retries_total"), 0.0);
    assert_eq!(sum(&body, "braid_source_errors_total"), 0.0);
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
    assert!(job.stop().success());
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

/// A live job with the endpoint on and JSON logs, for the readiness tests.
struct LiveJob {
    t: TempLog,
    /// Records generated into the sources.
    input: f64,
    child: Running,
    addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    deadline: Instant,
}

impl LiveJob {
    /// Generates (events, customers, seed) and starts the job with `env` set; `edit`
    /// changes the topology text, `prepare` the log before the job starts.
    fn start(
        (events, customers, seed): (u32, u32, u32),
        env: &[(&str, &str)],
        edit: impl Fn(String) -> String,
        prepare: impl FnOnce(&TempLog),
    ) -> LiveJob {
        let t = TempLog::new();
        let generated = ok(t
            .braid()
            .arg("gen")
            .args(["--events", &events.to_string()])
            .args(["--customers", &customers.to_string()])
            .args(["--seed", &seed.to_string(), "--no-fulfilment"])
            .output()
            .unwrap());
        prepare(&t);
        let generated: Value = serde_json::from_str(&generated).unwrap();
        let topo = topology(&t);
        let text = std::fs::read_to_string(&topo).unwrap();
        std::fs::write(&topo, edit(text)).unwrap();
        let addr = free_port();
        let mut child = t
            .braid()
            .env("BRAID_LOG", "info,braid=debug")
            .envs(env.iter().copied())
            .args(["--log-format", "json", "run"])
            .arg(&topo)
            .args(["--metrics-addr", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stderr.take().unwrap());
        LiveJob {
            input: generated["records"].as_f64().unwrap(),
            t,
            child: Running(child),
            addr,
            lines,
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }

    /// The fields of the next JSON log line that `matches`.
    fn await_line(&self, what: &str, matches: &dyn Fn(&Value) -> bool) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(self.deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line: {what}"));
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && matches(&v["fields"])
            {
                return v["fields"].clone();
            }
        }
    }
}

impl LiveJob {
    /// SIGTERM, then the exit status once its stderr has closed (within 30 s).
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.0.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("no exit within 30 s of SIGTERM"),
            }
        }
        self.child.0.wait().unwrap()
    }
}

fn message(m: &'static str) -> impl Fn(&Value) -> bool {
    move |f: &Value| f["message"] == m
}

#[test]
fn readyz_turns_unready_while_checkpoints_stall_and_ready_again_after() {
    // The third commit waits 7 s; readiness allows max(3 × 1 s, 5 s) without one. A
    // checkpoint every 200 records makes the third commit come whatever the speed of
    // reading: with 100 ms checkpoints, a reader that got through the whole input in
    // the first 100 ms left nothing for a third one.
    let job = LiveJob::start(
        (3_000, 300, 4),
        &[("BRAID_STALL_AT", "commit:3:7000")],
        |text| text.replace("max_records = 2000", "max_records = 200"),
        |_| {},
    );
    let addr = job.addr;
    job.await_line("stalling", &message("BRAID_STALL_AT reached: stalling"));
    let stalled_at = Instant::now();
    // Commit 2 was a moment ago: still ready.
    assert_eq!(get(addr, "/readyz").0, 200);
    // Readiness depends on time passing, nothing to await but the clock.
    std::thread::sleep(
        (stalled_at + Duration::from_millis(5_500)).saturating_duration_since(Instant::now()),
    );
    let (status, body) = get(addr, "/readyz");
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not ready: last checkpoint ")
            && body.ends_with(" ms ago (limit 5000 ms)\n"),
        "{body}"
    );
    assert_eq!(get(addr, "/healthz").0, 200, "alive all along");
    job.await_line("commit 3", &|f: &Value| {
        f["message"] == "checkpoint committed" && f["epoch"] == 3
    });
    assert_eq!(get(addr, "/readyz"), (200, "ready\n".into()));
}

#[test]
fn readyz_turns_unready_while_a_source_cannot_be_read_and_ready_again_after() {
    // From the 20th read on, every source read fails for 3 s, as on a broken disk.
    let plan = "read:20:3000ms";
    let job = LiveJob::start(
        (3_000, 300, 4),
        &[("BRAID_FAIL_AT", plan)],
        |text| text,
        |_| {},
    );
    let addr = job.addr;
    let failed = message("reading a source partition failed; retrying");
    let first = job.await_line("a failed read", &failed);
    let (topic, partition) = (
        first["topic"].as_str().unwrap().to_owned(),
        first["partition"].as_u64().unwrap(),
    );
    let (status, body) = get(addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    // The first failing partition in (topic, partition) order is named, with its error.
    let named = body
        .strip_prefix("not ready: source `")
        .and_then(|rest| rest.split_once("` partition "))
        .and_then(|(t, rest)| Some((t, rest.split_once(' ')?.0.parse::<u32>().ok()?)))
        .unwrap_or_else(|| panic!("{body}"));
    let dir = job.t.log.partition_dir(named.0, named.1);
    let (head, tail) = (
        format!(
            "not ready: source `{}` partition {} unreachable",
            named.0, named.1
        ),
        format!(
            ": topic {} partition {}: {}: Input/output error (injected by BRAID_FAIL_AT={plan})\n",
            named.0,
            named.1,
            dir.display()
        ),
    );
    let others = body
        .strip_prefix(&head)
        .and_then(|rest| rest.strip_suffix(&tail))
        .unwrap_or_else(|| panic!("{body}"));
    assert!(
        others.is_empty()
            || others == " (and 1 other partition)"
            || (others.starts_with(" (and ") && others.ends_with(" other partitions)")),
        "{body}"
    );
    assert_eq!(get(addr, "/healthz").0, 200, "alive all along");
    let (_, metrics) = get(addr, "/metrics");
    assert!(
        sum(&metrics, "braid_source_errors_total") >= 1.0,
        "{metrics}"
    );
    // Every partition that failed reads again once the fault is over.
    let mut failing = std::collections::BTreeSet::from([(topic, partition)]);
    while !failing.is_empty() {
        let f = job.await_line("a read after the fault", &|f: &Value| {
            failed(f) || f["message"] == "source partition readable again"
        });
        let at = (
            f["topic"].as_str().unwrap().to_owned(),
            f["partition"].as_u64().unwrap(),
        );
        if failed(&f) {
            failing.insert(at);
        } else {
            failing.remove(&at);
        }
    }
    assert_eq!(get(addr, "/readyz"), (200, "ready\n".into()));
    // The job goes on: every input record is read, each exactly once.
    loop {
        let (_, metrics) = get(addr, "/metrics");
        if sum(&metrics, "braid_records_in_total") == job.input {
            assert_eq!(sum(&metrics, "braid_source_position"), job.input);
            break;
        }
        job.await_line("a checkpoint", &message("checkpoint committed"));
    }
}
