//! Human durations: `250ms`, `5s`, `30m`, `2h`, `1d`, and compounds such as `1h30m`.
//!
//! Grammar: one or more `<digits><unit>` parts, units `d`, `h`, `m`, `s`, `ms`, each at
//! most once and from the largest to the smallest, no sign, no spaces, no fractions.
//! The resolution is one millisecond (event times are epoch milliseconds).
//! [`format`] is the inverse of [`parse`]: it writes the canonical form, so
//! `parse(format(d)) == d` for every whole-millisecond duration.

use std::fmt;
use std::time::Duration;

/// The units, largest first, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {}: it is empty", super::diag::quoted(.0))]
    Empty(String),
    #[error("invalid duration {}: durations cannot be negative", super::diag::quoted(.0))]
    Negative(String),
    #[error("invalid duration {}: the unit is missing", super::diag::quoted(.0))]
    MissingUnit(String),
    #[error(
        "invalid duration {}: units must go from largest to smallest, each at most once",
        super::diag::quoted(.0)
    )]
    UnitOrder(String),
    #[error("invalid duration {}: it is too large", super::diag::quoted(.0))]
    TooLarge(String),
    /// Anything else: unknown unit, spaces, fractions, stray characters.
    #[error("invalid duration {}", super::diag::quoted(.0))]
    Malformed(String),
}

impl DurationError {
    /// How to write it instead.
    pub fn hint(&self) -> String {
        match self {
            DurationError::MissingUnit(text) => {
                format!("write \"{text}s\" for seconds or \"{text}ms\" for milliseconds")
            }
            DurationError::UnitOrder(_) => "write compounds like 1h30m or 2m30s".to_owned(),
            DurationError::TooLarge(_) => "durations must stay below 584 million years".to_owned(),
            _ => EXAMPLES.to_owned(),
        }
    }
}

/// The hint for anything that does not look like a duration at all.
pub(crate) const EXAMPLES: &str = "use a number and a unit: 250ms, 5s, 30m, 2h, 1d";

/// Parses a human duration (see the module doc for the grammar).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let owned = || text.to_owned();
    if text.is_empty() {
        return Err(DurationError::Empty(owned()));
    }
    if let Some(magnitude) = text.strip_prefix('-') {
        // Only call it negative when the rest is a duration; "-x" is just malformed.
        return Err(match parse(magnitude) {
            Ok(_) => DurationError::Negative(owned()),
            Err(_) => DurationError::Malformed(owned()),
        });
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DurationError::MissingUnit(owned()));
    }
    let bytes = text.as_bytes();
    let mut total: u64 = 0;
    // Index into UNITS of the next unit allowed; enforces "largest first, once each".
    let mut next_unit = 0;
    let mut i = 0;
    while i < bytes.len() {
        let digits_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == digits_start {
            return Err(DurationError::Malformed(owned()));
        }
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_lowercase() {
            i += 1;
        }
        let unit = &text[unit_start..i];
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(DurationError::Malformed(owned()));
        };
        if index < next_unit {
            return Err(DurationError::UnitOrder(owned()));
        }
        next_unit = index + 1;
        let millis = text[digits_start..unit_start]
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(UNITS[index].1))
            .and_then(|ms| ms.checked_add(total))
            .ok_or_else(|| DurationError::TooLarge(owned()))?;
        total = millis;
    }
    Ok(Duration::from_millis(total))
}

/// The canonical human form of a duration, truncated to whole milliseconds: `0s`,
/// `250ms`, `1h30m`, `1d2h`.
pub fn format(duration: Duration) -> String {
    Human(duration).to_string()
}

/// Displays a duration in its canonical human form without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if rest == 0 {
            return f.write_str("0s");
        }
        for (name, length) in UNITS {
            let count = rest / length;
            if count > 0 {
                write!(f, "{count}{name}")?;
                rest %= length;
            }
        }
        Ok(())
    }
}

/// `#[serde(with = "...")]` adapters that store durations in their human form, so a
/// serialized plan reads like the topology file it came from.
pub(crate) mod human_serde {
    use super::{Human, parse};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Human(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub(crate) mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&Human(*d)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| parse(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

    pub(crate) mod map {
        use super::*;
        use std::collections::BTreeMap;

        pub(crate) fn serialize<S: Serializer>(
            m: &BTreeMap<String, Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.collect_map(m.iter().map(|(k, d)| (k, Human(*d).to_string())))
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<BTreeMap<String, Duration>, D::Error> {
            BTreeMap::<String, String>::deserialize(d)?
                .into_iter()
                .map(|(k, text)| Ok((k, parse(&text).map_err(serde::de::Error::custom)?)))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_unit_and_compounds() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1d2h3m4s5ms"), Ok(Duration::from_millis(93_784_005)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("90m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn rejections_say_why() {
        let cases = [
            ("", "invalid duration \"\": it is empty"),
            (
                "-5s",
                "invalid duration \"-5s\": durations cannot be negative",
            ),
            ("30", "invalid duration \"30\": the unit is missing"),
            ("30 minutes", "invalid duration \"30 minutes\""),
            ("5 s", "invalid duration \"5 s\""),
            ("1.5h", "invalid duration \"1.5h\""),
            ("5S", "invalid duration \"5S\""),
            ("5x", "invalid duration \"5x\""),
            ("s", "invalid duration \"s\""),
            ("+5s", "invalid duration \"+5s\""),
            ("-x", "invalid duration \"-x\""),
            (
                "30m1h",
                "invalid duration \"30m1h\": units must go from largest to smallest, each at most once",
            ),
            (
                "1m1m",
                "invalid duration \"1m1m\": units must go from largest to smallest, each at most once",
            ),
            (
                "99999999999999999999s",
                "invalid duration \"99999999999999999999s\": it is too large",
            ),
            (
                "300000000000000d",
                "invalid duration \"300000000000000d\": it is too large",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(
                parse(text).unwrap_err().to_string(),
                message,
                "for {text:?}"
            );
        }
    }

    #[test]
    fn hints_fit_the_mistake() {
        assert_eq!(
            parse("30").unwrap_err().hint(),
            "write \"30s\" for seconds or \"30ms\" for milliseconds"
        );
        assert_eq!(parse("30 minutes").unwrap_err().hint(), EXAMPLES);
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_millis(86_400_001)), "1d1ms");
        assert_eq!(format(Duration::from_micros(1500)), "1ms");
    }

    /// Reference model: sum of (count × unit length) over the chosen units.
    fn render(parts: &[(u64, usize)]) -> (String, u64) {
        let mut text = String::new();
        let mut millis = 0;
        for &(count, unit) in parts {
            text.push_str(&std::format!("{count}{}", UNITS[unit].0));
            millis += count * UNITS[unit].1;
        }
        (text, millis)
    }

    proptest! {
        #[test]
        fn parse_agrees_with_reference(
            counts in proptest::collection::vec(0u64..100_000, 5),
            used in proptest::collection::vec(any::<bool>(), 5),
        ) {
            let parts: Vec<(u64, usize)> = (0..5).filter(|&i| used[i]).map(|i| (counts[i], i)).collect();
            prop_assume!(!parts.is_empty());
            let (text, millis) = render(&parts);
            prop_assert_eq!(parse(&text), Ok(Duration::from_millis(millis)));
        }

        #[test]
        fn format_round_trips(millis in 0u64..10_000_000_000_000) {
            let d = Duration::from_millis(millis);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn never_panics(text in "\\PC{0,12}") {
            let _ = parse(&text);
        }
    }
}
