//! Semantic validation: turns the raw mirror into a [`Plan`], applying defaults and
//! reporting every meaning-level problem (missing fields, bad durations, pointers,
//! names, references to undeclared sources, kind-specific rules) with its position.
//!
//! Invariant: checks keep going after a problem — each part is validated on its own
//! and a broken part only suppresses the checks that depend on it (an unknown kind
//! skips its parameter checks, an undeclared topic skips the join-chain checks), so
//! one run reports everything without cascades of follow-up noise.

use super::diag::{Diagnostics, closest, list, quoted};
use super::duration::{self, Human};
use super::name::{FLUVIO_NAME_RULE, NAME_RULE, validate_fluvio_topic_name, validate_topic_name};
use super::plan::{
    Broker, CheckpointPolicy, Correlation, Join, JoinType, Limits, Outputs, Plan, Source,
    TimePolicy,
};
use super::pointer::JsonPointer;
use super::raw::{
    RawBroker, RawCheckpoint, RawCorrelate, RawJoin, RawLimits, RawOutput, RawSize, RawSource,
    RawTime, RawTopology,
};
use super::size::{self, Bytes};
use super::start::StartPosition;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// The correlation kinds and the `[correlate]` fields each one takes (besides `kind`).
const KINDS: [(&str, &[&str]); 5] = [
    ("session", &["gap", "max_duration"]),
    ("complete", &["required", "optional", "timeout", "deadline"]),
    ("interval", &["join"]),
    ("tumbling", &["size"]),
    ("hopping", &["size", "hop"]),
];

const BROKER_KINDS: [&str; 2] = ["embedded", "fluvio"];
const DEFAULT_BROKER_PATH: &str = "data/log";
const DEFAULT_OUT_OF_ORDERNESS: Duration = Duration::from_secs(5);
const DEFAULT_GRACE: Duration = Duration::ZERO;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);
/// Fluvio producer batching: a batch goes out when it holds this many bytes or has
/// waited this long (the outbox flushes at every publication anyway).
pub(crate) const DEFAULT_FLUVIO_LINGER: Duration = Duration::from_millis(10);
pub(crate) const DEFAULT_FLUVIO_BATCH_BYTES: u64 = 1 << 20;
const DEFAULT_MAX_RECORD_BYTES: u64 = 1 << 20;
const DEFAULT_MAX_EVENTS_PER_WINDOW: u64 = 100_000;
const MAX_MAX_EVENTS_PER_WINDOW: u64 = 100_000_000;
const MAX_MAX_RECORD_BYTES: u64 = 1 << 30;
const DEFAULT_STATE_CACHE: u64 = 64 << 20;
const DEFAULT_MAX_OPEN_WINDOWS_PER_SHARD: u64 = 1_000_000;
const DEFAULT_MAX_OUTPUT_RECORD_BYTES: u64 = 4 << 20;
/// The embedded log's largest record body.
const MAX_MAX_OUTPUT_RECORD_BYTES: u64 = 256 << 20;
/// Room for a record's key, window, counts and one event's id, topic and fields.
const OUTPUT_RECORD_OVERHEAD: u64 = 16 << 10;
/// 8 MiB memtables: a checkpoint's inserts into a memtable cost a search that is mostly
/// cache misses once the memtable outgrows the CPU caches. In a live job at 50,000
/// records/s with 10 ms checkpoints, 32 MiB memtables took 4.6 ms of CPU time per commit;
/// 8 MiB ones about a fifth less, and the journey benchmark's peak RSS fell by 63 MiB
/// at the same speed (its checkpoints of tens of MB are sorted and insert cheaply
/// whatever the size).
const DEFAULT_STATE_WRITE_BUFFER: u64 = 32 << 20;
const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
const MAX_SHARDS: i64 = 1024;

/// The start of the file: where problems about absent top-level things are reported.
const TOP: Range<usize> = 0..0;

/// Validates the raw file. Returns a plan only when no problem was reported, by this
/// pass or an earlier one.
pub(crate) fn validate(raw: RawTopology, d: &mut Diagnostics<'_>) -> Option<Plan> {
    let name = match &raw.name {
        Some(name) => check_name(name, "name", "job name", false, d),
        None => {
            missing(
                TOP,
                "name",
                "add name = \"customer-journey\" at the top of the file",
                d,
            );
            None
        }
    };
    let broker = validate_broker(raw.broker.as_ref(), d);
    let fluvio = matches!(broker, Some(Broker::Fluvio { .. }));
    let state = match (&raw.state, &name) {
        (Some(state), _) => directory(state, "state", "the state directory", d),
        (None, Some(name)) => Some(PathBuf::from(format!("data/state/{name}"))),
        (None, None) => None,
    };
    let shards = validate_shards(raw.shards.as_ref(), d);
    let sources = validate_sources(raw.source.as_deref().unwrap_or_default(), fluvio, d);
    let topics: Vec<&str> = sources.iter().filter_map(|s| s.topic()).collect();
    let correlation = match &raw.correlate {
        Some(correlate) => validate_correlate(correlate, &sources, d),
        None => missing_section(
            "correlate",
            "add a [correlate] section with a kind, e.g. kind = \"session\"",
            d,
        ),
    };
    let time = validate_time(raw.time.as_ref(), d);
    let output = match &raw.output {
        Some(output) => validate_output(output, &topics, fluvio, d),
        None => missing_section(
            "output",
            "add an [output] section with journeys = \"<topic>\"",
            d,
        ),
    };
    let limits = validate_limits(raw.limits.as_ref(), d);
    let checkpoint = validate_checkpoint(raw.checkpoint.as_ref(), d);

    let sources: Option<Vec<Source>> = sources.into_iter().map(|s| s.source).collect();
    let plan = Plan {
        name: name?,
        broker: broker?,
        state: state?,
        shards: shards?,
        sources: sources?,
        correlation: correlation?,
        time: time?,
        output: output?,
        limits: limits?,
        checkpoint: checkpoint?,
    };
    d.is_empty().then_some(plan)
}

// ---------------------------------------------------------------- small helpers

/// Reports a missing field, unless the shape check already reported (and removed)
/// a value there.
fn missing(at: Range<usize>, field: &str, hint: &str, d: &mut Diagnostics<'_>) {
    if d.reported(field) {
        return;
    }
    d.report(at, field, "missing required field", Some(hint.to_owned()));
}

/// Checks a job or topic name; `what` is "job name" or "topic name"; `fluvio` applies
/// Fluvio's stricter rule for topics (see the `name` module).
fn check_name(
    value: &Spanned<String>,
    field: &str,
    what: &str,
    fluvio: bool,
    d: &mut Diagnostics<'_>,
) -> Option<String> {
    let (checked, rule) = if fluvio {
        (
            validate_fluvio_topic_name(value.get_ref()),
            FLUVIO_NAME_RULE,
        )
    } else {
        (validate_topic_name(value.get_ref()), NAME_RULE)
    };
    match checked {
        Ok(()) => Some(value.get_ref().clone()),
        Err(reason) => {
            let message = format!("invalid {what} {}: {reason}", quoted(value.get_ref()));
            d.report(value.span(), field, message, Some(rule.to_owned()));
            None
        }
    }
}

/// Reports a required section that is absent (unless a problem was already reported for
/// it, e.g. a wrong type that removed it).
fn missing_section<T>(name: &str, hint: &str, d: &mut Diagnostics<'_>) -> Option<T> {
    if !d.reported(name) {
        d.report(
            TOP,
            name,
            format!("missing required section [{name}]"),
            Some(hint.to_owned()),
        );
    }
    None
}

/// Parses a spanned string, reporting a failure at its position with the error's hint.
fn parse_reported<T, E: std::fmt::Display>(
    value: &Spanned<String>,
    field: &str,
    d: &mut Diagnostics<'_>,
    parse: impl FnOnce(&str) -> Result<T, E>,
    hint: impl FnOnce(&E) -> String,
) -> Option<T> {
    match parse(value.get_ref()) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            d.report(value.span(), field, error.to_string(), Some(hint(&error)));
            None
        }
    }
}

fn parse_duration(
    value: &Spanned<String>,
    field: &str,
    d: &mut Diagnostics<'_>,
) -> Option<Duration> {
    parse_reported(value, field, d, duration::parse, |e| e.hint())
}

/// A directory path: not empty, no control characters (a newline or escape in a path is
/// a pasting accident, and would garble every message that names the directory).
fn directory(
    value: &Spanned<String>,
    field: &str,
    what: &str,
    d: &mut Diagnostics<'_>,
) -> Option<PathBuf> {
    let path = value.get_ref();
    if path.is_empty() {
        d.report(value.span(), field, format!("{what} is empty"), None);
        return None;
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        d.report(
            value.span(),
            field,
            format!("{what} contains the control character {c:?}"),
            Some("remove it from the path".to_owned()),
        );
        return None;
    }
    Some(PathBuf::from(path))
}

/// A duration that defaults when absent.
fn duration_or(
    value: Option<&Spanned<String>>,
    field: &str,
    default: Duration,
    d: &mut Diagnostics<'_>,
) -> Option<Duration> {
    value.map_or(Some(default), |v| parse_duration(v, field, d))
}

/// A duration that must be present and greater than zero.
fn required_positive(
    value: Option<&Spanned<String>>,
    table: Range<usize>,
    field: &str,
    hint: &str,
    d: &mut Diagnostics<'_>,
) -> Option<Duration> {
    match value {
        Some(v) => positive(v, field, d),
        None => {
            missing(table, field, hint, d);
            None
        }
    }
}

/// A duration that must be greater than zero.
fn positive(value: &Spanned<String>, field: &str, d: &mut Diagnostics<'_>) -> Option<Duration> {
    let parsed = parse_duration(value, field, d)?;
    if parsed.is_zero() {
        d.report(value.span(), field, "must be greater than 0s", None);
        return None;
    }
    Some(parsed)
}

fn parse_pointer(
    value: &Spanned<String>,
    field: &str,
    d: &mut Diagnostics<'_>,
) -> Option<JsonPointer> {
    parse_reported(value, field, d, JsonPointer::parse, |e| e.hint())
}

/// Reports a reference to a topic that no `[[source]]` declares.
fn check_declared(
    value: &Spanned<String>,
    field: &str,
    sources: &[&str],
    d: &mut Diagnostics<'_>,
) -> bool {
    let topic = value.get_ref().as_str();
    if sources.contains(&topic) {
        return true;
    }
    let hint = match (closest(topic, sources), sources.is_empty()) {
        (_, true) => "declare it with a [[source]] section".to_owned(),
        (Some(near), false) => format!(
            "did you mean {}? declared sources: {}",
            quoted(near),
            list(sources)
        ),
        (None, false) => format!("declared sources: {}", list(sources)),
    };
    d.report(
        value.span(),
        field,
        format!("{} is not a declared source", quoted(topic)),
        Some(hint),
    );
    false
}

// ---------------------------------------------------------------- sections

fn validate_broker(broker: Option<&Spanned<RawBroker>>, d: &mut Diagnostics<'_>) -> Option<Broker> {
    let Some(broker) = broker else {
        return Some(Broker::Embedded {
            path: PathBuf::from(DEFAULT_BROKER_PATH),
        });
    };
    let b = broker.get_ref();
    let Some(kind) = &b.kind else {
        missing(
            broker.span(),
            "broker.kind",
            "add kind = \"embedded\" or kind = \"fluvio\"",
            d,
        );
        return None;
    };
    let not_for = |span: Option<Range<usize>>, name: &str, d: &mut Diagnostics<'_>| {
        if let Some(span) = span {
            d.report(
                span,
                format!("broker.{name}"),
                format!("does not apply to broker kind {}", quoted(kind.get_ref())),
                Some(match kind.get_ref().as_str() {
                    "embedded" => "an embedded broker takes: path".to_owned(),
                    _ => "a fluvio broker takes: endpoint, linger, batch_bytes".to_owned(),
                }),
            );
        }
    };
    match kind.get_ref().as_str() {
        "embedded" => {
            let fluvio_only = [
                (b.endpoint.as_ref().map(Spanned::span), "endpoint"),
                (b.linger.as_ref().map(Spanned::span), "linger"),
                (b.batch_bytes.as_ref().map(Spanned::span), "batch_bytes"),
            ];
            let clean = fluvio_only.iter().all(|(span, _)| span.is_none());
            for (span, name) in fluvio_only {
                not_for(span, name, d);
            }
            let path = match &b.path {
                Some(path) => directory(path, "broker.path", "the log directory", d)?,
                None => PathBuf::from(DEFAULT_BROKER_PATH),
            };
            clean.then_some(Broker::Embedded { path })
        }
        "fluvio" => {
            not_for(b.path.as_ref().map(Spanned::span), "path", d);
            let endpoint = b.endpoint.as_ref().map(|e| check_endpoint(e, d));
            let linger = duration_or(b.linger.as_ref(), "broker.linger", DEFAULT_FLUVIO_LINGER, d);
            let batch_bytes = validate_size(
                b.batch_bytes.as_ref(),
                "broker.batch_bytes",
                DEFAULT_FLUVIO_BATCH_BYTES,
                1024..=(256 << 20),
                d,
            );
            let endpoint = match endpoint {
                Some(e) => Some(e?),
                None => None,
            };
            (b.path.is_none()).then_some(Broker::Fluvio {
                endpoint,
                linger: linger?,
                batch_bytes: batch_bytes?,
            })
        }
        other => {
            let hint = match closest(other, &BROKER_KINDS) {
                Some(near) => format!(
                    "did you mean {}? known kinds: embedded, fluvio",
                    quoted(near)
                ),
                None => "known kinds: embedded, fluvio".to_owned(),
            };
            d.report(
                kind.span(),
                "broker.kind",
                format!("unknown broker kind {}", quoted(other)),
                Some(hint),
            );
            None
        }
    }
}

/// `HOST:PORT`, the form Fluvio's client accepts.
fn check_endpoint(endpoint: &Spanned<String>, d: &mut Diagnostics<'_>) -> Option<String> {
    let text = endpoint.get_ref();
    let valid = text.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(char::is_whitespace)
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if valid {
        return Some(text.clone());
    }
    d.report(
        endpoint.span(),
        "broker.endpoint",
        format!("invalid endpoint {}: expected HOST:PORT", quoted(text)),
        Some("e.g. \"127.0.0.1:9003\"; leave it out to use the current Fluvio profile".to_owned()),
    );
    None
}

fn validate_shards(shards: Option<&Spanned<i64>>, d: &mut Diagnostics<'_>) -> Option<usize> {
    let requested = match shards {
        None => 0,
        Some(s) => match usize::try_from(*s.get_ref()) {
            Ok(n) if *s.get_ref() <= MAX_SHARDS => n,
            _ => {
                d.report(
                    s.span(),
                    "shards",
                    format!("must be between 0 and {MAX_SHARDS}, got {}", s.get_ref()),
                    Some("0 means one shard per core".to_owned()),
                );
                return None;
            }
        },
    };
    Some(if requested == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        requested
    })
}

/// A source as far as it validated: its topic may be known even when another field
/// is broken, so references to it do not cascade into "not a declared source".
struct CheckedSource {
    /// The topic, when valid and not a duplicate; with its span.
    topic: Option<Spanned<String>>,
    /// The topic as written, even when invalid: what other sections may refer to
    /// without being blamed for the source's own problem.
    written: Option<String>,
    index: usize,
    source: Option<Source>,
}

impl CheckedSource {
    fn topic(&self) -> Option<&str> {
        self.topic.as_ref().map(|t| t.get_ref().as_str())
    }

    fn written(&self) -> Option<&str> {
        self.written.as_deref()
    }
}

fn validate_sources(
    raw: &[Spanned<RawSource>],
    fluvio: bool,
    d: &mut Diagnostics<'_>,
) -> Vec<CheckedSource> {
    if raw.is_empty() && !d.reported("source") {
        d.report(
            TOP,
            "source",
            "no sources",
            Some(
                "declare each input topic in a [[source]] section with topic, key and time"
                    .to_owned(),
            ),
        );
    }
    let mut checked: Vec<CheckedSource> = Vec::with_capacity(raw.len());
    for (index, spanned) in raw.iter().enumerate() {
        let s = spanned.get_ref();
        let at = spanned.span();
        let path = |field: &str| format!("source[{index}].{field}");
        let mut topic = None;
        match &s.topic {
            None => missing(at.clone(), &path("topic"), "add topic = \"page.viewed\"", d),
            Some(t) => {
                if check_name(t, &path("topic"), "topic name", fluvio, d).is_some() {
                    match checked.iter().find(|c| c.topic() == Some(t.get_ref())) {
                        Some(first) => d.report(
                            t.span(),
                            path("topic"),
                            format!(
                                "topic {} is already a source (source[{}])",
                                quoted(t.get_ref()),
                                first.index
                            ),
                            Some(
                                "declare each topic once; remove one of the [[source]] sections"
                                    .to_owned(),
                            ),
                        ),
                        None => topic = Some(t.clone()),
                    }
                }
            }
        }
        let key = match &s.key {
            None => {
                missing(at.clone(), &path("key"), "add key = \"/customer_id\"", d);
                None
            }
            Some(k) => parse_pointer(k, &path("key"), d),
        };
        let time = match &s.time {
            None => {
                missing(at.clone(), &path("time"), "add time = \"/ts\"", d);
                None
            }
            Some(t) => parse_pointer(t, &path("time"), d),
        };
        let id = match &s.id {
            None => Some(None),
            Some(i) => parse_pointer(i, &path("id"), d).map(Some),
        };
        let start = match &s.start {
            None => Some(StartPosition::Beginning),
            Some(text) => {
                parse_reported(text, &path("start"), d, str::parse::<StartPosition>, |e| {
                    e.hint().to_owned()
                })
            }
        };
        let source = (|| {
            Some(Source {
                topic: topic.as_ref()?.get_ref().clone(),
                key: key?,
                time: time?,
                id: id?,
                start: start?,
            })
        })();
        checked.push(CheckedSource {
            topic,
            written: s.topic.as_ref().map(|t| t.get_ref().clone()),
            index,
            source,
        });
    }
    checked
}

fn validate_correlate(
    correlate: &Spanned<RawCorrelate>,
    sources: &[CheckedSource],
    d: &mut Diagnostics<'_>,
) -> Option<Correlation> {
    let c = correlate.get_ref();
    let at = correlate.span();
    let Some(kind) = &c.kind else {
        missing(
            at,
            "correlate.kind",
            "add kind = \"session\" (or complete, interval, tumbling, hopping)",
            d,
        );
        return None;
    };
    let Some((kind_name, allowed)) = KINDS.iter().find(|(k, _)| k == kind.get_ref()) else {
        let names: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
        let hint = match closest(kind.get_ref(), &names) {
            Some(near) => format!(
                "did you mean {}? known kinds: {}",
                quoted(near),
                list(&names)
            ),
            None => format!("known kinds: {}", list(&names)),
        };
        d.report(
            kind.span(),
            "correlate.kind",
            format!("unknown correlation kind {}", quoted(kind.get_ref())),
            Some(hint),
        );
        return None;
    };
    let mut applicable = true;
    for (field, span) in present_fields(c) {
        if !allowed.contains(&field) {
            d.report(
                span,
                format!("correlate.{field}"),
                format!("does not apply to kind {}", quoted(kind_name)),
                Some(format!(
                    "kind {} takes: {}",
                    quoted(kind_name),
                    list(allowed)
                )),
            );
            applicable = false;
        }
    }
    let mut declared: Vec<&str> = Vec::with_capacity(sources.len());
    for topic in sources.iter().filter_map(CheckedSource::written) {
        if !declared.contains(&topic) {
            declared.push(topic);
        }
    }
    let correlation = match *kind_name {
        "session" => {
            let gap = required_positive(
                c.gap.as_ref(),
                at.clone(),
                "correlate.gap",
                "add gap = \"30m\"",
                d,
            );
            let max_duration = match &c.max_duration {
                Some(m) => {
                    let max = positive(m, "correlate.max_duration", d)?;
                    if let Some(gap) = gap
                        && max < gap
                    {
                        d.report(
                            m.span(),
                            "correlate.max_duration",
                            format!(
                                "must be at least the gap ({}): a session could never last one gap",
                                super::duration::format(gap)
                            ),
                            Some("raise max_duration or lower gap; is a unit wrong?".to_owned()),
                        );
                        return None;
                    }
                    Some(max)
                }
                None => None,
            };
            Some(Correlation::Session {
                gap: gap?,
                max_duration,
            })
        }
        "complete" => validate_complete(c, at, sources, &declared, d),
        "interval" => validate_interval(c, at, sources, &declared, d),
        "tumbling" => {
            let size = required_positive(
                c.size.as_ref(),
                at,
                "correlate.size",
                "add size = \"1m\"",
                d,
            )?;
            Some(Correlation::Tumbling { size })
        }
        _ => {
            let size = required_positive(
                c.size.as_ref(),
                at.clone(),
                "correlate.size",
                "add size = \"5m\"",
                d,
            );
            let hop = required_positive(c.hop.as_ref(), at, "correlate.hop", "add hop = \"1m\"", d);
            let (size, hop) = (size?, hop?);
            if hop > size {
                if let Some(h) = &c.hop {
                    d.report(
                        h.span(),
                        "correlate.hop",
                        format!("hop {} is longer than size {}", Human(hop), Human(size)),
                        Some(
                            "hop must be at most size; hop = size gives tumbling windows"
                                .to_owned(),
                        ),
                    );
                }
                return None;
            }
            Some(Correlation::Hopping { size, hop })
        }
    };
    correlation.filter(|_| applicable)
}

/// The `[correlate]` fields that are set, besides `kind`, with their spans.
fn present_fields(c: &RawCorrelate) -> Vec<(&'static str, Range<usize>)> {
    let strings = [
        ("gap", &c.gap),
        ("max_duration", &c.max_duration),
        ("timeout", &c.timeout),
        ("size", &c.size),
        ("hop", &c.hop),
    ];
    let mut present: Vec<(&'static str, Range<usize>)> = strings
        .into_iter()
        .filter_map(|(name, v)| v.as_ref().map(|v| (name, v.span())))
        .collect();
    present.extend(c.required.as_ref().map(|v| ("required", v.span())));
    present.extend(c.optional.as_ref().map(|v| ("optional", v.span())));
    present.extend(c.deadline.as_ref().map(|v| ("deadline", v.span())));
    present.extend(c.join.as_ref().map(|v| ("join", v.span())));
    present
}

/// Reports every valid source that `used` leaves out: its events would never be
/// correlated, which is certainly not what the author meant.
fn check_all_used(
    sources: &[CheckedSource],
    used: &[&str],
    hint: impl Fn(&str) -> String,
    d: &mut Diagnostics<'_>,
) -> bool {
    let mut all = true;
    for source in sources {
        if let Some(topic) = &source.topic
            && !used.contains(&topic.get_ref().as_str())
        {
            d.report(
                topic.span(),
                format!("source[{}].topic", source.index),
                format!(
                    "source {} is not part of the correlation",
                    quoted(topic.get_ref())
                ),
                Some(hint(topic.get_ref())),
            );
            all = false;
        }
    }
    all
}

fn validate_complete(
    c: &RawCorrelate,
    at: Range<usize>,
    sources: &[CheckedSource],
    declared: &[&str],
    d: &mut Diagnostics<'_>,
) -> Option<Correlation> {
    let timeout = required_positive(
        c.timeout.as_ref(),
        at.clone(),
        "correlate.timeout",
        "add timeout = \"1h\"",
        d,
    );
    let mut ok = true;
    // Topics listed so far in required and optional, to catch repeats across both.
    let mut seen: Vec<String> = Vec::new();
    let required = match &c.required {
        Some(list) if list.get_ref().is_empty() => {
            d.report(
                list.span(),
                "correlate.required",
                "lists no source",
                Some("a complete correlation needs at least one required source".to_owned()),
            );
            ok = false;
            Vec::new()
        }
        Some(list) => topic_list(list, "required", declared, &mut seen, &mut ok, d),
        None => {
            missing(
                at,
                "correlate.required",
                "add required = [\"payment.processed\", \"shipment.created\"]",
                d,
            );
            ok = false;
            Vec::new()
        }
    };
    let optional = match &c.optional {
        Some(list) => topic_list(list, "optional", declared, &mut seen, &mut ok, d),
        None => Vec::new(),
    };
    // A misspelt entry was reported already; calling its source unused would be noise.
    if ok {
        ok = check_all_used(
            sources,
            &seen.iter().map(String::as_str).collect::<Vec<_>>(),
            |_| {
                "add it to correlate.required or correlate.optional, or remove the [[source]]"
                    .to_owned()
            },
            d,
        );
    }
    let mut deadlines = BTreeMap::new();
    if let Some(table) = &c.deadline {
        for (topic, value) in table.get_ref() {
            let field = super::diag::join_path("correlate.deadline", topic.get_ref());
            if !required.contains(topic.get_ref()) {
                let hint = if required.is_empty() {
                    "deadlines apply to required sources".to_owned()
                } else {
                    format!(
                        "deadlines apply to required sources: {}",
                        required.join(", ")
                    )
                };
                d.report(
                    topic.span(),
                    field,
                    format!("{} is not a required source", quoted(topic.get_ref())),
                    Some(hint),
                );
                ok = false;
                continue;
            }
            let Some(deadline) = positive(value, &field, d) else {
                ok = false;
                continue;
            };
            if let Some(timeout) = timeout
                && deadline > timeout
            {
                d.report(
                    value.span(),
                    field,
                    format!(
                        "deadline {} is longer than the timeout {}",
                        Human(deadline),
                        Human(timeout)
                    ),
                    Some("a deadline can only bring the INCOMPLETE report forward".to_owned()),
                );
                ok = false;
                continue;
            }
            deadlines.insert(topic.get_ref().clone(), deadline);
        }
    }
    let timeout = timeout?;
    if !ok {
        return None;
    }
    for topic in &required {
        deadlines.entry(topic.clone()).or_insert(timeout);
    }
    Some(Correlation::Complete {
        required,
        optional,
        timeout,
        deadlines,
    })
}

/// The topics of `required` or `optional`: each must be declared and listed once.
fn topic_list(
    list: &Spanned<Vec<Spanned<String>>>,
    field: &str,
    declared: &[&str],
    seen: &mut Vec<String>,
    ok: &mut bool,
    d: &mut Diagnostics<'_>,
) -> Vec<String> {
    let mut topics = Vec::with_capacity(list.get_ref().len());
    for (i, topic) in list.get_ref().iter().enumerate() {
        let item = format!("correlate.{field}[{i}]");
        if !check_declared(topic, &item, declared, d) {
            *ok = false;
        } else if seen.contains(topic.get_ref()) {
            d.report(
                topic.span(),
                item,
                format!("{} is listed twice", quoted(topic.get_ref())),
                Some("list each source once, as required or as optional".to_owned()),
            );
            *ok = false;
        } else {
            seen.push(topic.get_ref().clone());
            topics.push(topic.get_ref().clone());
        }
    }
    topics
}

fn validate_interval(
    c: &RawCorrelate,
    at: Range<usize>,
    sources: &[CheckedSource],
    declared: &[&str],
    d: &mut Diagnostics<'_>,
) -> Option<Correlation> {
    let raw_joins: &[Spanned<RawJoin>] = match &c.join {
        Some(joins) if !joins.get_ref().is_empty() => joins.get_ref(),
        None if d.reported("correlate.join") => return None,
        _ => {
            d.report(
                at,
                "correlate.join",
                "missing required [[correlate.join]] for kind \"interval\"",
                Some(
                    "add a [[correlate.join]] section with left, right, before and after"
                        .to_owned(),
                ),
            );
            return None;
        }
    };
    let mut ok = true;
    // Topics in the chain so far; a later join anchors on one of them.
    let mut chain: Vec<&str> = Vec::new();
    let mut joins = Vec::with_capacity(raw_joins.len());
    for (i, spanned) in raw_joins.iter().enumerate() {
        let j = spanned.get_ref();
        let path = |field: &str| format!("correlate.join[{i}].{field}");
        let left = join_side(spanned, &j.left, &path("left"), "page.viewed", declared, d);
        let right = join_side(
            spanned,
            &j.right,
            &path("right"),
            "cart.updated",
            declared,
            d,
        );
        let before = match &j.before {
            Some(b) => parse_duration(b, &path("before"), d),
            None => {
                missing(
                    spanned.span(),
                    &path("before"),
                    "add before = \"5m\" (how long right may precede left)",
                    d,
                );
                None
            }
        };
        let after = match &j.after {
            Some(a) => parse_duration(a, &path("after"), d),
            None => {
                missing(
                    spanned.span(),
                    &path("after"),
                    "add after = \"5m\" (how long right may follow left)",
                    d,
                );
                None
            }
        };
        let join_type = match &j.join_type {
            None => Some(JoinType::Inner),
            Some(t) => match JoinType::NAMES.iter().position(|n| n == t.get_ref()) {
                Some(index) => Some([JoinType::Inner, JoinType::Left, JoinType::Outer][index]),
                None => {
                    d.report(
                        t.span(),
                        path("type"),
                        format!("unknown join type {}", quoted(t.get_ref())),
                        Some("known types: inner, left, outer".to_owned()),
                    );
                    None
                }
            },
        };
        if let (Some(l), Some(r)) = (left, right) {
            let (l_name, r_name) = (l.get_ref().as_str(), r.get_ref().as_str());
            if l_name == r_name {
                d.report(
                    r.span(),
                    path("right"),
                    format!("{} cannot join itself", quoted(r_name)),
                    Some("left and right must be different sources".to_owned()),
                );
                ok = false;
            } else if i > 0 && !chain.contains(&l_name) {
                d.report(
                    l.span(),
                    path("left"),
                    format!("{} is not in the chain yet", quoted(l_name)),
                    Some(format!(
                        "a later join's left must be a topic joined before it: {}",
                        list(&chain)
                    )),
                );
                ok = false;
            } else if chain.contains(&r_name) {
                d.report(
                    r.span(),
                    path("right"),
                    format!("{} is already in the chain", quoted(r_name)),
                    Some("each source joins the chain once".to_owned()),
                );
                ok = false;
            } else {
                if i == 0 {
                    chain.push(l_name);
                }
                chain.push(r_name);
            }
        } else {
            ok = false;
        }
        if let (Some(l), Some(r), Some(before), Some(after), Some(join_type)) =
            (left, right, before, after, join_type)
        {
            joins.push(Join {
                left: l.get_ref().clone(),
                right: r.get_ref().clone(),
                before,
                after,
                join_type,
            });
        } else {
            ok = false;
        }
    }
    // A broken join leaves topics out of the chain; only blame sources when it is whole.
    if ok {
        ok = check_all_used(
            sources,
            &chain,
            |topic| {
                format!(
                    "add a [[correlate.join]] with right = {}, or remove the [[source]]",
                    quoted(topic)
                )
            },
            d,
        );
    }
    ok.then_some(Correlation::Interval { joins })
}

/// A join's `left` or `right`: present and a declared source.
fn join_side<'a>(
    join: &Spanned<RawJoin>,
    value: &'a Option<Spanned<String>>,
    field: &str,
    example: &str,
    declared: &[&str],
    d: &mut Diagnostics<'_>,
) -> Option<&'a Spanned<String>> {
    match value {
        None => {
            let name = field.rsplit('.').next().unwrap_or(field);
            missing(
                join.span(),
                field,
                &format!("add {name} = \"{example}\""),
                d,
            );
            None
        }
        Some(topic) => check_declared(topic, field, declared, d).then_some(topic),
    }
}

fn validate_time(time: Option<&Spanned<RawTime>>, d: &mut Diagnostics<'_>) -> Option<TimePolicy> {
    let Some(time) = time else {
        return Some(TimePolicy {
            out_of_orderness: DEFAULT_OUT_OF_ORDERNESS,
            grace: DEFAULT_GRACE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        });
    };
    let t = time.get_ref();
    let out_of_orderness = duration_or(
        t.out_of_orderness.as_ref(),
        "time.out_of_orderness",
        DEFAULT_OUT_OF_ORDERNESS,
        d,
    );
    let grace = duration_or(t.grace.as_ref(), "time.grace", DEFAULT_GRACE, d);
    let idle_timeout = match &t.idle_timeout {
        Some(v) => positive(v, "time.idle_timeout", d),
        None => Some(DEFAULT_IDLE_TIMEOUT),
    };
    Some(TimePolicy {
        out_of_orderness: out_of_orderness?,
        grace: grace?,
        idle_timeout: idle_timeout?,
    })
}

fn validate_output(
    output: &Spanned<RawOutput>,
    sources: &[&str],
    fluvio: bool,
    d: &mut Diagnostics<'_>,
) -> Option<Outputs> {
    let o = output.get_ref();
    let topic = |value: &Spanned<String>, field: &str, d: &mut Diagnostics<'_>| {
        let name = check_name(value, field, "topic name", fluvio, d)?;
        if sources.contains(&name.as_str()) {
            d.report(
                value.span(),
                field,
                format!("output topic {} is also a source", quoted(&name)),
                Some("braid would read its own output; choose another topic".to_owned()),
            );
            return None;
        }
        Some(name)
    };
    let journeys = match &o.journeys {
        Some(j) => topic(j, "output.journeys", d),
        None => {
            missing(
                output.span(),
                "output.journeys",
                "add journeys = \"customer.journey\"",
                d,
            );
            None
        }
    };
    let late = o.late.as_ref().map(|l| topic(l, "output.late", d));
    let dead_letters = o
        .dead_letters
        .as_ref()
        .map(|l| topic(l, "output.dead_letters", d));
    let retry_for = duration_or(
        o.retry_for.as_ref(),
        "output.retry_for",
        DEFAULT_RETRY_FOR,
        d,
    );
    let journeys = journeys?;
    Some(Outputs {
        retry_for: retry_for?,
        late: late.unwrap_or_else(|| Some(journeys.clone()))?,
        dead_letters: dead_letters.unwrap_or_else(|| Some(journeys.clone()))?,
        include_payload: o.include_payload.as_ref().is_none_or(|p| *p.get_ref()),
        journeys,
    })
}

/// A count field of `[limits]`: a default when absent, else within `1..=max`.
fn validate_count(
    value: Option<&Spanned<i64>>,
    field: &str,
    default: u64,
    max: u64,
    d: &mut Diagnostics<'_>,
) -> Option<u64> {
    let Some(value) = value else {
        return Some(default);
    };
    match u64::try_from(*value.get_ref()) {
        Ok(n) if (1..=max).contains(&n) => Some(n),
        _ => {
            d.report(
                value.span(),
                field,
                format!("must be between 1 and {max}, got {}", value.get_ref()),
                None,
            );
            None
        }
    }
}

fn validate_limits(limits: Option<&Spanned<RawLimits>>, d: &mut Diagnostics<'_>) -> Option<Limits> {
    let l = limits.map(Spanned::get_ref);
    let max_events = validate_count(
        l.and_then(|l| l.max_events_per_window.as_ref()),
        "limits.max_events_per_window",
        DEFAULT_MAX_EVENTS_PER_WINDOW,
        MAX_MAX_EVENTS_PER_WINDOW,
        d,
    );
    let max_open_windows = validate_count(
        l.and_then(|l| l.max_open_windows_per_shard.as_ref()),
        "limits.max_open_windows_per_shard",
        DEFAULT_MAX_OPEN_WINDOWS_PER_SHARD,
        1_000_000_000,
        d,
    );
    let max_record_bytes = validate_size(
        l.and_then(|l| l.max_record_bytes.as_ref()),
        "limits.max_record_bytes",
        DEFAULT_MAX_RECORD_BYTES,
        1..=MAX_MAX_RECORD_BYTES,
        d,
    );
    let state_cache = validate_size(
        l.and_then(|l| l.state_cache.as_ref()),
        "limits.state_cache",
        DEFAULT_STATE_CACHE,
        1 << 20..=64 << 30,
        d,
    );
    let state_write_buffer = validate_size(
        l.and_then(|l| l.state_write_buffer.as_ref()),
        "limits.state_write_buffer",
        DEFAULT_STATE_WRITE_BUFFER,
        4 << 20..=64 << 30,
        d,
    );
    let max_record_bytes = max_record_bytes?;
    // One event with its payload, key, id and topic must fit in a part.
    let least = max_record_bytes.saturating_add(OUTPUT_RECORD_OVERHEAD);
    let output = l.and_then(|l| l.max_output_record_bytes.as_ref());
    let max_output_record_bytes = validate_size(
        output,
        "limits.max_output_record_bytes",
        DEFAULT_MAX_OUTPUT_RECORD_BYTES.max(least),
        1..=MAX_MAX_OUTPUT_RECORD_BYTES,
        d,
    )
    .and_then(|n| match output {
        Some(value) if n < least => {
            d.report(
                value.span(),
                "limits.max_output_record_bytes",
                format!(
                    "must be at least max_record_bytes + {} ({}), got {}",
                    Bytes(OUTPUT_RECORD_OVERHEAD),
                    Bytes(least),
                    Bytes(n)
                ),
                Some("one input record must fit in an output record".to_owned()),
            );
            None
        }
        _ => Some(n),
    });
    Some(Limits {
        max_open_windows_per_shard: max_open_windows?,
        max_record_bytes,
        max_output_record_bytes: max_output_record_bytes?,
        max_events_per_window: max_events?,
        state_cache: state_cache?,
        state_write_buffer: state_write_buffer?,
    })
}

/// A size field of `[limits]`: a default when absent, else within `range`.
fn validate_size(
    value: Option<&Spanned<RawSize>>,
    field: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    d: &mut Diagnostics<'_>,
) -> Option<u64> {
    let Some(value) = value else {
        return Some(default);
    };
    let bytes = match value.get_ref() {
        RawSize::Bytes(n) => u64::try_from(*n).ok(),
        RawSize::Text(text) => match size::parse(text) {
            Ok(n) => Some(n),
            Err(error) => {
                d.report(
                    value.span(),
                    field,
                    error.to_string(),
                    Some(error.hint().to_owned()),
                );
                return None;
            }
        },
    };
    match bytes {
        Some(n) if range.contains(&n) => Some(n),
        _ => {
            let got = match value.get_ref() {
                RawSize::Bytes(n) => n.to_string(),
                RawSize::Text(text) => text.clone(),
            };
            d.report(
                value.span(),
                field,
                format!(
                    "must be between {} and {}, got {got}",
                    Bytes(*range.start()),
                    Bytes(*range.end())
                ),
                None,
            );
            None
        }
    }
}

fn validate_checkpoint(
    checkpoint: Option<&Spanned<RawCheckpoint>>,
    d: &mut Diagnostics<'_>,
) -> Option<CheckpointPolicy> {
    let Some(checkpoint) = checkpoint else {
        return Some(CheckpointPolicy {
            interval: DEFAULT_CHECKPOINT_INTERVAL,
            max_records: None,
        });
    };
    let c = checkpoint.get_ref();
    let interval = match &c.interval {
        Some(i) => positive(i, "checkpoint.interval", d),
        None => Some(DEFAULT_CHECKPOINT_INTERVAL),
    };
    let max_records = match &c.max_records {
        None => Some(None),
        Some(m) => match u64::try_from(*m.get_ref()) {
            Ok(n) if n >= 1 => Some(Some(n)),
            _ => {
                d.report(
                    m.span(),
                    "checkpoint.max_records",
                    format!("must be at least 1, got {}", m.get_ref()),
                    Some("leave it out to checkpoint on the interval only".to_owned()),
                );
                None
            }
        },
    };
    Some(CheckpointPolicy {
        interval: interval?,
        max_records: max_records?,
    })
}
