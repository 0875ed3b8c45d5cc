//! Diagnostics: the problems found in a topology file, each anchored at a line and
//! column, and the small text helpers that keep their wording consistent.
//!
//! Invariants: a [`Problem`] never carries the file name (the [`TopologyErrors`] that
//! collects it does), positions are 1-based with the column counted in characters, and
//! line 0 means "no position" (the file could not be read at all). Problems are
//! reported sorted by position so `braid validate` reads top to bottom.

use std::fmt;
use std::ops::Range;

/// One thing wrong with a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line; 0 when the problem has no position (e.g. unreadable file).
    pub line: usize,
    /// 1-based column, in characters; 0 when the problem has no position.
    pub column: usize,
    /// Dotted path of the offending field (`source[2].time`, `correlate.gap`); empty
    /// for problems that belong to no field (TOML syntax errors).
    pub field: String,
    /// What is wrong, in one sentence without a trailing period.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl Problem {
    /// Writes the problem as `LINE:COL: FIELD: MESSAGE (hint: HINT)`, leaving out the
    /// parts that are absent.
    fn write_body(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.line, self.column)?;
        }
        self.write_body(f)
    }
}

/// Every problem found in one topology file. Displayed one problem per line, each as
/// `FILE:LINE:COL: FIELD: MESSAGE (hint: HINT)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyErrors {
    /// The file as the user named it (or the name given to [`super::parse`]).
    pub file: String,
    /// Sorted by position; never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for TopologyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if problem.line > 0 {
                write!(f, "{}:{}:{}: ", self.file, problem.line, problem.column)?;
            } else {
                write!(f, "{}: ", self.file)?;
            }
            problem.write_body(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for TopologyErrors {}

/// Collects problems while the checks run, turning byte spans into line:column.
pub(crate) struct Diagnostics<'s> {
    source: &'s str,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
    problems: Vec<Problem>,
}

impl<'s> Diagnostics<'s> {
    pub(crate) fn new(source: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Diagnostics {
            source,
            line_starts,
            problems: Vec::new(),
        }
    }

    /// 1-based line and character column of a byte offset (clamped to the source).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self.source[start..offset].chars().count() + 1;
        (line, column)
    }

    /// Records a problem at the start of `span`.
    pub(crate) fn report(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let (line, column) = self.position(span.start);
        self.problems.push(Problem {
            line,
            column,
            field: field.into(),
            message: message.into(),
            hint,
        });
    }

    /// Whether a problem was already reported for `field` (or inside it): a field the
    /// shape check removed must not be reported again as missing.
    pub(crate) fn reported(&self, field: &str) -> bool {
        self.problems.iter().any(|p| {
            p.field
                .strip_prefix(field)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems in reading order (stable for problems at the same position).
    pub(crate) fn into_problems(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| (p.line, p.column));
        self.problems
    }
}

/// A value quoted for a message: `"text"` with control characters escaped, cut after
/// 64 characters so a runaway value keeps the message on one readable line.
pub(crate) fn quoted(value: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::with_capacity(value.len().min(MAX * 2) + 2);
    out.push('"');
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Appends a key to a dotted field path, quoting it like TOML does when it is not a
/// bare key (topic names in `deadline` contain dots).
pub(crate) fn join_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare { key.to_owned() } else { quoted(key) };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a
/// plausible typo (at most a third of the word's length, and at least 1).
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of adjacent
/// characters (optimal string alignment), case-insensitive: `nmae` is one typo away
/// from `name`, and a capitalised field name is still the same field.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().flat_map(char::to_lowercase).collect();
    let width = b.len() + 1;
    // dist[i * width + j] = distance between a[..i] and b[..j].
    let mut dist = vec![0; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            dist[i * width + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (dist[(i - 1) * width + j - 1] + cost)
                    .min(dist[(i - 1) * width + j] + 1)
                    .min(dist[i * width + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(dist[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    dist[a.len() * width + b.len()]
}

/// `a, b, c` — for "known kinds" and "declared sources" hints.
pub(crate) fn list(items: &[&str]) -> String {
    items.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let d = Diagnostics::new("a = 1\nné = \"x\"\n\nlast");
        assert_eq!(d.position(0), (1, 1));
        assert_eq!(d.position(4), (1, 5));
        assert_eq!(d.position(6), (2, 1));
        // "né" is 3 bytes: the space after it is character column 3.
        assert_eq!(d.position(9), (2, 3));
        assert_eq!(d.position(17), (4, 1));
        assert_eq!(d.position(1000), (4, 5));
    }

    #[test]
    fn problems_display_with_and_without_parts() {
        let errors = TopologyErrors {
            file: "topologies/x.toml".into(),
            problems: vec![
                Problem {
                    line: 0,
                    column: 0,
                    field: String::new(),
                    message: "cannot read the file".into(),
                    hint: None,
                },
                Problem {
                    line: 12,
                    column: 7,
                    field: "correlate.gap".into(),
                    message: "invalid duration \"30 minutes\"".into(),
                    hint: Some("use a number and a unit".into()),
                },
            ],
        };
        assert_eq!(
            errors.to_string(),
            "topologies/x.toml: cannot read the file\n\
             topologies/x.toml:12:7: correlate.gap: invalid duration \"30 minutes\" (hint: use a number and a unit)"
        );
        assert_eq!(
            errors.problems[1].to_string(),
            "12:7: correlate.gap: invalid duration \"30 minutes\" (hint: use a number and a unit)"
        );
    }

    #[test]
    fn quoting_escapes_and_truncates() {
        assert_eq!(quoted("a\"b\u{7}"), "\"a\\\"b\\u{7}\"");
        let long = "x".repeat(70);
        assert_eq!(quoted(&long), format!("\"{}…\"", "x".repeat(64)));
    }

    #[test]
    fn paths_quote_non_bare_keys() {
        assert_eq!(join_path("", "name"), "name");
        assert_eq!(join_path("correlate", "gap"), "correlate.gap");
        assert_eq!(
            join_path("correlate.deadline", "order.placed"),
            "correlate.deadline.\"order.placed\""
        );
    }

    #[test]
    fn closest_finds_typos_only() {
        let fields = ["kind", "gap", "max_duration", "timeout"];
        assert_eq!(closest("gapp", &fields), Some("gap"));
        assert_eq!(closest("max_duraton", &fields), Some("max_duration"));
        assert_eq!(closest("Kind", &fields), Some("kind"));
        assert_eq!(closest("tiemout", &fields), Some("timeout"));
        assert_eq!(closest("window", &fields), None);
    }

    /// Reference model: the recursive definition of optimal string alignment.
    fn reference_distance(a: &[char], b: &[char]) -> usize {
        match (a, b) {
            ([], _) => b.len(),
            (_, []) => a.len(),
            ([x, ra @ ..], [y, rb @ ..]) => {
                let mut best = (reference_distance(ra, rb) + usize::from(x != y))
                    .min(reference_distance(ra, b) + 1)
                    .min(reference_distance(a, rb) + 1);
                if let ([x1, x2, ra2 @ ..], [y1, y2, rb2 @ ..]) = (a, b)
                    && x1 == y2
                    && x2 == y1
                {
                    best = best.min(reference_distance(ra2, rb2) + 1);
                }
                best
            }
        }
    }

    proptest! {
        #[test]
        fn edit_distance_matches_reference(a in "[a-c]{0,6}", b in "[a-c]{0,6}") {
            let ca: Vec<char> = a.chars().collect();
            let cb: Vec<char> = b.chars().collect();
            prop_assert_eq!(edit_distance(&a, &b), reference_distance(&ca, &cb));
        }
    }
}
