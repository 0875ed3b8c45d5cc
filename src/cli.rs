//! The `braid` command line (clap). The only module that uses `anyhow`: it turns the
//! library's typed errors into messages and exit codes (0 ok, 1 runtime error, 2 usage).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::datagen::{self, GenConfig};
use crate::fluvio::ClusterConfig;
use crate::log::Log;
use crate::sink::TopicProducer;
use crate::source::{Backend, BackendConfig, PartitionInput};
use crate::topology::{self, StartPosition};

#[derive(Parser, Debug)]
#[command(
    name = "braid",
    version,
    about = "Correlate events across topics, per key, in event-time windows",
    after_help = "Examples:\n  braid topic create page.viewed --partitions 4\n  echo '{\"customer_id\":\"c-1\",\"ts\":1}' | braid produce page.viewed --key-pointer /customer_id\n  braid consume page.viewed --from beginning --meta"
)]
struct Cli {
    /// Embedded log directory [default: data/log; for `run`, the topology's broker path].
    #[arg(long, global = true, env = "BRAID_LOG_DIR")]
    log: Option<PathBuf>,
    /// Use a Fluvio cluster instead of the embedded log: the SC at ENDPOINT
    /// (host:port), or the current Fluvio profile's when no ENDPOINT is given.
    #[arg(
        long,
        global = true,
        num_args = 0..=1,
        default_missing_value = "",
        value_name = "ENDPOINT",
        conflicts_with = "log"
    )]
    fluvio: Option<String>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// `braid replay` options.
#[derive(Args, Debug)]
struct ReplayArgs {
    /// The topology file of the live job.
    topology: PathBuf,
    /// Where the range starts (repeatable: per topic or partition).
    #[arg(long, value_name = "POS", required = true)]
    from: Vec<crate::replay::PositionSpec>,
    /// Where the range ends, exclusive (repeatable; default: the end offsets at start).
    #[arg(long, value_name = "POS")]
    to: Vec<crate::replay::PositionSpec>,
    /// Prefix of the replay's output topics (default `replay.`).
    #[arg(long, value_name = "PREFIX")]
    output_prefix: Option<String>,
    /// The replay's journeys topic.
    #[arg(long, value_name = "TOPIC")]
    journeys: Option<String>,
    /// The replay's late-arrival topic.
    #[arg(long, value_name = "TOPIC")]
    late: Option<String>,
    /// The replay's dead-letter topic.
    #[arg(long, value_name = "TOPIC")]
    dead_letters: Option<String>,
    /// Allow writing into the live job's output topics.
    #[arg(long)]
    into_live_outputs: bool,
    /// The replay's state directory (default: a temporary one, removed at the end).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Keep the temporary state directory at the end.
    #[arg(long)]
    keep_state: bool,
    /// Watermark alignment: do not read a partition whose watermark is more than this
    /// ahead of the job watermark (e.g. 5m), so state stays bounded when one topic lags
    /// far behind the others. Off by default: the replay then reads exactly as the live
    /// job did.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    align: Option<Duration>,
    /// Serve Prometheus metrics, /healthz and /readyz on this address (off by default).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Continue the interrupted replay whose state is in --state.
    #[arg(long, requires = "state")]
    resume: bool,
    /// Override the topology's shard count (worker threads).
    #[arg(long)]
    shards: Option<usize>,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list and describe topics of the embedded log.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Append JSON lines from stdin (or a file) to a topic.
    #[command(
        after_help = "Examples:\n  braid produce page.viewed --key-pointer /customer_id < views.jsonl\n  braid produce orders --file orders.jsonl --validate-json"
    )]
    Produce(ProduceArgs),
    /// Print a topic's records as JSON lines.
    #[command(
        after_help = "Examples:\n  braid consume customer.journey --from beginning -n 10\n  braid consume page.viewed --partition 2 --from offset:100 --meta\n  braid consume customer.journey --from end --follow"
    )]
    Consume(ConsumeArgs),
    /// Run a topology: follow its sources and emit correlated records (Ctrl-C stops).
    #[command(
        after_help = "Examples:\n  braid run topologies/customer_journey.toml\n  braid run topologies/customer_journey.toml --bounded --summary-json summary.json"
    )]
    Run {
        /// The topology file.
        topology: PathBuf,
        /// Stop at the end offsets present at start, close every window, print a summary.
        #[arg(long)]
        bounded: bool,
        /// Also write the summary as JSON to this file.
        #[arg(long, value_name = "FILE")]
        summary_json: Option<PathBuf>,
        /// Override the topology's shard count (worker threads).
        #[arg(long)]
        shards: Option<usize>,
        /// Override the topology's state directory (checkpoints; a run resumes from it).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Serve Prometheus metrics, /healthz and /readyz on this address (off by default).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Scale out: be instance I of N, reading partitions p with p % N = I of every
        /// source (the sources must be co-partitioned). State goes to
        /// <state>/instance-I-of-N unless --state says otherwise.
        #[arg(long, value_name = "I/N", value_parser = crate::source::Assignment::parse_instance, conflicts_with = "partitions")]
        instance: Option<crate::source::Assignment>,
        /// Scale out: read only these partitions of every source, e.g. 0,2,4.
        #[arg(long, value_name = "LIST", value_parser = crate::source::Assignment::parse_list)]
        partitions: Option<crate::source::Assignment>,
    },
    /// Re-process a range of a topology's sources (backfill), isolated from the live job.
    #[command(
        after_help = "POS is beginning, end, offset:N or timestamp:RFC3339, for all sources, one topic\n(TOPIC=POS) or one partition (TOPIC/PARTITION=POS); the most specific one wins.\nThe replay uses its own state directory (a temporary one unless --state) and writes to\nits own output topics (prefixed `replay.` unless told otherwise).\n\nExamples:\n  braid replay topologies/customer_journey.toml --from beginning\n  braid replay topologies/customer_journey.toml --from timestamp:2026-01-05T08:00:00Z --to timestamp:2026-01-05T09:00:00Z\n  braid replay topologies/customer_journey.toml --from page.viewed/2=offset:7 --from beginning --output-prefix fix.\n  braid replay topologies/customer_journey.toml --from beginning --state data/replay-1 --resume"
    )]
    Replay(ReplayArgs),
    /// Show a job's checkpointed state: positions and lag, watermark, pending output, open
    /// windows or correlations (read-only; works while the job runs).
    #[command(
        after_help = "Examples:\n  braid inspect topologies/order_fulfillment.toml\n  braid inspect topologies/customer_journey.toml --state data/state/cj --json"
    )]
    Inspect {
        /// The topology file.
        topology: PathBuf,
        /// The state directory (default: the topology's).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read and JSON-parse every source record of a topology (the benchmarks' baseline).
    #[command(after_help = "Example:\n  braid scan topologies/customer_journey.toml")]
    Scan {
        /// The topology file.
        topology: PathBuf,
        /// Also write the figures as JSON to this file.
        #[arg(long, value_name = "FILE")]
        summary_json: Option<PathBuf>,
    },
    /// Check a topology file: every problem at once (exit 2), or a summary of the plan.
    #[command(after_help = "Example:\n  braid validate topologies/customer_journey.toml")]
    Validate {
        /// The topology file.
        file: PathBuf,
    },
    /// Generate a deterministic synthetic workload into the log (or JSON-lines files).
    #[command(
        after_help = "Examples:\n  braid gen --events 200000 --customers 20000 --seed 7\n  braid gen --events 1000 --no-fulfilment --out-dir /tmp/jsonl\n  braid gen --partitions 4 --partitions order.placed=1"
    )]
    Gen(GenArgs),
}

#[derive(Subcommand, Debug)]
enum TopicCommand {
    /// Create a topic (idempotent when the partition count matches).
    #[command(after_help = "Example:\n  braid topic create page.viewed --partitions 4")]
    Create {
        name: String,
        #[arg(long, short, default_value_t = 1)]
        partitions: u32,
    },
    /// List topics and their partition counts.
    #[command(after_help = "Example:\n  braid --log data/log topic list")]
    List,
    /// Show each partition's offsets and size.
    #[command(after_help = "Example:\n  braid topic describe page.viewed --json")]
    Describe {
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct ProduceArgs {
    topic: String,
    /// JSON pointer to the record key (string or integer); records without it are unkeyed.
    #[arg(long, value_name = "POINTER")]
    key_pointer: Option<String>,
    /// Read from this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Reject (and report) lines that are not JSON instead of appending them.
    #[arg(long)]
    validate_json: bool,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    topic: String,
    /// Where to start: beginning, end, offset:N or timestamp:RFC3339 (append time).
    #[arg(long, default_value = "beginning")]
    from: StartPosition,
    /// Only this partition (default: all).
    #[arg(long, short)]
    partition: Option<u32>,
    /// Stop after this many records.
    #[arg(short = 'n', long = "max-records")]
    max_records: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long, short)]
    follow: bool,
    /// Wrap each value with its partition, offset, append time and key.
    #[arg(long)]
    meta: bool,
    /// Pretty-print JSON (one record over several lines).
    #[arg(long)]
    pretty: bool,
}

#[derive(Args, Debug)]
struct GenArgs {
    /// Seed of the whole dataset (same seed and knobs ⇒ byte-identical output) [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Number of customers [default: 100000].
    #[arg(long)]
    customers: Option<u64>,
    /// Well-formed journey events (duplicates, poison and fulfilment parts come on top)
    /// [default: 2000000].
    #[arg(long)]
    events: Option<u64>,
    /// Event time of the first event (RFC 3339) [default: 2026-01-05T08:00:00Z].
    #[arg(long, value_parser = parse_rfc3339_ms)]
    start: Option<i64>,
    /// Bound of ordinary out-of-order arrival, in milliseconds [default: 5000].
    #[arg(long)]
    disorder_ms: Option<u64>,
    /// Share of records arriving 30–120 minutes late [default: 0.01].
    #[arg(long)]
    late_fraction: Option<f64>,
    /// Share of records sent twice [default: 0.005].
    #[arg(long)]
    duplicate_fraction: Option<f64>,
    /// Probability of a malformed record next to each well-formed one [default: 0.001].
    #[arg(long)]
    poison_fraction: Option<f64>,
    /// No payment/inventory/shipment parts for orders.
    #[arg(long)]
    no_fulfilment: bool,
    /// Share of fulfilment parts never sent [default: 0.02].
    #[arg(long)]
    missing_part_fraction: Option<f64>,
    /// Share of fulfilment parts 8–48 hours after their order [default: 0.02].
    #[arg(long)]
    delayed_part_fraction: Option<f64>,
    /// Partition counts of the topics created: N for all, or TOPIC=N; repeatable
    /// [default: page.viewed=4, cart.updated=2, order.placed=2, fulfilment topics 2].
    #[arg(long, value_name = "N|TOPIC=N")]
    partitions: Vec<String>,
    /// Write one JSON-lines file per topic into this directory instead of the log.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Make a topic's records arrive this much later (append time; event times stay),
    /// e.g. order.placed=1h: a topic lagging behind the others. Repeatable.
    #[arg(long, value_name = "TOPIC=DURATION")]
    delay: Vec<String>,
    /// Append live at this many records per second, with the clock's time as append time
    /// (a producer for a following `braid run`; the latency benchmark's load), instead of
    /// as fast as possible with the simulated arrival times. Not with --out-dir or --delay.
    #[arg(long, value_name = "RECORDS_PER_S")]
    rate: Option<u32>,
}

fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    crate::decode::parse_rfc3339(s).ok_or_else(|| format!("invalid RFC 3339 time {s:?}"))
}

/// An error caused by how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BRAID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Where records are: `--log DIR`, `--fluvio [ENDPOINT]`, or (for a topology) its
/// broker.
struct BrokerFlags {
    log: Option<PathBuf>,
    fluvio: Option<String>,
}

impl BrokerFlags {
    fn fluvio(&self) -> Option<BackendConfig> {
        self.fluvio.as_ref().map(|e| {
            BackendConfig::Fluvio(ClusterConfig {
                endpoint: (!e.is_empty()).then(|| e.clone()),
            })
        })
    }

    /// For the tools: Fluvio when asked for, else the embedded log.
    fn tool_backend(&self) -> anyhow::Result<Backend> {
        let config = self.fluvio().unwrap_or_else(|| BackendConfig::Embedded {
            path: self.log_dir(),
        });
        open_backend(&config)
    }

    fn log_dir(&self) -> PathBuf {
        self.log
            .clone()
            .unwrap_or_else(|| PathBuf::from("data/log"))
    }

    /// For a topology: a flag overrides its broker.
    fn plan_backend(&self, plan: &topology::Plan) -> anyhow::Result<Backend> {
        let config = match (&self.log, self.fluvio()) {
            (Some(dir), _) => BackendConfig::Embedded { path: dir.clone() },
            (None, Some(fluvio)) => fluvio,
            (None, None) => BackendConfig::of(&plan.broker),
        };
        open_backend(&config)
    }
}

fn open_backend(config: &BackendConfig) -> anyhow::Result<Backend> {
    config.build().with_context(|| match config {
        BackendConfig::Embedded { .. } => "opening the embedded log".to_owned(),
        BackendConfig::Fluvio(_) => "connecting to Fluvio".to_owned(),
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let flags = BrokerFlags {
        log: cli.log.clone(),
        fluvio: cli.fluvio.clone(),
    };
    let log_dir = flags.log_dir();
    let log = || -> anyhow::Result<Log> {
        if flags.fluvio.is_some() {
            return Err(UsageError(
                "braid topic works on the embedded log; on Fluvio, use `fluvio topic`".into(),
            )
            .into());
        }
        Log::open(&log_dir).context("opening the embedded log")
    };
    match cli.command {
        Command::Topic(cmd) => topic(&log()?, cmd),
        Command::Produce(args) => produce(&flags.tool_backend()?, args),
        Command::Consume(args) => consume(&flags.tool_backend()?, args),
        Command::Gen(args) => generate(&flags, args),
        Command::Run {
            topology,
            bounded,
            summary_json,
            shards,
            state,
            metrics_addr,
            instance,
            partitions,
        } => run_job(
            &flags,
            &topology,
            RunArgs {
                bounded,
                shards,
                state,
                summary_json,
                metrics_addr,
                assignment: instance.or(partitions),
            },
        ),
        Command::Replay(args) => replay(&flags, args),
        Command::Validate { file } => validate(&file),
        Command::Inspect {
            topology,
            state,
            json,
        } => inspect(&flags, &topology, state, json),
        Command::Scan {
            topology,
            summary_json,
        } => scan(&flags, &topology, summary_json.as_deref()),
    }
}

fn inspect(
    flags: &BrokerFlags,
    file: &std::path::Path,
    state: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let mut plan = load_plan(file)?;
    if let Some(dir) = state {
        plan.state = dir;
    }
    let store = crate::state::StateStore::open_read_only(&plan.state)?;
    // The log only adds end offsets (lag); a report without them beats no report.
    let backend = flags.plan_backend(&plan).ok();
    let report = crate::inspect::inspect(&plan, &store, backend.as_ref())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn load_plan(file: &std::path::Path) -> anyhow::Result<topology::Plan> {
    topology::load(file).map_err(|errors| {
        eprintln!("{errors}");
        UsageError(format!(
            "{} is not a valid topology (run `braid validate {}`)",
            file.display(),
            file.display()
        ))
        .into()
    })
}

/// Sets the returned flag on SIGINT or SIGTERM; the job notices it within a poll interval.
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stop requested: finishing");
            flag.store(true, Ordering::Relaxed);
        });
    });
    stop
}

fn write_json(path: Option<&std::path::Path>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn scan(
    flags: &BrokerFlags,
    file: &std::path::Path,
    summary_json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let plan = load_plan(file)?;
    let backend = flags.plan_backend(&plan)?;
    let s = crate::job::scan(&plan, &backend)?;
    println!(
        "{}: scanned {} records ({} bytes, {} not JSON) in {:.2}s ({:.0} records/s)",
        plan.name,
        s.records,
        s.bytes,
        s.not_json,
        s.millis as f64 / 1000.0,
        s.records as f64 * 1000.0 / s.millis.max(1) as f64
    );
    write_json(summary_json, &s)
}

/// `braid run` options beyond the topology file.
struct RunArgs {
    bounded: bool,
    shards: Option<usize>,
    state: Option<PathBuf>,
    summary_json: Option<PathBuf>,
    metrics_addr: Option<std::net::SocketAddr>,
    assignment: Option<crate::source::Assignment>,
}

/// Starts the metrics endpoint when an address is given; the job reports into the
/// returned telemetry, and the endpoint lives as long as the returned guard.
fn start_metrics(
    plan: &topology::Plan,
    addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<(
    Option<crate::metrics::Telemetry>,
    Option<crate::metrics::Endpoint>,
)> {
    let Some(addr) = addr else {
        return Ok((None, None));
    };
    let telemetry = crate::metrics::Telemetry {
        metrics: crate::metrics::Metrics::new(&plan.name)?,
        health: Arc::new(crate::metrics::Health::new(plan.checkpoint.interval)),
    };
    let endpoint =
        crate::metrics::serve(addr, telemetry.metrics.clone(), telemetry.health.clone())?;
    tracing::info!(addr = %endpoint.addr(), "serving /metrics, /healthz and /readyz");
    Ok((Some(telemetry), Some(endpoint)))
}

fn run_job(flags: &BrokerFlags, file: &std::path::Path, args: RunArgs) -> anyhow::Result<()> {
    let mut plan = load_plan(file)?;
    if let Some(n) = args.shards {
        if n == 0 {
            return Err(UsageError("--shards must be at least 1".into()).into());
        }
        plan.shards = n;
    }
    match (args.state, &args.assignment) {
        (Some(dir), _) => plan.state = dir,
        (None, Some(a)) => plan.state = plan.state.join(a.label()),
        (None, None) => {}
    }
    let backend = flags.plan_backend(&plan)?;
    let (telemetry, _endpoint) = start_metrics(&plan, args.metrics_addr)?;
    let stop = stop_on_signal();
    let opts = crate::job::RunOptions {
        bounded: args.bounded,
        telemetry,
        assignment: args.assignment,
        ..Default::default()
    };
    let summary = crate::job::run(&plan, &backend, opts, &stop)?;
    print_summary(&plan, &summary);
    write_json(args.summary_json.as_deref(), &summary)
}

fn print_summary(plan: &topology::Plan, summary: &crate::job::Summary) {
    println!(
        "{}: {} records in, {} {}, {} late, {} duplicates{}, {} dead letters in {:.2}s ({:.0} events/s, {} shards, {} checkpoints{})",
        plan.name,
        summary.records_in,
        summary.journeys,
        // What the kind's records are called; the summary JSON says `journeys` for all.
        match plan.correlation.kind() {
            "session" => "journeys",
            "complete" => "complete/incomplete records",
            "interval" => "join records",
            _ => "window records",
        },
        summary.late,
        summary.duplicates,
        if plan.correlation.kind() == "interval" {
            format!(", {} unjoined", summary.unjoined)
        } else {
            String::new()
        },
        summary.dead_letters,
        summary.millis as f64 / 1000.0,
        summary.events_per_second(),
        summary.shards,
        summary.checkpoints,
        if summary.resumed {
            format!(
                ", resumed from {}, {} republished",
                plan.state.display(),
                summary.republished
            )
        } else {
            String::new()
        }
    );
}

fn replay(flags: &BrokerFlags, args: ReplayArgs) -> anyhow::Result<()> {
    let live = load_plan(&args.topology)?;
    let backend = flags.plan_backend(&live)?;
    let temp_state =
        std::env::temp_dir().join(format!("braid-replay-{}-{}", live.name, std::process::id()));
    let iso = crate::replay::Isolation {
        state: args.state.clone(),
        output_prefix: args.output_prefix,
        journeys: args.journeys,
        late: args.late,
        dead_letters: args.dead_letters,
        into_live_outputs: args.into_live_outputs,
    };
    let mut plan =
        crate::replay::isolate(&live, &iso, &temp_state).map_err(|e| UsageError(e.to_string()))?;
    if let Some(dir) = &args.state {
        let holds_state = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
        if holds_state && !args.resume {
            return Err(UsageError(format!(
                "{} already holds a replay's state: add --resume to continue it, or choose a new directory",
                dir.display()
            ))
            .into());
        }
        if !holds_state && args.resume {
            return Err(UsageError(format!(
                "--resume: {} holds no replay to resume",
                dir.display()
            ))
            .into());
        }
    }
    if let Some(n) = args.shards {
        if n == 0 {
            return Err(UsageError("--shards must be at least 1".into()).into());
        }
        plan.shards = n;
    }
    // A resumed replay continues with the range, output topics and producer name of its
    // checkpoint; this invocation's --from/--to and output flags do not apply.
    let (range, total) = if args.resume {
        eprintln!(
            "resuming the replay of {} in {}",
            plan.name,
            plan.state.display()
        );
        (None, 0)
    } else {
        let range =
            crate::replay::resolve(&plan, &backend, &args.from, &args.to).map_err(|e| match e {
                crate::replay::ReplayError::Source(e) => {
                    anyhow::Error::new(e).context("resolving the range")
                }
                other => UsageError(other.to_string()).into(),
            })?;
        let total = range.records();
        eprintln!(
            "replaying {total} records of {} into {}, {}, {} (state {})",
            plan.name,
            plan.output.journeys,
            plan.output.late,
            plan.output.dead_letters,
            plan.state.display()
        );
        (Some(range), total)
    };
    let (telemetry, _endpoint) = start_metrics(&plan, args.metrics_addr)?;
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = stop_on_signal();
    let finished = Arc::new(AtomicBool::new(false));
    let reporter = spawn_progress(total, done.clone(), finished.clone());
    let opts = crate::job::RunOptions {
        bounded: true,
        range,
        progress: Some(done),
        align: args.align,
        // Its own name on its records: they are never taken for the live job's, and two
        // replays into the same topics do not mistake each other's for their own.
        producer: Some(format!(
            "{}.replay.{}",
            plan.name,
            crate::time::wall_clock_ms()
        )),
        telemetry,
        assignment: None,
    };
    let result = crate::job::run(&plan, &backend, opts, &stop);
    finished.store(true, Ordering::Relaxed);
    let _ = reporter.join();
    let interrupted = stop.load(Ordering::Relaxed);
    if args.state.is_none() && !args.keep_state && !interrupted && result.is_ok() {
        let _ = std::fs::remove_dir_all(&plan.state);
    }
    let summary = result.with_context(|| {
        format!(
            "replay failed; its state is kept in {}",
            plan.state.display()
        )
    })?;
    print_summary(&plan, &summary);
    println!("outputs: {}", summary.outputs.join(", "));
    if interrupted {
        eprintln!(
            "replay interrupted; continue it with: braid replay {} --from beginning --state {} --resume",
            args.topology.display(),
            plan.state.display()
        );
    }
    write_json(args.summary_json.as_deref(), &summary)
}

/// Reports a replay's progress on stderr until `finished`: a bar redrawn in place on a
/// terminal, a line every 5 s otherwise.
fn spawn_progress(
    total: u64,
    done: Arc<std::sync::atomic::AtomicU64>,
    finished: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let tick = if terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        let mut next = started + tick;
        loop {
            // Short naps so the reporter ends promptly with the replay.
            std::thread::sleep(Duration::from_millis(50));
            let over = finished.load(Ordering::Relaxed);
            if !over && std::time::Instant::now() < next {
                continue;
            }
            next += tick;
            let n = done.load(Ordering::Relaxed);
            let line = progress_line(n, total, started.elapsed());
            if terminal {
                eprint!("\r{line}\x1b[K");
                if over {
                    eprintln!();
                }
            } else if !over {
                eprintln!("{line}");
            }
            if over {
                return;
            }
        }
    })
}

/// A human duration (`250ms`, `5s`, `30m`) for a command-line flag.
fn parse_duration(text: &str) -> Result<Duration, String> {
    topology::duration::parse(text).map_err(|e| format!("{e}: {}", e.hint()))
}

/// `[#####.....] 1200/5000 records  24% · 30000 rec/s · ETA 0:00:01`
fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    if total == 0 {
        // Unknown (a resumed replay): no bar, no ETA.
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        return format!("{done} records · {rate:.0} rec/s");
    }
    let fraction = (done as f64 / total as f64).min(1.0);
    let width = 30;
    let filled = (fraction * width as f64).round() as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let eta = if rate > 0.0 {
        (total.saturating_sub(done) as f64 / rate) as u64
    } else {
        0
    };
    format!(
        "[{}{}] {done}/{total} records {:>3.0}% · {rate:.0} rec/s · ETA {}:{:02}:{:02}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        fraction * 100.0,
        eta / 3600,
        eta / 60 % 60,
        eta % 60
    )
}

fn validate(file: &std::path::Path) -> anyhow::Result<()> {
    match topology::load(file) {
        Ok(plan) => {
            println!("{}", plan.summary().trim_end());
            Ok(())
        }
        Err(errors) => {
            let n = errors.problems.len().max(1);
            eprintln!("{errors}");
            Err(UsageError(format!(
                "{} is not a valid topology ({n} problem{})",
                file.display(),
                if n == 1 { "" } else { "s" }
            ))
            .into())
        }
    }
}

fn topic(log: &Log, cmd: TopicCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        TopicCommand::Create { name, partitions } => {
            let meta = log.create_topic(&name, partitions)?;
            writeln!(
                out,
                "topic {} ready with {} partitions",
                meta.name, meta.partitions
            )?;
        }
        TopicCommand::List => {
            for meta in log.topics()? {
                writeln!(out, "{}\t{}", meta.name, meta.partitions)?;
            }
        }
        TopicCommand::Describe { name, json } => {
            let meta = log.topic(&name)?;
            let infos = (0..meta.partitions)
                .map(|p| log.partition_info(&name, p))
                .collect::<Result<Vec<_>, _>>()?;
            if json {
                let doc = serde_json::json!({ "topic": meta.name, "partitions": infos });
                writeln!(out, "{doc}")?;
            } else {
                writeln!(out, "topic {} ({} partitions)", meta.name, meta.partitions)?;
                writeln!(
                    out,
                    "{:>9} {:>12} {:>12} {:>14} {:>8}",
                    "partition", "first", "end", "bytes", "segments"
                )?;
                for i in &infos {
                    writeln!(
                        out,
                        "{:>9} {:>12} {:>12} {:>14} {:>8}",
                        i.partition, i.start_offset, i.end_offset, i.bytes, i.segments
                    )?;
                }
                let records: u64 = infos.iter().map(|i| i.end_offset - i.start_offset).sum();
                let bytes: u64 = infos.iter().map(|i| i.bytes).sum();
                writeln!(
                    out,
                    "{:>9} {:>12} {:>12} {:>14}",
                    "total", "", records, bytes
                )?;
            }
        }
    }
    Ok(())
}

/// Key of a JSON line by pointer: strings as-is, integers as decimal text.
fn key_of(value: &serde_json::Value, pointer: &str) -> Option<Vec<u8>> {
    match value.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone().into_bytes()),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
            Some(n.to_string().into_bytes())
        }
        _ => None,
    }
}

fn produce(backend: &Backend, args: ProduceArgs) -> anyhow::Result<()> {
    if let Some(p) = &args.key_pointer
        && !p.starts_with('/')
    {
        return Err(UsageError(format!(
            "--key-pointer {p:?} is not a JSON pointer (hint: /{p})"
        ))
        .into());
    }
    let mut producer = TopicProducer::open(backend, &args.topic)?;
    let (source_name, input): (String, Box<dyn BufRead>) = match &args.file {
        Some(path) => (
            path.display().to_string(),
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            )),
        ),
        None => ("stdin".into(), Box::new(std::io::stdin().lock())),
    };
    let partitions = producer.partitions() as usize;
    let mut per_partition = vec![0u64; partitions];
    let (mut keyed, mut unkeyed, mut rejected, mut malformed) = (0u64, 0u64, 0u64, 0u64);
    for (n, line) in input.split(b'\n').enumerate() {
        let mut line = line.with_context(|| format!("reading {source_name}"))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = serde_json::from_slice::<serde_json::Value>(&line).ok();
        if parsed.is_none() {
            if args.validate_json {
                eprintln!("{source_name}:{}: not valid JSON; not appended", n + 1);
                rejected += 1;
                continue;
            }
            malformed += 1;
        }
        let key = args
            .key_pointer
            .as_deref()
            .zip(parsed.as_ref())
            .and_then(|(p, v)| key_of(v, p));
        match &key {
            Some(_) => keyed += 1,
            None => unkeyed += 1,
        }
        let p = producer.send(key.as_deref(), &line)?;
        per_partition[p as usize] += 1;
    }
    producer.flush()?;
    eprintln!(
        "produced {} records to {} ({keyed} keyed, {unkeyed} unkeyed, {malformed} not JSON); per partition: {:?}",
        keyed + unkeyed,
        args.topic,
        per_partition
    );
    if rejected > 0 {
        bail!("{rejected} lines of {source_name} were not valid JSON and were not appended");
    }
    Ok(())
}

fn consume(backend: &Backend, args: ConsumeArgs) -> anyhow::Result<()> {
    let count = backend.partitions(&args.topic)?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= count => {
            return Err(UsageError(format!(
                "--partition {p} does not exist: topic {} has {count} partition(s)",
                args.topic
            ))
            .into());
        }
        Some(p) => vec![p],
        None => (0..count).collect(),
    };
    // A Fluvio stream delivers asynchronously: even a bounded read waits for records.
    let asynchronous = matches!(backend, Backend::Fluvio(_));
    let mut wakeup = backend.wakeup(args.follow || asynchronous)?;
    let mut readers = Vec::new();
    let mut stop_at = Vec::new();
    for &p in &partitions {
        let offsets = backend.offsets(&args.topic, p)?;
        let start = backend.resolve_start(&args.topic, p, offsets, args.from)?;
        let mut reader =
            backend.reader(&args.topic, p, start, usize::MAX, wakeup.as_mut(), None)?;
        if !args.follow {
            reader.read_until(offsets.1);
        }
        readers.push(reader);
        stop_at.push(offsets.1);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut left = args.max_records.unwrap_or(u64::MAX);
    loop {
        let mut progressed = false;
        let mut caught_up = true;
        for (i, reader) in readers.iter_mut().enumerate() {
            let bound = if args.follow {
                left
            } else {
                left.min(stop_at[i].saturating_sub(reader.position()))
            };
            let mut failed = None;
            let n = reader.read_before(bound.min(1024) as usize, i64::MAX, |rec| {
                if failed.is_none()
                    && let Err(e) =
                        print_record(&mut out, partitions[i], &rec, args.meta, args.pretty)
                {
                    failed = Some(e);
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            progressed |= n > 0;
            left -= n as u64;
            caught_up &= reader.position() >= stop_at[i];
            if left == 0 {
                out.flush()?;
                return Ok(());
            }
        }
        if progressed {
            continue;
        }
        out.flush()?;
        if !args.follow && (caught_up || !asynchronous) {
            let gaps: u64 = readers.iter().map(PartitionInput::gaps).sum();
            if gaps > 0 {
                eprintln!("consume: repaired {gaps} gaps in Fluvio's consumer stream");
            }
            return Ok(());
        }
        // The timeout is only a safety net against a lost notification.
        if let Some(w) = &wakeup {
            w.wait_timeout(Duration::from_secs(1));
        }
    }
}

fn print_record(
    out: &mut impl Write,
    partition: u32,
    rec: &crate::source::RecordRef<'_>,
    meta: bool,
    pretty: bool,
) -> anyhow::Result<()> {
    if !meta && !pretty {
        out.write_all(rec.value)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    let value = match serde_json::from_slice::<serde_json::Value>(rec.value) {
        Ok(v) => v,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(rec.value).into_owned()),
    };
    let timestamp = chrono::DateTime::from_timestamp_millis(rec.timestamp_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let doc = if meta {
        serde_json::json!({
            "partition": partition,
            "offset": rec.offset,
            "timestamp": timestamp,
            "key": rec.key.map(String::from_utf8_lossy),
            "value": value,
        })
    } else {
        value
    };
    if pretty {
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(out, "{doc}")?;
    }
    Ok(())
}

fn gen_config(args: &GenArgs) -> GenConfig {
    let d = GenConfig::default();
    GenConfig {
        seed: args.seed.unwrap_or(d.seed),
        customers: args.customers.unwrap_or(d.customers),
        events: args.events.unwrap_or(d.events),
        start: args.start.unwrap_or(d.start),
        disorder_ms: args.disorder_ms.unwrap_or(d.disorder_ms),
        late_fraction: args.late_fraction.unwrap_or(d.late_fraction),
        duplicate_fraction: args.duplicate_fraction.unwrap_or(d.duplicate_fraction),
        poison_fraction: args.poison_fraction.unwrap_or(d.poison_fraction),
        fulfilment: !args.no_fulfilment,
        missing_part_fraction: args
            .missing_part_fraction
            .unwrap_or(d.missing_part_fraction),
        delayed_part_fraction: args
            .delayed_part_fraction
            .unwrap_or(d.delayed_part_fraction),
    }
}

/// Partition count per generated topic, from the defaults and `--partitions` overrides.
fn gen_partitions(specs: &[String], topics: &[&str]) -> Result<Vec<u32>, UsageError> {
    let mut counts: Vec<u32> = topics
        .iter()
        .map(|t| match *t {
            datagen::PAGE_VIEWED => 4,
            _ => 2,
        })
        .collect();
    for spec in specs {
        let bad = || {
            UsageError(format!(
                "--partitions {spec:?}: expected N or TOPIC=N with N ≥ 1"
            ))
        };
        let (topic, n) = match spec.split_once('=') {
            Some((t, n)) => (Some(t), n),
            None => (None, spec.as_str()),
        };
        let n: u32 = n.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
        match topic {
            None => counts.iter_mut().for_each(|c| *c = n),
            Some(t) => {
                let i = topics.iter().position(|x| *x == t).ok_or_else(|| {
                    UsageError(format!(
                        "--partitions {spec:?}: {t} is not a generated topic ({})",
                        topics.join(", ")
                    ))
                })?;
                counts[i] = n;
            }
        }
    }
    Ok(counts)
}

fn generate(flags: &BrokerFlags, args: GenArgs) -> anyhow::Result<()> {
    let config = gen_config(&args);
    let mut generator = config
        .clone()
        .build()
        .map_err(|e| UsageError(e.to_string()))?;
    let topics: Vec<&str> = datagen::JOURNEY_TOPICS
        .iter()
        .chain(
            config
                .fulfilment
                .then_some(&datagen::FULFILMENT_TOPICS)
                .into_iter()
                .flatten(),
        )
        .copied()
        .collect();
    let partitions = gen_partitions(&args.partitions, &topics)?;
    let mut delays = vec![0i64; topics.len()];
    for spec in &args.delay {
        let (topic, d) = spec.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "--delay {spec}: expected TOPIC=DURATION, e.g. order.placed=1h"
            ))
        })?;
        let i = topics.iter().position(|t| *t == topic).ok_or_else(|| {
            UsageError(format!(
                "--delay {spec}: `{topic}` is not a generated topic ({})",
                topics.join(", ")
            ))
        })?;
        let d = parse_duration(d).map_err(|e| UsageError(format!("--delay {spec}: {e}")))?;
        delays[i] = d.as_millis().min(i64::MAX as u128) as i64;
    }
    if args.rate.is_some() && (args.out_dir.is_some() || !args.delay.is_empty()) {
        return Err(UsageError(
            "--rate appends live to the log: not with --out-dir or --delay".into(),
        )
        .into());
    }
    if args.rate == Some(0) {
        return Err(UsageError("--rate must be at least 1 record per second".into()).into());
    }
    let started = std::time::Instant::now();
    let destination = match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut files = Vec::new();
            for t in &topics {
                let path = dir.join(format!("{t}.jsonl"));
                let f = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                files.push((path, std::io::BufWriter::new(f)));
            }
            for rec in generator.by_ref() {
                let i = topics
                    .iter()
                    .position(|t| *t == rec.topic)
                    .expect("generated topic");
                let (path, f) = &mut files[i];
                // A JSON-lines file cannot hold a newline inside a record.
                let value: Vec<u8> = rec
                    .value
                    .iter()
                    .map(|&b| if b == b'\n' { b' ' } else { b })
                    .collect();
                f.write_all(&value)
                    .and_then(|()| f.write_all(b"\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            for (path, mut f) in files {
                f.flush()
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            dir.display().to_string()
        }
        None => {
            let backend = flags.tool_backend()?;
            let mut producers = Vec::new();
            for (t, &n) in topics.iter().zip(&partitions) {
                let name = broker_topic_name(&backend, t);
                backend.create_topic(&name, n)?;
                producers.push(TopicProducer::open(&backend, &name)?);
            }
            // Live: every 10 ms of the schedule, what is due is appended and flushed.
            let step = args.rate.map(|r| (u64::from(r) / 100).max(1));
            let mut sent = 0u64;
            for rec in generator.by_ref() {
                let i = topics
                    .iter()
                    .position(|t| *t == rec.topic)
                    .expect("generated topic");
                let key = rec.key.as_deref().map(str::as_bytes);
                match (args.rate, step) {
                    (Some(rate), Some(step)) => {
                        producers[i].send(key, &rec.value)?;
                        sent += 1;
                        if sent.is_multiple_of(step) {
                            for p in &mut producers {
                                p.flush()?;
                            }
                            let due =
                                std::time::Duration::from_secs_f64(sent as f64 / f64::from(rate));
                            std::thread::sleep(due.saturating_sub(started.elapsed()));
                        }
                    }
                    _ => {
                        producers[i].send_at(
                            key,
                            &rec.value,
                            rec.arrival_ms.saturating_add(delays[i]),
                        )?;
                    }
                }
            }
            for p in &mut producers {
                p.flush()?;
            }
            backend.describe()
        }
    };
    let summary = generator.summary();
    eprintln!(
        "generated {} records into {destination} in {:.1}s",
        summary.records,
        started.elapsed().as_secs_f64()
    );
    println!("{}", serde_json::to_string_pretty(summary)?);
    Ok(())
}

/// A generated topic's name on `backend`: Fluvio does not allow '.' in topic names, so
/// there `page.viewed` is `page-viewed`.
fn broker_topic_name(backend: &Backend, topic: &str) -> String {
    match backend {
        Backend::Embedded(_) => topic.to_owned(),
        Backend::Fluvio(_) => topic.replace('.', "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
