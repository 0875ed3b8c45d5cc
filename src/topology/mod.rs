//! Topology files → validated [`Plan`]s.
//!
//! A topology file (TOML, one per use case, see `docs/topology.md`) names the job, the
//! broker, the state directory, the sources, the correlation, the time policy and the
//! outputs. [`load`]/[`parse`] turn it into a [`Plan`] or into [`TopologyErrors`]
//! listing *every* problem at once, each with line, column, field path and a hint.
//!
//! Pipeline, each stage in its own module:
//! 1. TOML syntax → a spanned tree (`toml::de::DeTable`); a syntax error is the only
//!    problem reported, as nothing after it can be trusted.
//! 2. `shape`: the tree is checked against the schema in `raw` — unknown fields and
//!    wrong TOML types are reported and pruned.
//! 3. `raw`: the pruned tree deserializes into the serde mirror (`deny_unknown_fields`,
//!    every value spanned, every field optional).
//! 4. `validate`: meaning — required fields, defaults, durations, pointers, names,
//!    references between sections, kind-specific rules — producing the [`Plan`].
//!
//! Invariant: a `Plan` is returned only when no stage reported anything.

mod diag;
pub mod duration;
pub mod name;
mod plan;
pub mod pointer;
mod raw;
mod shape;
pub mod size;
pub mod start;
mod validate;

pub use diag::{Problem, TopologyErrors};
pub use name::{NameError, validate_topic_name};
pub use plan::{
    Broker, CheckpointPolicy, Correlation, Fingerprint, FingerprintError, Join, JoinType, Limits,
    Outputs, Plan, Source, TimePolicy,
};
pub use pointer::{JsonPointer, PointerError};
pub use start::{StartPosition, StartPositionError};

use diag::Diagnostics;
use serde::Deserialize;
use std::path::Path;

/// Reads, parses and validates a topology file.
pub fn load(path: &Path) -> Result<Plan, TopologyErrors> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| TopologyErrors {
        problems: vec![Problem {
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the topology file: {error}"),
            hint: None,
        }],
        file: file.clone(),
    })?;
    match std::str::from_utf8(&bytes) {
        Ok(source) => parse(source, &file),
        Err(error) => {
            let valid = &bytes[..error.valid_up_to()];
            // The prefix is valid UTF-8 by definition of valid_up_to.
            let prefix = std::str::from_utf8(valid).unwrap_or_default();
            let (line, column) = Diagnostics::new(prefix).position(prefix.len());
            Err(TopologyErrors {
                file,
                problems: vec![Problem {
                    line,
                    column,
                    field: String::new(),
                    message: "the file is not valid UTF-8".to_owned(),
                    hint: Some("save the topology file as UTF-8".to_owned()),
                }],
            })
        }
    }
}

/// Parses and validates topology `source`; `file_name` only labels the problems.
pub fn parse(source: &str, file_name: &str) -> Result<Plan, TopologyErrors> {
    let mut d = Diagnostics::new(source);
    let fail = |d: Diagnostics<'_>| TopologyErrors {
        file: file_name.to_owned(),
        problems: d.into_problems(),
    };
    let mut document = match toml::de::DeTable::parse(source) {
        Ok(document) => document,
        Err(error) => {
            let at = error.span().unwrap_or(0..0);
            d.report(at, "", format!("invalid TOML: {}", error.message()), None);
            return Err(fail(d));
        }
    };
    shape::check(&mut document, &mut d);
    let raw = match raw::RawTopology::deserialize(toml::de::Deserializer::from(document)) {
        Ok(raw) => raw,
        Err(error) => {
            // Unreachable while `raw`'s schema and structs agree (a unit test checks);
            // still a problem report rather than a panic.
            let at = error.span().unwrap_or(0..0);
            d.report(at, "", error.message().to_owned(), None);
            return Err(fail(d));
        }
    };
    match validate::validate(raw, &mut d) {
        Some(plan) => Ok(plan),
        None => Err(fail(d)),
    }
}

#[cfg(test)]
mod tests {
    use super::validate::{DEFAULT_FLUVIO_BATCH_BYTES, DEFAULT_FLUVIO_LINGER};
    use super::*;
    use std::time::Duration;

    const FILE: &str = "t.toml";

    /// A valid session topology; tests derive broken variants from it by replacing
    /// one line, so each asserts exactly one problem.
    const BASE: &str = r#"name = "journeys"

[[source]]
topic = "page.viewed"
key = "/customer_id"
time = "/ts"

[[source]]
topic = "order.placed"
key = "/customer_id"
time = "/ts"

[correlate]
kind = "session"
gap = "30m"

[output]
journeys = "customer.journey"
"#;

    fn with(replace: &str, by: &str) -> String {
        assert!(BASE.contains(replace), "BASE lacks {replace:?}");
        BASE.replacen(replace, by, 1)
    }

    fn problems(source: &str) -> Vec<String> {
        match parse(source, FILE) {
            Ok(plan) => panic!("expected problems, got {plan:?}"),
            Err(errors) => {
                assert_eq!(errors.file, FILE);
                errors.to_string().lines().map(str::to_owned).collect()
            }
        }
    }

    #[test]
    fn shipped_customer_journey_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/customer_journey.toml");
        let plan = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.name, "customer-journey");
        let topics: Vec<&str> = plan.sources.iter().map(|s| s.topic.as_str()).collect();
        assert_eq!(topics, ["page.viewed", "cart.updated", "order.placed"]);
        for source in &plan.sources {
            assert_eq!(source.key.as_str(), "/customer_id");
            assert_eq!(source.time.as_str(), "/ts");
            assert_eq!(
                source.id.as_ref().map(JsonPointer::as_str),
                Some("/event_id")
            );
            assert_eq!(source.start, StartPosition::Beginning);
        }
        assert_eq!(
            plan.correlation,
            Correlation::Session {
                gap: Duration::from_secs(30 * 60),
                max_duration: None
            }
        );
        assert_eq!(plan.output.journeys, "customer.journey");
        assert_eq!(plan.output.late, "customer.journey.late");
        assert_eq!(plan.output.dead_letters, "customer.journey.dlq");
    }

    #[test]
    fn every_shipped_topology_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
        assert!(count >= 1);
    }

    #[test]
    fn defaults_apply() {
        let plan = parse(BASE, FILE).unwrap();
        assert_eq!(
            plan.broker,
            Broker::Embedded {
                path: "data/log".into()
            }
        );
        assert_eq!(plan.state, Path::new("data/state/journeys"));
        assert!(plan.shards >= 1);
        assert_eq!(plan.sources[0].id, None);
        assert_eq!(
            plan.time,
            TimePolicy {
                out_of_orderness: Duration::from_secs(5),
                grace: Duration::ZERO,
                idle_timeout: Duration::from_secs(30),
            }
        );
        assert_eq!(
            plan.output,
            Outputs {
                journeys: "customer.journey".into(),
                late: "customer.journey".into(),
                dead_letters: "customer.journey".into(),
                include_payload: true,
                retry_for: Duration::from_secs(30),
            }
        );
        assert_eq!(plan.limits.max_record_bytes, 1 << 20);
        assert_eq!(
            (plan.limits.state_cache, plan.limits.state_write_buffer),
            (64 << 20, 32 << 20)
        );
        assert_eq!(plan.limits.max_output_record_bytes, 4 << 20);
        assert_eq!(plan.limits.max_open_windows_per_shard, 1_000_000);
        assert_eq!(
            plan.checkpoint,
            CheckpointPolicy {
                interval: Duration::from_secs(1),
                max_records: None
            }
        );
    }

    #[test]
    fn every_field_set_explicitly() {
        let source = r#"
name = "orders"
broker = { kind = "fluvio", endpoint = "fluvio.internal:9003", linger = "5ms", batch_bytes = "512KiB" }
state = "/var/lib/braid/orders"
shards = 3

[[source]]
topic = "payment-processed"
key = "/order_id"
time = "/at"
id = "/id"
start = "offset:42"

[[source]]
topic = "shipment-created"
key = "/order_id"
time = "/at"
start = "timestamp:2024-05-01T00:00:00Z"

[[source]]
topic = "coupon-used"
key = "/order_id"
time = "/at"
start = "end"

[correlate]
kind = "complete"
required = ["payment-processed", "shipment-created"]
optional = ["coupon-used"]
timeout = "2h"
deadline = { "payment-processed" = "15m" }

[time]
out_of_orderness = "10s"
grace = "1m"
idle_timeout = "2m"

[output]
journeys = "order-fulfilment"
late = "order-fulfilment"
dead_letters = "order-dlq"
include_payload = false
retry_for = "2m"

[limits]
max_record_bytes = 65536
state_cache = "256MiB"
state_write_buffer = "1GiB"

[checkpoint]
interval = "500ms"
max_records = 10000
"#;
        let plan = parse(source, FILE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plan.broker,
            Broker::Fluvio {
                endpoint: Some("fluvio.internal:9003".into()),
                linger: Duration::from_millis(5),
                batch_bytes: 512 << 10,
            }
        );
        assert_eq!(plan.state, Path::new("/var/lib/braid/orders"));
        assert_eq!(plan.shards, 3);
        assert_eq!(plan.sources[0].start, StartPosition::Offset(42));
        assert_eq!(
            plan.sources[1].start,
            StartPosition::Timestamp(1_714_521_600_000)
        );
        assert_eq!(plan.sources[2].start, StartPosition::End);
        assert_eq!(
            plan.correlation,
            Correlation::Complete {
                required: vec!["payment-processed".into(), "shipment-created".into()],
                optional: vec!["coupon-used".into()],
                timeout: Duration::from_secs(7200),
                deadlines: [
                    ("payment-processed".to_owned(), Duration::from_secs(900)),
                    ("shipment-created".to_owned(), Duration::from_secs(7200)),
                ]
                .into(),
            }
        );
        assert_eq!(plan.time.grace, Duration::from_secs(60));
        // Naming the journeys topic again for late reports is redundant, not an error.
        assert_eq!(plan.output.late, "order-fulfilment");
        assert_eq!(plan.output.dead_letters, "order-dlq");
        assert!(!plan.output.include_payload);
        assert_eq!(plan.output.retry_for, Duration::from_secs(120));
        assert_eq!(plan.limits.max_record_bytes, 65536);
        assert_eq!(
            (plan.limits.state_cache, plan.limits.state_write_buffer),
            (256 << 20, 1 << 30)
        );
        assert_eq!(plan.checkpoint.interval, Duration::from_millis(500));
        assert_eq!(plan.checkpoint.max_records, Some(10000));
    }

    // ------------------------------------------------------------ the mistakes

    #[test]
    fn unknown_field_with_suggestion() {
        assert_eq!(
            problems(&with(
                "gap = \"30m\"",
                "gap = \"30m\"\nmax_duraton = \"4h\""
            )),
            [
                "t.toml:16:1: correlate.max_duraton: unknown field (hint: did you mean `max_duration`?)"
            ]
        );
        assert_eq!(
            problems(&with("[output]", "[outputs]")),
            [
                "t.toml:1:1: output: missing required section [output] (hint: add an [output] section with journeys = \"<topic>\")",
                "t.toml:17:2: outputs: unknown field (hint: did you mean `output`?)",
            ]
        );
    }

    #[test]
    fn wrong_type() {
        assert_eq!(
            problems(&with("gap = \"30m\"", "gap = 30")),
            [
                "t.toml:15:7: correlate.gap: expected a duration string, found integer 30 (hint: durations are strings with a unit: \"30s\", \"30m\")"
            ]
        );
        let single_table = "name = \"x\"\n[source]\ntopic = \"a\"\n[correlate]\nkind = \"session\"\ngap = \"1m\"\n[output]\njourneys = \"j\"\n";
        assert_eq!(
            problems(single_table),
            [
                "t.toml:2:1: source: expected an array of tables, found a table (hint: write [[source]] (double brackets) for each entry)",
            ]
        );
    }

    #[test]
    fn bad_duration() {
        assert_eq!(
            problems(&with("gap = \"30m\"", "gap = \"30 minutes\"")),
            [
                "t.toml:15:7: correlate.gap: invalid duration \"30 minutes\" (hint: use a number and a unit: 250ms, 5s, 30m, 2h, 1d)"
            ]
        );
        assert_eq!(
            problems(&with("gap = \"30m\"", "gap = \"-5s\"")),
            [
                "t.toml:15:7: correlate.gap: invalid duration \"-5s\": durations cannot be negative (hint: use a number and a unit: 250ms, 5s, 30m, 2h, 1d)"
            ]
        );
        assert_eq!(
            problems(&with("gap = \"30m\"", "gap = \"0s\"")),
            ["t.toml:15:7: correlate.gap: must be greater than 0s"]
        );
        assert_eq!(
            problems(&with(
                "gap = \"30m\"",
                "gap = \"30m\"\nmax_duration = \"10m\""
            )),
            [
                "t.toml:16:16: correlate.max_duration: must be at least the gap (30m): a session could never last one gap (hint: raise max_duration or lower gap; is a unit wrong?)"
            ]
        );
    }

    #[test]
    fn unknown_correlation_kind() {
        assert_eq!(
            problems(&with("kind = \"session\"", "kind = \"sesion\"")),
            [
                "t.toml:14:8: correlate.kind: unknown correlation kind \"sesion\" (hint: did you mean \"session\"? known kinds: session, complete, interval, tumbling, hopping)"
            ]
        );
        assert_eq!(
            problems(&with("kind = \"session\"", "kind = \"window\"")),
            [
                "t.toml:14:8: correlate.kind: unknown correlation kind \"window\" (hint: known kinds: session, complete, interval, tumbling, hopping)"
            ]
        );
    }

    #[test]
    fn source_listed_twice() {
        assert_eq!(
            problems(&with("topic = \"order.placed\"", "topic = \"page.viewed\"")),
            [
                "t.toml:9:9: source[1].topic: topic \"page.viewed\" is already a source (source[0]) (hint: declare each topic once; remove one of the [[source]] sections)"
            ]
        );
    }

    #[test]
    fn pointer_without_leading_slash() {
        assert_eq!(
            problems(&with("key = \"/customer_id\"", "key = \"customer_id\"")),
            [
                "t.toml:5:7: source[0].key: invalid JSON pointer \"customer_id\": it must start with \"/\" (hint: \"/customer_id\")"
            ]
        );
    }

    #[test]
    fn output_topic_is_a_source() {
        assert_eq!(
            problems(&with(
                "journeys = \"customer.journey\"",
                "journeys = \"customer.journey\"\nlate = \"page.viewed\""
            )),
            [
                "t.toml:19:8: output.late: output topic \"page.viewed\" is also a source (hint: braid would read its own output; choose another topic)"
            ]
        );
    }

    #[test]
    fn missing_required_fields() {
        let source = r#"
[[source]]
topic = "a"

[correlate]

[output]
late = "x"
"#;
        assert_eq!(
            problems(source),
            [
                "t.toml:1:1: name: missing required field (hint: add name = \"customer-journey\" at the top of the file)",
                "t.toml:2:1: source[0].key: missing required field (hint: add key = \"/customer_id\")",
                "t.toml:2:1: source[0].time: missing required field (hint: add time = \"/ts\")",
                "t.toml:5:1: correlate.kind: missing required field (hint: add kind = \"session\" (or complete, interval, tumbling, hopping))",
                "t.toml:7:1: output.journeys: missing required field (hint: add journeys = \"customer.journey\")",
            ]
        );
        assert_eq!(
            problems(&with("topic = \"order.placed\"\n", "")),
            [
                "t.toml:8:1: source[1].topic: missing required field (hint: add topic = \"page.viewed\")"
            ]
        );
    }

    #[test]
    fn missing_sections_and_no_sources() {
        assert_eq!(
            problems("name = \"x\"\n"),
            [
                "t.toml:1:1: source: no sources (hint: declare each input topic in a [[source]] section with topic, key and time)",
                "t.toml:1:1: correlate: missing required section [correlate] (hint: add a [correlate] section with a kind, e.g. kind = \"session\")",
                "t.toml:1:1: output: missing required section [output] (hint: add an [output] section with journeys = \"<topic>\")",
            ]
        );
    }

    #[test]
    fn invalid_topic_names() {
        let hint = "(hint: use letters, digits, '.', '_' and '-', at most 249 characters)";
        let cases = [
            ("", "it is empty"),
            ("..", "\".\" and \"..\" are reserved"),
            ("a/b", "it contains the path separator '/'"),
            ("a\\u0001b", "it contains the control character U+0001"),
            ("page viewed", "it contains ' ', which is not allowed"),
        ];
        for (topic, reason) in cases {
            let shown = topic.replace("\\u0001", "\\u{1}");
            assert_eq!(
                problems(&with(
                    "topic = \"page.viewed\"",
                    &format!("topic = \"{topic}\"")
                )),
                [format!(
                    "t.toml:4:9: source[0].topic: invalid topic name \"{shown}\": {reason} {hint}"
                )]
            );
        }
        let long = "x".repeat(250);
        assert_eq!(
            problems(&with(
                "journeys = \"customer.journey\"",
                &format!("journeys = \"{long}\"")
            )),
            [format!(
                "t.toml:18:12: output.journeys: invalid topic name \"{}…\": it is 250 characters long, at most 249 are allowed {hint}",
                "x".repeat(64)
            )]
        );
        assert_eq!(
            problems(&with("name = \"journeys\"", "name = \"my job\"")),
            [format!(
                "t.toml:1:8: name: invalid job name \"my job\": it contains ' ', which is not allowed {hint}"
            )]
        );
    }

    #[test]
    fn invalid_start_position() {
        assert_eq!(
            problems(&with(
                "time = \"/ts\"",
                "time = \"/ts\"\nstart = \"offset:-3\""
            )),
            [
                "t.toml:7:9: source[0].start: invalid start position \"offset:-3\": the offset must be a non-negative integer (hint: e.g. beginning, end, offset:42 or timestamp:2024-05-01T00:00:00Z)"
            ]
        );
        assert_eq!(
            problems(&with(
                "time = \"/ts\"",
                "time = \"/ts\"\nstart = \"latest\""
            )),
            [
                "t.toml:7:9: source[0].start: invalid start position \"latest\": expected beginning, end, offset:N or timestamp:RFC3339 (hint: e.g. beginning, end, offset:42 or timestamp:2024-05-01T00:00:00Z)"
            ]
        );
    }

    #[test]
    fn outputs_sharing_a_topic_are_allowed() {
        let plan = parse(
            &with(
                "journeys = \"customer.journey\"",
                "journeys = \"j\"\nlate = \"j\"\ndead_letters = \"j\"",
            ),
            FILE,
        )
        .unwrap();
        assert_eq!(
            (plan.output.late.as_str(), plan.output.dead_letters.as_str()),
            ("j", "j")
        );
    }

    #[test]
    fn session_parameters() {
        assert_eq!(
            problems(&with("gap = \"30m\"\n", "")),
            ["t.toml:13:1: correlate.gap: missing required field (hint: add gap = \"30m\")"]
        );
        assert_eq!(
            problems(&with("gap = \"30m\"", "gap = \"30m\"\nsize = \"1h\"")),
            [
                "t.toml:16:8: correlate.size: does not apply to kind \"session\" (hint: kind \"session\" takes: gap, max_duration)"
            ]
        );
        let plan = parse(
            &with("gap = \"30m\"", "gap = \"30m\"\nmax_duration = \"1d\""),
            FILE,
        )
        .unwrap();
        assert_eq!(
            plan.correlation,
            Correlation::Session {
                gap: Duration::from_secs(1800),
                max_duration: Some(Duration::from_secs(86_400))
            }
        );
    }

    #[test]
    fn hopping_and_tumbling_parameters() {
        let hopping = with(
            "kind = \"session\"\ngap = \"30m\"",
            "kind = \"hopping\"\nsize = \"5m\"\nhop = \"10m\"",
        );
        assert_eq!(
            problems(&hopping),
            [
                "t.toml:16:7: correlate.hop: hop 10m is longer than size 5m (hint: hop must be at most size; hop = size gives tumbling windows)"
            ]
        );
        let hopping = with(
            "kind = \"session\"\ngap = \"30m\"",
            "kind = \"hopping\"\nsize = \"10m\"\nhop = \"1m\"",
        );
        assert_eq!(
            parse(&hopping, FILE).unwrap().correlation,
            Correlation::Hopping {
                size: Duration::from_secs(600),
                hop: Duration::from_secs(60)
            }
        );
        let tumbling = with("kind = \"session\"\ngap = \"30m\"", "kind = \"tumbling\"");
        assert_eq!(
            problems(&tumbling),
            ["t.toml:13:1: correlate.size: missing required field (hint: add size = \"1m\")"]
        );
    }

    /// BASE turned into a `complete` correlation over its two sources.
    fn complete(params: &str) -> String {
        with(
            "kind = \"session\"\ngap = \"30m\"",
            &format!("kind = \"complete\"\n{params}"),
        )
    }

    #[test]
    fn complete_parameters() {
        assert_eq!(
            problems(&complete(
                "required = [\"page.viewed\", \"shipment.created\"]\noptional = [\"order.placed\"]\ntimeout = \"1h\""
            )),
            [
                "t.toml:15:28: correlate.required[1]: \"shipment.created\" is not a declared source (hint: declared sources: page.viewed, order.placed)"
            ]
        );
        assert_eq!(
            problems(&complete("required = [\"page.viewed\", \"order.placed\"]")),
            ["t.toml:13:1: correlate.timeout: missing required field (hint: add timeout = \"1h\")"]
        );
        assert_eq!(
            problems(&complete("required = [\"page.viewed\"]\ntimeout = \"1h\"")),
            [
                "t.toml:9:9: source[1].topic: source \"order.placed\" is not part of the correlation (hint: add it to correlate.required or correlate.optional, or remove the [[source]])"
            ]
        );
        assert_eq!(
            problems(&complete(
                "required = [\"page.viewed\", \"order.placed\"]\noptional = [\"order.placed\"]\ntimeout = \"1h\""
            )),
            [
                "t.toml:16:13: correlate.optional[0]: \"order.placed\" is listed twice (hint: list each source once, as required or as optional)"
            ]
        );
        assert_eq!(
            problems(&complete(
                "required = [\"page.viewed\", \"order.plcaed\"]\ntimeout = \"1h\""
            )),
            [
                "t.toml:15:28: correlate.required[1]: \"order.plcaed\" is not a declared source (hint: did you mean \"order.placed\"? declared sources: page.viewed, order.placed)"
            ]
        );
        assert_eq!(
            problems(&complete(
                "required = [\"page.viewed\"]\noptional = [\"order.placed\"]\ntimeout = \"1h\"\ndeadline = { \"page.viewed\" = \"2h\", \"order.placed\" = \"1m\" }"
            )),
            [
                "t.toml:18:30: correlate.deadline.\"page.viewed\": deadline 2h is longer than the timeout 1h (hint: a deadline can only bring the INCOMPLETE report forward)",
                "t.toml:18:36: correlate.deadline.\"order.placed\": \"order.placed\" is not a required source (hint: deadlines apply to required sources: page.viewed)",
            ]
        );
    }

    #[test]
    fn a_broken_source_is_not_blamed_again_by_its_references() {
        let source = complete("required = [\"page viewed\", \"order.placed\"]\ntimeout = \"1h\"")
            .replacen("topic = \"page.viewed\"", "topic = \"page viewed\"", 1);
        assert_eq!(
            problems(&source),
            [
                "t.toml:4:9: source[0].topic: invalid topic name \"page viewed\": it contains ' ', which is not allowed (hint: use letters, digits, '.', '_' and '-', at most 249 characters)"
            ]
        );
    }

    /// BASE with a third source and an `interval` correlation made of `joins`.
    fn interval(joins: &str) -> String {
        with(
            "kind = \"session\"\ngap = \"30m\"",
            &format!("kind = \"interval\"\n{joins}"),
        )
        .replacen(
            "[correlate]",
            "[[source]]\ntopic = \"cart.updated\"\nkey = \"/customer_id\"\ntime = \"/ts\"\n\n[correlate]",
            1,
        )
    }

    const CHAIN: &str = r#"
[[correlate.join]]
left = "page.viewed"
right = "cart.updated"
before = "5m"
after = "5m"

[[correlate.join]]
left = "cart.updated"
right = "order.placed"
before = "0s"
after = "10m"
type = "left"
"#;

    #[test]
    fn interval_chain_validates() {
        let plan = parse(&interval(CHAIN), FILE).unwrap_or_else(|e| panic!("{e}"));
        let Correlation::Interval { joins } = &plan.correlation else {
            panic!("{:?}", plan.correlation)
        };
        assert_eq!(
            joins[1],
            Join {
                left: "cart.updated".into(),
                right: "order.placed".into(),
                before: Duration::ZERO,
                after: Duration::from_secs(600),
                join_type: JoinType::Left,
            }
        );
        assert_eq!(joins[0].join_type, JoinType::Inner);
    }

    #[test]
    fn interval_chain_mistakes() {
        assert_eq!(
            problems(&interval(&CHAIN.replacen(
                "left = \"cart.updated\"\nright = \"order.placed\"",
                "left = \"order.placed\"\nright = \"page.viewed\"",
                1
            ))),
            [
                "t.toml:28:8: correlate.join[1].left: \"order.placed\" is not in the chain yet (hint: a later join's left must be a topic joined before it: page.viewed, cart.updated)"
            ]
        );
        assert_eq!(
            problems(&interval(&CHAIN.replacen(
                "right = \"order.placed\"",
                "right = \"page.viewed\"",
                1
            ))),
            [
                "t.toml:29:9: correlate.join[1].right: \"page.viewed\" is already in the chain (hint: each source joins the chain once)"
            ]
        );
        assert_eq!(
            problems(&interval(&CHAIN.replacen(
                "type = \"left\"",
                "type = \"full\"",
                1
            ))),
            [
                "t.toml:32:8: correlate.join[1].type: unknown join type \"full\" (hint: known types: inner, left, outer)"
            ]
        );
        let first_only = &CHAIN[..CHAIN.rfind("[[correlate.join]]").unwrap()];
        assert_eq!(
            problems(&interval(first_only)),
            [
                "t.toml:9:9: source[1].topic: source \"order.placed\" is not part of the correlation (hint: add a [[correlate.join]] with right = \"order.placed\", or remove the [[source]])"
            ]
        );
        assert_eq!(
            problems(&interval("")),
            [
                "t.toml:18:1: correlate.join: missing required [[correlate.join]] for kind \"interval\" (hint: add a [[correlate.join]] section with left, right, before and after)"
            ]
        );
    }

    #[test]
    fn syntax_error_is_one_problem() {
        assert_eq!(
            problems(&with("gap = \"30m\"", "gap = \"30m")),
            ["t.toml:15:11: invalid TOML: invalid basic string, expected `\"`"]
        );
    }

    #[test]
    fn many_problems_reported_at_once_in_order() {
        let source = with("gap = \"30m\"", "gap = 30")
            .replacen("key = \"/customer_id\"", "key = \"customer_id\"", 1)
            .replacen(
                "name = \"journeys\"",
                "name = \"journeys\"\ncolour = \"blue\"",
                1,
            )
            .replacen(
                "journeys = \"customer.journey\"",
                "journeys = \"order.placed\"",
                1,
            );
        assert_eq!(
            problems(&source),
            [
                "t.toml:2:1: colour: unknown field (hint: known fields: name, broker, state, shards, source, correlate, time, output, limits, checkpoint)",
                "t.toml:6:7: source[0].key: invalid JSON pointer \"customer_id\": it must start with \"/\" (hint: \"/customer_id\")",
                "t.toml:16:7: correlate.gap: expected a duration string, found integer 30 (hint: durations are strings with a unit: \"30s\", \"30m\")",
                "t.toml:19:12: output.journeys: output topic \"order.placed\" is also a source (hint: braid would read its own output; choose another topic)",
            ]
        );
    }

    #[test]
    fn broker_problems() {
        assert_eq!(
            problems(&with(
                "name = \"journeys\"",
                "name = \"journeys\"\nbroker = { kind = \"kafka\" }"
            )),
            [
                "t.toml:2:19: broker.kind: unknown broker kind \"kafka\" (hint: known kinds: embedded, fluvio)"
            ]
        );
        assert_eq!(
            problems(&with(
                "name = \"journeys\"",
                "name = \"journeys\"\nbroker = { kind = \"fluvio\", endpoint = \"localhost\" }"
            )),
            [
                "t.toml:2:40: broker.endpoint: invalid endpoint \"localhost\": expected HOST:PORT (hint: e.g. \"127.0.0.1:9003\"; leave it out to use the current Fluvio profile)"
            ]
        );
        assert_eq!(
            problems(&with(
                "name = \"journeys\"",
                "name = \"journeys\"\nbroker = { kind = \"embedded\", endpoint = \"h:1\" }"
            )),
            [
                "t.toml:2:42: broker.endpoint: does not apply to broker kind \"embedded\" (hint: an embedded broker takes: path)"
            ]
        );
        assert_eq!(
            problems(&with(
                "name = \"journeys\"",
                "name = \"journeys\"\nbroker = { kind = \"embedded\", linger = \"5ms\", batch_bytes = 10 }"
            )),
            [
                "t.toml:2:40: broker.linger: does not apply to broker kind \"embedded\" (hint: an embedded broker takes: path)",
                "t.toml:2:61: broker.batch_bytes: does not apply to broker kind \"embedded\" (hint: an embedded broker takes: path)"
            ]
        );
        assert_eq!(
            problems(&with(
                "name = \"journeys\"",
                "name = \"journeys\"\nbroker = { kind = \"fluvio\", linger = \"soon\", batch_bytes = 10 }"
            ))
            .len(),
            2,
            "both fields are checked"
        );
        // On Fluvio, topic names follow Fluvio's rule (the `name` module).
        let on_fluvio = with(
            "name = \"journeys\"",
            "name = \"journeys\"\nbroker = { kind = \"fluvio\" }",
        );
        assert_eq!(
            problems(&on_fluvio)[0],
            "t.toml:5:9: source[0].topic: invalid topic name \"page.viewed\": it contains '.', which Fluvio does not allow in topic names (hint: on Fluvio, use lowercase letters, digits and '-' (not first or last), at most 63 characters, e.g. \"page-viewed\")"
        );
        let plan = parse(&on_fluvio.replace(".", "-"), FILE).unwrap();
        assert_eq!(
            plan.broker,
            Broker::Fluvio {
                endpoint: None,
                linger: DEFAULT_FLUVIO_LINGER,
                batch_bytes: DEFAULT_FLUVIO_BATCH_BYTES,
            }
        );
    }

    #[test]
    fn directories_must_be_printable_and_not_empty() {
        assert_eq!(
            problems(&with(
                "name = \"journeys\"",
                "name = \"journeys\"\nstate = \"data/\\nstate\"\nbroker = { kind = \"embedded\", path = \"\" }"
            )),
            [
                "t.toml:2:9: state: the state directory contains the control character '\\n' (hint: remove it from the path)",
                "t.toml:3:38: broker.path: the log directory is empty"
            ]
        );
        let plan = parse(
            &with(
                "name = \"journeys\"",
                "name = \"journeys\"\nstate = \"../shared state/j\"",
            ),
            FILE,
        )
        .unwrap();
        assert_eq!(
            plan.state,
            Path::new("../shared state/j"),
            "any other path is the operator's"
        );
    }

    #[test]
    fn numeric_limits() {
        assert_eq!(
            problems(&with(
                "name = \"journeys\"",
                "name = \"journeys\"\nshards = -1"
            )),
            [
                "t.toml:2:10: shards: must be between 0 and 1024, got -1 (hint: 0 means one shard per core)"
            ]
        );
        assert_eq!(
            problems(&format!("{BASE}[limits]\nmax_record_bytes = \"1MB\"\n")),
            [
                "t.toml:20:20: limits.max_record_bytes: invalid size \"1MB\": use binary units (hint: write KiB, MiB or GiB (1MiB = 1048576 bytes))"
            ]
        );
        assert_eq!(
            problems(&format!("{BASE}[limits]\nmax_record_bytes = 0\n")),
            ["t.toml:20:20: limits.max_record_bytes: must be between 1B and 1GiB, got 0"]
        );
        assert_eq!(
            problems(&format!(
                "{BASE}[limits]\nmax_record_bytes = 0\nmax_events_per_window = 0\n"
            )),
            [
                "t.toml:20:20: limits.max_record_bytes: must be between 1B and 1GiB, got 0",
                "t.toml:21:25: limits.max_events_per_window: must be between 1 and 100000000, got 0"
            ]
        );
        assert_eq!(
            problems(&format!(
                "{BASE}[limits]\nstate_cache = \"512KiB\"\nstate_write_buffer = 0\n"
            )),
            [
                "t.toml:20:15: limits.state_cache: must be between 1MiB and 64GiB, got 512KiB",
                "t.toml:21:22: limits.state_write_buffer: must be between 4MiB and 64GiB, got 0"
            ]
        );
        assert_eq!(
            problems(&format!(
                "{BASE}[limits]\nmax_record_bytes = \"2MiB\"\nmax_output_record_bytes = \"2MiB\"\n"
            )),
            [
                "t.toml:21:27: limits.max_output_record_bytes: must be at least max_record_bytes + 16KiB (2064KiB), got 2MiB (hint: one input record must fit in an output record)"
            ]
        );
        let plan = parse(
            &format!("{BASE}[limits]\nmax_record_bytes = \"8MiB\"\n"),
            FILE,
        )
        .unwrap();
        assert_eq!(
            plan.limits.max_output_record_bytes,
            (8 << 20) + (16 << 10),
            "the default grows with max_record_bytes"
        );
        assert_eq!(
            problems(&format!("{BASE}[checkpoint]\nmax_records = 0\n")),
            [
                "t.toml:20:15: checkpoint.max_records: must be at least 1, got 0 (hint: leave it out to checkpoint on the interval only)"
            ]
        );
        assert_eq!(
            problems(&format!("{BASE}[time]\nidle_timeout = \"0s\"\n")),
            ["t.toml:20:16: time.idle_timeout: must be greater than 0s"]
        );
        let plan = parse(
            &format!("{BASE}[limits]\nmax_record_bytes = \"512KiB\"\n"),
            FILE,
        )
        .unwrap();
        assert_eq!(plan.limits.max_record_bytes, 512 << 10);
        assert_eq!(plan.limits.max_events_per_window, 100_000, "the default");
        let plan = parse(
            &format!("{BASE}[limits]\nmax_events_per_window = 500\n"),
            FILE,
        )
        .unwrap();
        assert_eq!(plan.limits.max_events_per_window, 500);
    }

    #[test]
    fn load_reports_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let error = load(&missing).unwrap_err();
        assert_eq!(error.problems.len(), 1);
        assert!(
            error.to_string().starts_with(&format!(
                "{}: cannot read the topology file: ",
                missing.display()
            )),
            "{error}"
        );
        let latin1 = dir.path().join("latin1.toml");
        std::fs::write(&latin1, b"name = \"x\"\n# caf\xe9\n").unwrap();
        assert_eq!(
            load(&latin1).unwrap_err().to_string(),
            format!(
                "{}:2:6: the file is not valid UTF-8 (hint: save the topology file as UTF-8)",
                latin1.display()
            )
        );
    }

    #[test]
    fn summary_fits_one_screen() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/customer_journey.toml");
        let mut plan = load(&path).unwrap();
        plan.shards = 2;
        let expected = format!(
            "customer-journey: session correlation over 3 sources, fingerprint {}
  broker      embedded log in data/log
  state       data/state/customer-journey
  shards      2
  sources     page.viewed   key /customer_id  time /ts  id /event_id  from beginning
              cart.updated  key /customer_id  time /ts  id /event_id  from beginning
              order.placed  key /customer_id  time /ts  id /event_id  from beginning
  correlate   session: gap 30m, no maximum duration
  time        out-of-orderness 5s, grace 0s, idle timeout 30s
  output      journeys     → customer.journey (with payloads)
              late         → customer.journey.late
              dead letters → customer.journey.dlq
              a failing append is retried for 30s
  limits      records up to 1MiB, 100000 events kept per window, 1000000 open windows per shard
              output records up to 4MiB (longer ones in parts)
              RocksDB cache 64MiB, write buffers 32MiB
  checkpoint  every 1s
",
            plan.fingerprint()
        );
        assert_eq!(plan.summary(), expected);
        assert!(plan.summary().lines().count() <= 24);
        let interval_plan = parse(&interval(CHAIN), FILE).unwrap();
        assert!(interval_plan.summary().contains(
            "  correlate   interval joins, in order:
              1. cart.updated joins page.viewed from 5m before to 5m after (inner)
              2. order.placed joins cart.updated from 0s before to 10m after (left)
"
        ));
    }

    #[test]
    fn fingerprint_is_stable_and_covers_state_shaping_parts() {
        let base = parse(BASE, FILE).unwrap();
        assert_eq!(
            base.fingerprint_input(),
            "braid-state v1\nkind session\ngap 30m\nmax_duration none\n\
             source \"page.viewed\" key \"/customer_id\"\nsource \"order.placed\" key \"/customer_id\"\n"
        );
        // Pinned: a change here means every deployed job's state looks incompatible.
        assert_eq!(
            base.fingerprint().to_string(),
            "7ae87181f0f7e9723df91cbac525c8bd"
        );
        let fingerprint = |source: String| parse(&source, FILE).unwrap().fingerprint();
        let same = [
            with("journeys = \"customer.journey\"", "journeys = \"other\""),
            format!("{BASE}[time]\ngrace = \"1m\"\n"),
            with("time = \"/ts\"", "time = \"/at\""),
        ];
        for source in same {
            assert_eq!(fingerprint(source), base.fingerprint());
        }
        let different = [
            with("gap = \"30m\"", "gap = \"31m\""),
            with("key = \"/customer_id\"", "key = \"/session\""),
            with("topic = \"order.placed\"", "topic = \"order.created\""),
        ];
        for source in different {
            assert_ne!(fingerprint(source), base.fingerprint());
        }
    }

    #[test]
    fn plan_serializes_with_human_durations_and_round_trips() {
        let plan = parse(&interval(CHAIN), FILE).unwrap();
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["correlation"]["kind"], "interval");
        assert_eq!(json["correlation"]["joins"][1]["after"], "10m");
        assert_eq!(json["time"]["out_of_orderness"], "5s");
        assert_eq!(json["sources"][0]["start"], "beginning");
        assert_eq!(json["sources"][0]["key"], "/customer_id");
        let back: Plan = serde_json::from_value(json).unwrap();
        assert_eq!(back, plan);
        let fingerprint = plan.fingerprint();
        let text = serde_json::to_string(&fingerprint).unwrap();
        assert_eq!(
            serde_json::from_str::<Fingerprint>(&text).unwrap(),
            fingerprint
        );
    }
}
