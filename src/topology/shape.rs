//! The shape check: walks the spanned TOML tree against the schema in `raw` and reports
//! every unknown field and every value of the wrong TOML type, at its line and column.
//!
//! Invariant: after [`check`], the tree holds only known fields with values of the
//! expected type — offending entries are removed once reported — so deserializing the
//! raw mirror cannot fail and the semantic checks still run on everything else. That
//! is how one pass reports all problems instead of serde's first one.

use super::diag::{Diagnostics, closest, join_path, list, quoted};
use super::duration;
use super::raw::{Expect, Field, TOPOLOGY, Text, names};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Checks the whole document, reporting into `diagnostics` and pruning what it reports.
pub(crate) fn check(document: &mut Spanned<DeTable<'_>>, diagnostics: &mut Diagnostics<'_>) {
    check_table(document.get_mut(), TOPOLOGY, "", diagnostics);
}

fn check_table(table: &mut DeTable<'_>, fields: &[Field], path: &str, d: &mut Diagnostics<'_>) {
    let mut rejected: Vec<String> = Vec::new();
    for (key, value) in table.iter_mut() {
        let name: &str = key.get_ref();
        let field_path = join_path(path, name);
        let Some(field) = fields.iter().find(|f| f.name == name) else {
            let known = names(fields);
            let hint = match closest(name, &known) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("known fields: {}", list(&known)),
            };
            d.report(key.span(), field_path, "unknown field", Some(hint));
            rejected.push(name.to_owned());
            continue;
        };
        if !check_value(value, field.expect, &field_path, d) {
            rejected.push(name.to_owned());
        }
    }
    for name in &rejected {
        table.remove(name.as_str());
    }
}

/// Returns whether the value may stay in the tree.
fn check_value(
    value: &mut Spanned<DeValue<'_>>,
    expect: Expect,
    path: &str,
    d: &mut Diagnostics<'_>,
) -> bool {
    match (expect, value.get_mut()) {
        (Expect::Text(_), DeValue::String(_))
        | (Expect::Integer, DeValue::Integer(_))
        | (Expect::Boolean, DeValue::Boolean(_))
        | (Expect::Size, DeValue::Integer(_) | DeValue::String(_)) => true,
        (Expect::TopicList, DeValue::Array(items)) => {
            let mut all_strings = true;
            for (i, item) in items.iter().enumerate() {
                if !item.get_ref().is_str() {
                    let item_path = format!("{path}[{i}]");
                    wrong_type(item, Expect::Text(Text::Topic), &item_path, d);
                    all_strings = false;
                }
            }
            all_strings
        }
        (Expect::DurationTable, DeValue::Table(table)) => {
            let mut rejected: Vec<String> = Vec::new();
            for (key, value) in table.iter() {
                if !value.get_ref().is_str() {
                    let entry_path = join_path(path, key.get_ref());
                    wrong_type(value, Expect::Text(Text::Duration), &entry_path, d);
                    rejected.push(key.get_ref().to_string());
                }
            }
            for name in &rejected {
                table.remove(name.as_str());
            }
            true
        }
        (Expect::Table(fields), DeValue::Table(table)) => {
            check_table(table, fields, path, d);
            true
        }
        (Expect::Tables(fields), DeValue::Array(items)) => {
            let mut all_tables = true;
            for (i, item) in items.iter_mut().enumerate() {
                let item_path = format!("{path}[{i}]");
                match item.get_mut() {
                    DeValue::Table(table) => check_table(table, fields, &item_path, d),
                    _ => {
                        wrong_type(item, Expect::Table(fields), &item_path, d);
                        all_tables = false;
                    }
                }
            }
            all_tables
        }
        _ => {
            wrong_type(value, expect, path, d);
            false
        }
    }
}

fn wrong_type(value: &Spanned<DeValue<'_>>, expect: Expect, path: &str, d: &mut Diagnostics<'_>) {
    let found = value.get_ref();
    let message = format!(
        "expected {}, found {}",
        describe(expect),
        describe_found(found)
    );
    d.report(value.span(), path, message, hint(expect, found, path));
}

fn describe(expect: Expect) -> &'static str {
    match expect {
        Expect::Text(Text::Name) => "a name string",
        Expect::Text(Text::Topic) => "a topic name string",
        Expect::Text(Text::Pointer) => "a JSON pointer string",
        Expect::Text(Text::Duration) => "a duration string",
        Expect::Text(Text::Start) => "a start position string",
        Expect::Text(Text::Path) => "a path string",
        Expect::Text(Text::Endpoint) => "a HOST:PORT string",
        Expect::Text(Text::Kind) => "a string",
        Expect::Integer => "an integer",
        Expect::Boolean => "true or false",
        Expect::Size => "a size (bytes or a string like \"1MiB\")",
        Expect::TopicList => "an array of topic names",
        Expect::DurationTable => "a table of topic = duration",
        Expect::Table(_) => "a table",
        Expect::Tables(_) => "an array of tables",
    }
}

fn describe_found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("string {}", quoted(s)),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(x) => format!("float {x}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(t) => format!("datetime {t}"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// A fix tailored to the common confusions: unquoted durations, quoted numbers and
/// booleans, `[source]` instead of `[[source]]`.
fn hint(expect: Expect, found: &DeValue<'_>, path: &str) -> Option<String> {
    match (expect, found) {
        (Expect::Text(Text::Duration), DeValue::Integer(i)) if i.radix() == 10 => {
            let n = i.as_str();
            Some(format!(
                "durations are strings with a unit: \"{n}s\", \"{n}m\""
            ))
        }
        (Expect::Text(Text::Duration), _) => Some(duration::EXAMPLES.to_owned()),
        (Expect::Text(Text::Pointer), _) => Some("e.g. \"/customer_id\"".to_owned()),
        (Expect::Text(Text::Topic), DeValue::Array(_)) => {
            Some("one topic per field; topics are strings like \"customer.journey\"".to_owned())
        }
        (Expect::Integer, DeValue::String(s)) if s.parse::<i64>().is_ok() => {
            Some(format!("remove the quotes: {s}"))
        }
        (Expect::Boolean, DeValue::String(s)) if *s == "true" || *s == "false" => {
            Some(format!("remove the quotes: {s}"))
        }
        (Expect::Tables(_), DeValue::Table(_)) => {
            Some(format!("write [[{path}]] (double brackets) for each entry"))
        }
        (Expect::TopicList, DeValue::String(s)) => Some(format!("write [{}]", quoted(s))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape_problems(source: &str) -> Vec<String> {
        let mut table = DeTable::parse(source).unwrap();
        let mut d = Diagnostics::new(source);
        check(&mut table, &mut d);
        d.into_problems().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn reports_unknown_fields_with_suggestions() {
        assert_eq!(
            shape_problems("nmae = \"x\"\nwindow = 1\n[correlate]\ngapp = \"1s\"\n"),
            [
                "1:1: nmae: unknown field (hint: did you mean `name`?)",
                "2:1: window: unknown field (hint: known fields: name, broker, state, shards, source, correlate, time, output, limits, checkpoint)",
                "4:1: correlate.gapp: unknown field (hint: did you mean `gap`?)",
            ]
        );
    }

    #[test]
    fn reports_wrong_types_everywhere() {
        let source = r#"
shards = "4"
source = { topic = "a" }
[correlate]
gap = 30
required = ["a", 2]
deadline = { "a.b" = 5 }
[output]
include_payload = "true"
journeys = ["x", "y"]
"#;
        assert_eq!(
            shape_problems(source),
            [
                "2:10: shards: expected an integer, found string \"4\" (hint: remove the quotes: 4)",
                "3:10: source: expected an array of tables, found a table (hint: write [[source]] (double brackets) for each entry)",
                "5:7: correlate.gap: expected a duration string, found integer 30 (hint: durations are strings with a unit: \"30s\", \"30m\")",
                "6:18: correlate.required[1]: expected a topic name string, found integer 2",
                "7:22: correlate.deadline.\"a.b\": expected a duration string, found integer 5 (hint: durations are strings with a unit: \"5s\", \"5m\")",
                "9:19: output.include_payload: expected true or false, found string \"true\" (hint: remove the quotes: true)",
                "10:12: output.journeys: expected a topic name string, found an array (hint: one topic per field; topics are strings like \"customer.journey\")",
            ]
        );
    }

    #[test]
    fn prunes_what_it_reports() {
        let source = "nmae = \"x\"\nname = \"ok\"\n[correlate]\ngap = 30\nkind = \"session\"\n";
        let mut table = DeTable::parse(source).unwrap();
        let mut d = Diagnostics::new(source);
        check(&mut table, &mut d);
        let top = table.get_ref();
        assert!(top.get("nmae").is_none());
        assert!(top.get("name").is_some());
        let correlate = top.get("correlate").unwrap().get_ref().as_table().unwrap();
        assert!(correlate.get("gap").is_none());
        assert!(correlate.get("kind").is_some());
    }
}
