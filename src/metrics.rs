//! Job metrics in Prometheus text format, and the HTTP endpoint that serves them with the
//! health checks (`--metrics-addr`).
//!
//! Invariants:
//! - Every metric is named `braid_…` and carries the `topology` label; per-partition
//!   metrics add `topic` and `partition`. Names and meanings are listed in
//!   docs/operations.md, which the tests keep honest.
//! - Updating a metric is an atomic operation on a handle the stage keeps; stages update
//!   per batch or per slice, never take a lock on the per-event path.
//! - The endpoint runs on its own thread with its own small runtime: a slow scraper can
//!   never stall the job, and the job never waits for a scrape.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// Buckets of latency-like histograms, in milliseconds: 1 ms to about 1 h.
fn ms_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1.0, 2.0, 22).expect("valid bucket parameters")
}

/// The metrics of one job.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub records_in: IntCounterVec,
    pub bytes_in: IntCounterVec,
    pub position: IntGaugeVec,
    pub end_offset: IntGaugeVec,
    pub lag: IntGaugeVec,
    pub partition_watermark: IntGaugeVec,
    pub partition_idle: IntGaugeVec,
    pub job_watermark: IntGauge,
    pub watermark_lag_ms: IntGauge,
    pub open_windows: IntGaugeVec,
    pub state_keys: IntGauge,
    pub state_bytes: IntGauge,
    pub cached_keys: IntGauge,
    pub cache_lookups: IntCounterVec,
    pub output_records: IntCounterVec,
    pub duplicates: IntCounter,
    pub lateness_ms: HistogramVec,
    pub latency_ms: Histogram,
    pub checkpoint_seconds: Histogram,
    pub checkpoints: IntCounter,
    pub outbox_depth: IntGauge,
    pub sink_errors: IntCounter,
    pub sink_retries: IntCounter,
    pub source_errors: IntCounterVec,
    pub source_gaps: IntCounterVec,
    pub last_checkpoint_ms: IntGauge,
}

impl Metrics {
    /// A fresh set of metrics for the job `topology`.
    pub fn new(topology: &str) -> Result<Self, MetricsError> {
        let labels = [("topology".to_owned(), topology.to_owned())]
            .into_iter()
            .collect();
        let registry = Registry::new_custom(Some("braid".to_owned()), Some(labels))?;
        let part = ["topic", "partition"];
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        Ok(Metrics {
            records_in: register!(IntCounterVec::new(
                Opts::new(
                    "records_in_total",
                    "Input records read, per source partition"
                ),
                &part
            )?),
            bytes_in: register!(IntCounterVec::new(
                Opts::new(
                    "bytes_in_total",
                    "Input value bytes read, per source partition"
                ),
                &part
            )?),
            position: register!(IntGaugeVec::new(
                Opts::new(
                    "source_position",
                    "Next offset to read, per source partition"
                ),
                &part
            )?),
            end_offset: register!(IntGaugeVec::new(
                Opts::new(
                    "source_end_offset",
                    "End offset of the log, per source partition"
                ),
                &part
            )?),
            lag: register!(IntGaugeVec::new(
                Opts::new(
                    "consumer_lag",
                    "Records not yet read (end offset - position), per source partition"
                ),
                &part
            )?),
            partition_watermark: register!(IntGaugeVec::new(
                Opts::new(
                    "partition_watermark_ms",
                    "Watermark of a source partition, epoch ms"
                ),
                &part
            )?),
            partition_idle: register!(IntGaugeVec::new(
                Opts::new(
                    "partition_idle",
                    "1 when a source partition is idle (excluded from the job watermark)"
                ),
                &part
            )?),
            job_watermark: register!(IntGauge::new(
                "watermark_ms",
                "The job watermark, epoch ms"
            )?),
            watermark_lag_ms: register!(IntGauge::new(
                "watermark_lag_ms",
                "Wall clock minus the job watermark, ms"
            )?),
            open_windows: register!(IntGaugeVec::new(
                Opts::new("open_windows", "Windows or correlations open, per kind"),
                &["kind"]
            )?),
            state_keys: register!(IntGauge::new(
                "state_keys",
                "Keys with state, as of the last checkpoint"
            )?),
            state_bytes: register!(IntGauge::new(
                "state_bytes",
                "RocksDB size estimate: live SST data plus memtables"
            )?),
            cached_keys: register!(IntGauge::new(
                "state_cached_keys",
                "Keys whose state is in memory (the rest is read back from RocksDB)"
            )?),
            cache_lookups: register!(IntCounterVec::new(
                Opts::new(
                    "state_cache_lookups_total",
                    "Key state lookups per result: hit (in memory), read_back (evicted, read from RocksDB), new (no state)"
                ),
                &["result"]
            )?),
            output_records: register!(IntCounterVec::new(
                Opts::new("output_records_total", "Records published, per kind"),
                &["kind"]
            )?),
            duplicates: register!(IntCounter::new(
                "duplicates_total",
                "Input events dropped as duplicates"
            )?),
            lateness_ms: register!(HistogramVec::new(
                HistogramOpts::new(
                    "lateness_ms",
                    "How late late events were (watermark - deadline), per source topic"
                )
                .buckets(ms_buckets()),
                &["topic"]
            )?),
            latency_ms: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "end_to_end_latency_ms",
                    "From the read of the input that completed a record to its publication"
                )
                .buckets(ms_buckets())
            )?),
            checkpoint_seconds: register!(Histogram::with_opts(
                HistogramOpts::new("checkpoint_duration_seconds", "Commit time of a checkpoint")
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?)
            )?),
            checkpoints: register!(IntCounter::new(
                "checkpoints_total",
                "Checkpoints committed"
            )?),
            outbox_depth: register!(IntGauge::new(
                "outbox_depth",
                "Committed output records not yet acknowledged as published"
            )?),
            sink_errors: register!(IntCounter::new(
                "sink_errors_total",
                "Failed attempts to publish output"
            )?),
            sink_retries: register!(IntCounter::new(
                "sink_retries_total",
                "Publication attempts repeated after a failure"
            )?),
            source_errors: register!(IntCounterVec::new(
                Opts::new(
                    "source_errors_total",
                    "Failed reads of a source partition (each retried)"
                ),
                &part
            )?),
            source_gaps: register!(IntCounterVec::new(
                Opts::new(
                    "source_gaps_total",
                    "Gaps in a Fluvio consumer stream, each repaired by re-reading from the first missing offset"
                ),
                &part
            )?),
            last_checkpoint_ms: register!(IntGauge::new(
                "last_checkpoint_ms",
                "Wall clock of the last committed checkpoint, epoch ms"
            )?),
            registry,
        })
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The metrics and health state a job reports into (both shared with the endpoint).
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Metrics,
    pub health: Arc<Health>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

/// What `/readyz` checks, set by the job.
#[derive(Debug)]
pub struct Health {
    /// Every source partition has a reader.
    pub sources_ready: AtomicBool,
    /// Source partitions whose last read failed: (topic, partition) → the error.
    pub unreachable: Mutex<BTreeMap<(String, u32), String>>,
    /// Wall clock of the last committed checkpoint (or of the start), epoch ms.
    pub last_checkpoint_ms: AtomicI64,
    /// Ready only while the last checkpoint is younger than this.
    pub max_checkpoint_age: Duration,
}

impl Health {
    pub fn new(checkpoint_interval: Duration) -> Self {
        Health {
            sources_ready: AtomicBool::new(false),
            unreachable: Mutex::new(BTreeMap::new()),
            last_checkpoint_ms: AtomicI64::new(crate::time::wall_clock_ms()),
            // Three missed intervals, and never less than 5 s (a commit can take a while
            // under load without anything being wrong).
            max_checkpoint_age: (checkpoint_interval * 3).max(Duration::from_secs(5)),
        }
    }

    /// Why the job is not ready, if it is not.
    pub fn unready(&self, now_ms: i64) -> Option<String> {
        if !self.sources_ready.load(Ordering::Relaxed) {
            return Some("sources not connected".into());
        }
        let unreachable = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(((topic, partition), error)) = unreachable.iter().next() {
            let others = match unreachable.len() - 1 {
                0 => String::new(),
                1 => " (and 1 other partition)".to_owned(),
                n => format!(" (and {n} other partitions)"),
            };
            return Some(format!(
                "source `{topic}` partition {partition} unreachable{others}: {error}"
            ));
        }
        drop(unreachable);
        let age = now_ms.saturating_sub(self.last_checkpoint_ms.load(Ordering::Relaxed));
        if age > self.max_checkpoint_age.as_millis() as i64 {
            return Some(format!(
                "last checkpoint {age} ms ago (limit {} ms)",
                self.max_checkpoint_age.as_millis()
            ));
        }
        None
    }
}

/// The running endpoint; dropping it stops the server.
pub struct Endpoint {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `addr` until the endpoint is dropped.
pub fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
) -> Result<Endpoint, MetricsError> {
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = std_listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("braid-metrics".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let metrics = metrics.clone();
                            let health = health.clone();
                            tokio::spawn(async move {
                                // A client that stalls is dropped after 5 s.
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(5),
                                    respond(stream, &metrics, &health),
                                )
                                .await;
                            });
                        }
                    }
                }
            });
        })
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(Endpoint {
        addr: bound,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Answers one HTTP/1.1 request and closes the connection.
async fn respond(
    mut stream: tokio::net::TcpStream,
    metrics: &Metrics,
    health: &Health,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // Read the request head (bounded: a request line and headers fit in 8 KiB).
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", b"ok\n".to_vec()),
        ("GET", "/readyz") => match health.unready(crate::time::wall_clock_ms()) {
            None => ("200 OK", "text/plain", b"ready\n".to_vec()),
            Some(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n").into_bytes(),
            ),
        },
        ("GET", _) => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            b"only GET\n".to_vec(),
        ),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[test]
    fn serves_metrics_and_health() {
        let m = Metrics::new("journeys").unwrap();
        m.records_in
            .with_label_values(&["page.viewed", "0"])
            .inc_by(7);
        m.lateness_ms
            .with_label_values(&["page.viewed"])
            .observe(1500.0);
        let health = Arc::new(Health::new(Duration::from_secs(1)));
        let ep = serve("127.0.0.1:0".parse().unwrap(), m.clone(), health.clone()).unwrap();
        let (status, body) = get(ep.addr(), "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            body.contains(
                "braid_records_in_total{partition=\"0\",topic=\"page.viewed\",topology=\"journeys\"} 7"
            ),
            "{body}"
        );
        assert!(
            body.contains("braid_lateness_ms_count{topic=\"page.viewed\",topology=\"journeys\"} 1")
        );
        assert_eq!(
            get(ep.addr(), "/healthz"),
            ("HTTP/1.1 200 OK".into(), "ok\n".into())
        );
        assert_eq!(
            get(ep.addr(), "/readyz"),
            (
                "HTTP/1.1 503 Service Unavailable".into(),
                "not ready: sources not connected\n".into()
            )
        );
        health.sources_ready.store(true, Ordering::Relaxed);
        assert_eq!(
            get(ep.addr(), "/readyz"),
            ("HTTP/1.1 200 OK".into(), "ready\n".into())
        );
        // A source partition that cannot be read makes the job unready until it can.
        let unreachable = |topic: &str, partition: u32| {
            health.unreachable.lock().unwrap().insert(
                (topic.to_owned(), partition),
                "/log/a/0: Input/output error".into(),
            );
        };
        unreachable("a", 1);
        assert_eq!(
            get(ep.addr(), "/readyz"),
            (
                "HTTP/1.1 503 Service Unavailable".into(),
                "not ready: source `a` partition 1 unreachable: /log/a/0: Input/output error\n"
                    .into()
            )
        );
        unreachable("b", 0);
        unreachable("b", 1);
        assert_eq!(
            get(ep.addr(), "/readyz").1,
            "not ready: source `a` partition 1 unreachable (and 2 other partitions): /log/a/0: Input/output error\n"
        );
        health.unreachable.lock().unwrap().clear();
        assert_eq!(get(ep.addr(), "/readyz").0, "HTTP/1.1 200 OK");
        // A checkpoint that stalls makes the job unready.
        health
            .last_checkpoint_ms
            .store(crate::time::wall_clock_ms() - 60_000, Ordering::Relaxed);
        let (status, body) = get(ep.addr(), "/readyz");
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert!(body.starts_with("not ready: last checkpoint 6"), "{body}");
        assert_eq!(get(ep.addr(), "/nope").0, "HTTP/1.1 404 Not Found");
        drop(ep);
    }

    #[test]
    fn bind_error_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let m = Metrics::new("j").unwrap();
        let err = serve(addr, m, Arc::new(Health::new(Duration::from_secs(1))))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with(&format!("metrics endpoint: cannot listen on {addr}: ")),
            "{err}"
        );
    }
}
