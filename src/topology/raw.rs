//! The raw mirror of a topology file: serde structs shaped exactly like the TOML,
//! every value wrapped in [`Spanned`] so later checks can point at it, and the schema
//! ([`Field`] tables) that the shape check walks before serde ever runs.
//!
//! Invariants:
//! - Every field is optional here; "required" and defaults are decided in
//!   `validate`, so a file with missing fields still deserializes and every other
//!   problem is reported too.
//! - Each struct and its schema list the same fields, in the same order. The structs
//!   keep `deny_unknown_fields` as a safety net: the shape check removes unknown and
//!   mistyped entries first, so serde can only fail here if the two drift apart (a
//!   unit test deserializes a file that uses every field to catch that).
//! - Integers are `i64` so that out-of-range values are reported by `validate` with
//!   their position rather than by serde.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// What a field's value must look like in TOML, with enough meaning to word a
/// "wrong type" problem well.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// A string; the flavour only changes the wording of problems.
    Text(Text),
    Integer,
    Boolean,
    /// An integer of bytes or a string such as `"1MiB"`.
    Size,
    /// An array of topic names.
    TopicList,
    /// A table mapping topic names to durations.
    DurationTable,
    /// A table (`[section]` or inline `{ ... }`) with these fields.
    Table(&'static [Field]),
    /// An array of tables (`[[section]]`) with these fields.
    Tables(&'static [Field]),
}

/// Flavours of string values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text {
    Name,
    Topic,
    Pointer,
    Duration,
    Start,
    Path,
    Endpoint,
    Kind,
}

/// One known field of a table.
#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) expect: Expect,
}

const fn field(name: &'static str, expect: Expect) -> Field {
    Field { name, expect }
}

use Expect::{Boolean, DurationTable, Integer, Size, Table, Tables, TopicList};
const DURATION: Expect = Expect::Text(Text::Duration);
const TOPIC: Expect = Expect::Text(Text::Topic);
const POINTER: Expect = Expect::Text(Text::Pointer);
const KIND: Expect = Expect::Text(Text::Kind);

/// The top level of a topology file.
pub(crate) const TOPOLOGY: &[Field] = &[
    field("name", Expect::Text(Text::Name)),
    field("broker", Table(BROKER)),
    field("state", Expect::Text(Text::Path)),
    field("shards", Integer),
    field("source", Tables(SOURCE)),
    field("correlate", Table(CORRELATE)),
    field("time", Table(TIME)),
    field("output", Table(OUTPUT)),
    field("limits", Table(LIMITS)),
    field("checkpoint", Table(CHECKPOINT)),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopology {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) broker: Option<Spanned<RawBroker>>,
    pub(crate) state: Option<Spanned<String>>,
    pub(crate) shards: Option<Spanned<i64>>,
    pub(crate) source: Option<Vec<Spanned<RawSource>>>,
    pub(crate) correlate: Option<Spanned<RawCorrelate>>,
    pub(crate) time: Option<Spanned<RawTime>>,
    pub(crate) output: Option<Spanned<RawOutput>>,
    pub(crate) limits: Option<Spanned<RawLimits>>,
    pub(crate) checkpoint: Option<Spanned<RawCheckpoint>>,
}

pub(crate) const BROKER: &[Field] = &[
    field("kind", KIND),
    field("path", Expect::Text(Text::Path)),
    field("endpoint", Expect::Text(Text::Endpoint)),
    field("linger", DURATION),
    field("batch_bytes", Size),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBroker {
    pub(crate) kind: Option<Spanned<String>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) endpoint: Option<Spanned<String>>,
    pub(crate) linger: Option<Spanned<String>>,
    pub(crate) batch_bytes: Option<Spanned<RawSize>>,
}

pub(crate) const SOURCE: &[Field] = &[
    field("topic", TOPIC),
    field("key", POINTER),
    field("time", POINTER),
    field("id", POINTER),
    field("start", Expect::Text(Text::Start)),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub(crate) topic: Option<Spanned<String>>,
    pub(crate) key: Option<Spanned<String>>,
    pub(crate) time: Option<Spanned<String>>,
    pub(crate) id: Option<Spanned<String>>,
    pub(crate) start: Option<Spanned<String>>,
}

/// One flat table for every kind: which fields apply depends on `kind`, and
/// `validate` reports fields that do not apply rather than serde guessing a variant.
pub(crate) const CORRELATE: &[Field] = &[
    field("kind", KIND),
    field("gap", DURATION),
    field("max_duration", DURATION),
    field("required", TopicList),
    field("optional", TopicList),
    field("timeout", DURATION),
    field("deadline", DurationTable),
    field("join", Tables(JOIN)),
    field("size", DURATION),
    field("hop", DURATION),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCorrelate {
    pub(crate) kind: Option<Spanned<String>>,
    pub(crate) gap: Option<Spanned<String>>,
    pub(crate) max_duration: Option<Spanned<String>>,
    pub(crate) required: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) optional: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) deadline: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    pub(crate) join: Option<Spanned<Vec<Spanned<RawJoin>>>>,
    pub(crate) size: Option<Spanned<String>>,
    pub(crate) hop: Option<Spanned<String>>,
}

pub(crate) const JOIN: &[Field] = &[
    field("left", TOPIC),
    field("right", TOPIC),
    field("before", DURATION),
    field("after", DURATION),
    field("type", KIND),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJoin {
    pub(crate) left: Option<Spanned<String>>,
    pub(crate) right: Option<Spanned<String>>,
    pub(crate) before: Option<Spanned<String>>,
    pub(crate) after: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub(crate) join_type: Option<Spanned<String>>,
}

pub(crate) const TIME: &[Field] = &[
    field("out_of_orderness", DURATION),
    field("grace", DURATION),
    field("idle_timeout", DURATION),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTime {
    pub(crate) out_of_orderness: Option<Spanned<String>>,
    pub(crate) grace: Option<Spanned<String>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
}

pub(crate) const OUTPUT: &[Field] = &[
    field("journeys", TOPIC),
    field("late", TOPIC),
    field("dead_letters", TOPIC),
    field("include_payload", Boolean),
    field("retry_for", DURATION),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutput {
    pub(crate) journeys: Option<Spanned<String>>,
    pub(crate) late: Option<Spanned<String>>,
    pub(crate) dead_letters: Option<Spanned<String>>,
    pub(crate) include_payload: Option<Spanned<bool>>,
    pub(crate) retry_for: Option<Spanned<String>>,
}

pub(crate) const LIMITS: &[Field] = &[
    field("max_record_bytes", Size),
    field("max_events_per_window", Integer),
    field("max_open_windows_per_shard", Integer),
    field("state_cache", Size),
    field("state_write_buffer", Size),
    field("max_output_record_bytes", Size),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_record_bytes: Option<Spanned<RawSize>>,
    pub(crate) max_events_per_window: Option<Spanned<i64>>,
    pub(crate) max_open_windows_per_shard: Option<Spanned<i64>>,
    pub(crate) state_cache: Option<Spanned<RawSize>>,
    pub(crate) state_write_buffer: Option<Spanned<RawSize>>,
    pub(crate) max_output_record_bytes: Option<Spanned<RawSize>>,
}

/// `max_record_bytes = 1048576` or `max_record_bytes = "1MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
}

pub(crate) const CHECKPOINT: &[Field] =
    &[field("interval", DURATION), field("max_records", Integer)];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheckpoint {
    pub(crate) interval: Option<Spanned<String>>,
    pub(crate) max_records: Option<Spanned<i64>>,
}

/// The names of a schema's fields, for "did you mean" and "known fields" hints.
pub(crate) fn names(fields: &[Field]) -> Vec<&'static str> {
    fields.iter().map(|f| f.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that sets every field of every table: the shape check must accept it
    /// untouched and serde must deserialize it, which proves the schema and the
    /// structs list the same fields.
    const EVERY_FIELD: &str = r#"
name = "all"
broker = { kind = "fluvio", path = "p", endpoint = "127.0.0.1:9003" }
state = "s"
shards = 2

[[source]]
topic = "a"
key = "/k"
time = "/t"
id = "/i"
start = "end"

[correlate]
kind = "complete"
gap = "1s"
max_duration = "1s"
required = ["a"]
optional = []
timeout = "1s"
deadline = { a = "1s" }
size = "1s"
hop = "1s"

[[correlate.join]]
left = "a"
right = "b"
before = "1s"
after = "1s"
type = "inner"

[time]
out_of_orderness = "1s"
grace = "1s"
idle_timeout = "1s"

[output]
journeys = "j"
late = "l"
dead_letters = "d"
include_payload = false

[limits]
max_record_bytes = "1MiB"

[checkpoint]
interval = "1s"
max_records = 10
"#;

    #[test]
    fn schema_and_mirror_list_the_same_fields() {
        let mut table = toml::de::DeTable::parse(EVERY_FIELD).unwrap();
        let mut diagnostics = super::super::diag::Diagnostics::new(EVERY_FIELD);
        super::super::shape::check(&mut table, &mut diagnostics);
        assert!(diagnostics.is_empty(), "{:?}", diagnostics.into_problems());
        let raw = RawTopology::deserialize(toml::de::Deserializer::from(table)).unwrap();
        let correlate = raw.correlate.unwrap().into_inner();
        assert_eq!(correlate.join.unwrap().get_ref().len(), 1);
        assert!(matches!(
            raw.limits.unwrap().into_inner().max_record_bytes.unwrap().into_inner(),
            RawSize::Text(text) if text == "1MiB"
        ));
        assert_eq!(
            raw.checkpoint
                .unwrap()
                .get_ref()
                .max_records
                .as_ref()
                .map(|m| *m.get_ref()),
            Some(10)
        );
    }

    #[test]
    fn mirror_rejects_unknown_fields_on_its_own() {
        let error = toml::from_str::<RawTopology>("nmae = \"x\"\n").unwrap_err();
        assert!(
            error.message().starts_with("unknown field `nmae`"),
            "{}",
            error.message()
        );
    }
}
