//! Where a source starts reading: `beginning`, `end`, `offset:N` or
//! `timestamp:RFC3339`. The same text form is used by the topology file and by the
//! CLI's `--from`/`--to`, so parsing ([`std::str::FromStr`]) and printing
//! ([`std::fmt::Display`]) round-trip.
//!
//! A timestamp is kept as epoch milliseconds (the event-time resolution); any RFC 3339
//! offset is accepted and normalised to UTC.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A position in every partition of a source topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StartPosition {
    /// The first record still in the log.
    #[default]
    Beginning,
    /// Only records appended after the job starts.
    End,
    /// An absolute offset, the same in every partition.
    Offset(u64),
    /// The first record at or after this instant by the log's time index, in epoch
    /// milliseconds.
    Timestamp(i64),
}

/// Why a start position was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartPositionError {
    #[error(
        "invalid start position {}: expected beginning, end, offset:N or timestamp:RFC3339",
        super::diag::quoted(.0)
    )]
    Unknown(String),
    #[error(
        "invalid start position {}: the offset must be a non-negative integer",
        super::diag::quoted(.0)
    )]
    BadOffset(String),
    #[error(
        "invalid start position {}: the timestamp is not RFC 3339",
        super::diag::quoted(.0)
    )]
    BadTimestamp(String),
}

impl StartPositionError {
    /// Examples of what is accepted.
    pub fn hint(&self) -> &'static str {
        "e.g. beginning, end, offset:42 or timestamp:2024-05-01T00:00:00Z"
    }
}

impl FromStr for StartPosition {
    type Err = StartPositionError;

    fn from_str(text: &str) -> Result<Self, StartPositionError> {
        match text {
            "beginning" => return Ok(StartPosition::Beginning),
            "end" => return Ok(StartPosition::End),
            _ => {}
        }
        if let Some(offset) = text.strip_prefix("offset:") {
            // u64::from_str accepts a leading '+'; a position is digits only.
            if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
                return Err(StartPositionError::BadOffset(text.to_owned()));
            }
            return offset
                .parse()
                .map(StartPosition::Offset)
                .map_err(|_| StartPositionError::BadOffset(text.to_owned()));
        }
        if let Some(timestamp) = text.strip_prefix("timestamp:") {
            return DateTime::parse_from_rfc3339(timestamp)
                .map(|t| StartPosition::Timestamp(t.timestamp_millis()))
                .map_err(|_| StartPositionError::BadTimestamp(text.to_owned()));
        }
        Err(StartPositionError::Unknown(text.to_owned()))
    }
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Beginning => f.write_str("beginning"),
            StartPosition::End => f.write_str("end"),
            StartPosition::Offset(offset) => write!(f, "offset:{offset}"),
            StartPosition::Timestamp(millis) => {
                match DateTime::<Utc>::from_timestamp_millis(*millis) {
                    Some(t) => write!(
                        f,
                        "timestamp:{}",
                        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
                    ),
                    // Out of chrono's range: cannot come from parsing, only from code.
                    None => write!(f, "timestamp:{millis}ms"),
                }
            }
        }
    }
}

impl TryFrom<String> for StartPosition {
    type Error = StartPositionError;
    fn try_from(text: String) -> Result<Self, StartPositionError> {
        text.parse()
    }
}

impl From<StartPosition> for String {
    fn from(position: StartPosition) -> String {
        position.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("beginning".parse(), Ok(StartPosition::Beginning));
        assert_eq!("end".parse(), Ok(StartPosition::End));
        assert_eq!("offset:42".parse(), Ok(StartPosition::Offset(42)));
        assert_eq!(
            "timestamp:2024-05-01T02:00:00+02:00".parse(),
            Ok(StartPosition::Timestamp(1_714_521_600_000))
        );
        assert_eq!(
            "timestamp:2024-05-01T00:00:00.250Z".parse(),
            Ok(StartPosition::Timestamp(1_714_521_600_250))
        );
    }

    #[test]
    fn rejections_say_why() {
        let cases = [
            (
                "begining",
                "invalid start position \"begining\": expected beginning, end, offset:N or timestamp:RFC3339",
            ),
            (
                "offset:-1",
                "invalid start position \"offset:-1\": the offset must be a non-negative integer",
            ),
            (
                "offset:+1",
                "invalid start position \"offset:+1\": the offset must be a non-negative integer",
            ),
            (
                "offset:",
                "invalid start position \"offset:\": the offset must be a non-negative integer",
            ),
            (
                "timestamp:yesterday",
                "invalid start position \"timestamp:yesterday\": the timestamp is not RFC 3339",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(
                text.parse::<StartPosition>().unwrap_err().to_string(),
                message
            );
        }
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(
            StartPosition::Timestamp(1_714_521_600_000).to_string(),
            "timestamp:2024-05-01T00:00:00Z"
        );
        assert_eq!(
            StartPosition::Timestamp(1_714_521_600_250).to_string(),
            "timestamp:2024-05-01T00:00:00.250Z"
        );
        assert_eq!(StartPosition::Offset(7).to_string(), "offset:7");
    }

    fn any_position() -> impl Strategy<Value = StartPosition> {
        prop_oneof![
            Just(StartPosition::Beginning),
            Just(StartPosition::End),
            any::<u64>().prop_map(StartPosition::Offset),
            // Years 0..=9999, the range RFC 3339 can write.
            (-62_167_219_200_000i64..253_402_300_799_999).prop_map(StartPosition::Timestamp),
        ]
    }

    proptest! {
        #[test]
        fn display_round_trips(position in any_position()) {
            prop_assert_eq!(position.to_string().parse(), Ok(position));
        }
    }
}
