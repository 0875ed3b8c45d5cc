//! Human byte sizes for `limits.max_record_bytes`: a whole number of bytes (`1048576`,
//! as a TOML integer or a string) or a number with a binary unit (`512KiB`, `1MiB`).
//!
//! Only binary units are accepted: `KB`/`MB` are ambiguous (1000 or 1024?) and a size
//! limit that is off by 5% is a confusing bug, so they are rejected with a hint.
//! [`format`] writes the largest unit that divides the size exactly, so
//! `parse(format(n)) == n`.

use std::fmt;

const UNITS: [(&str, u64); 4] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size {}: use binary units", super::diag::quoted(.0))]
    DecimalUnit(String),
    #[error("invalid size {}: it is too large", super::diag::quoted(.0))]
    TooLarge(String),
    #[error("invalid size {}", super::diag::quoted(.0))]
    Malformed(String),
}

impl SizeError {
    /// How to write it instead.
    pub fn hint(&self) -> &'static str {
        match self {
            SizeError::DecimalUnit(_) => "write KiB, MiB or GiB (1MiB = 1048576 bytes)",
            SizeError::TooLarge(_) | SizeError::Malformed(_) => {
                "use a number of bytes or a number and a unit: 65536, 512KiB, 1MiB"
            }
        }
    }
}

/// Parses `1048576`, `1048576B`, `512KiB`, `1MiB`, `2GiB`.
pub fn parse(text: &str) -> Result<u64, SizeError> {
    let digits_end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Malformed(text.to_owned()));
    }
    let multiplier = match unit {
        "" => 1,
        _ => match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, multiplier)) => *multiplier,
            None if ["kB", "KB", "MB", "GB", "K", "M", "G", "k", "m", "g"].contains(&unit) => {
                return Err(SizeError::DecimalUnit(text.to_owned()));
            }
            None => return Err(SizeError::Malformed(text.to_owned())),
        },
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| SizeError::TooLarge(text.to_owned()))
}

/// The canonical form of a size: the largest binary unit that divides it exactly.
pub fn format(bytes: u64) -> String {
    Bytes(bytes).to_string()
}

/// Displays a byte count in its canonical form.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, multiplier) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(multiplier) {
                return write!(f, "{}{name}", self.0 / multiplier);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_plain_and_binary_units() {
        assert_eq!(parse("1048576"), Ok(1 << 20));
        assert_eq!(parse("100B"), Ok(100));
        assert_eq!(parse("512KiB"), Ok(512 << 10));
        assert_eq!(parse("1MiB"), Ok(1 << 20));
        assert_eq!(parse("2GiB"), Ok(2 << 30));
    }

    #[test]
    fn rejections_say_why() {
        let cases = [
            ("1MB", "invalid size \"1MB\": use binary units"),
            ("64k", "invalid size \"64k\": use binary units"),
            ("1 MiB", "invalid size \"1 MiB\""),
            ("MiB", "invalid size \"MiB\""),
            ("", "invalid size \"\""),
            ("-1", "invalid size \"-1\""),
            ("1.5MiB", "invalid size \"1.5MiB\""),
            (
                "99999999999GiB",
                "invalid size \"99999999999GiB\": it is too large",
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
    fn formats_with_the_largest_exact_unit() {
        assert_eq!(format(0), "0B");
        assert_eq!(format(1000), "1000B");
        assert_eq!(format(1 << 20), "1MiB");
        assert_eq!(format(1536), "1536B");
        assert_eq!(format(3 << 10), "3KiB");
    }

    proptest! {
        #[test]
        fn format_round_trips(bytes in 0u64..(1 << 40)) {
            prop_assert_eq!(parse(&format(bytes)), Ok(bytes));
        }
    }
}
