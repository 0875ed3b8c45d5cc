//! The generator's knobs: [`GenConfig`] (serde, every field defaulted, unknown fields
//! rejected) and its validation.
//!
//! Invariant: a configuration that passes [`GenConfig::validate`] can be generated
//! without overflow and renders only RFC 3339 timestamps with four-digit years, so
//! the generator itself never fails.

use serde::{Deserialize, Serialize};

use super::Generator;

/// Event time of the first event by default: 2026-01-05T08:00:00Z.
pub const DEFAULT_START_MS: i64 = 1_767_600_000_000;
/// Most customers one generator simulates (each costs a few dozen bytes of memory).
pub const MAX_CUSTOMERS: u64 = 10_000_000;
/// Most journey events per customer: keeps every timestamp below the year 10000.
pub const MAX_EVENTS_PER_CUSTOMER: u64 = 1_000_000;
/// Largest `disorder_ms`: one day.
pub const MAX_DISORDER_MS: u64 = 86_400_000;
/// Latest `start`: 2100-01-01T00:00:00Z.
pub const MAX_START_MS: i64 = 4_102_444_800_000;

/// The knobs of a generated dataset. `build()` validates them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenConfig {
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Number of customers (`c-000001` …).
    pub customers: u64,
    /// Well-formed journey events to generate, late ones included; duplicates, poison
    /// records and fulfilment parts come on top.
    pub events: u64,
    /// Event time of the first event, epoch milliseconds.
    pub start: i64,
    /// Bound of the ordinary arrival delay: each on-time record arrives within
    /// `[event time, event time + disorder_ms]`.
    pub disorder_ms: u64,
    /// Share of well-formed records (journey events and parts) that arrive late: 30
    /// to 120 minutes past the disorder bound of the moment their session (30-minute
    /// gap) or their order's correlation (timeout under 5 h) has closed.
    pub late_fraction: f64,
    /// Share of on-time records that are sent a second time, byte for byte.
    pub duplicate_fraction: f64,
    /// Per well-formed record, the probability that a malformed record is sent with
    /// it, for the same key.
    pub poison_fraction: f64,
    /// Whether orders get fulfilment parts.
    pub fulfilment: bool,
    /// Share of fulfilment parts that are never sent.
    pub missing_part_fraction: f64,
    /// Share of sent fulfilment parts that happen 9 to 48 hours after their order.
    pub delayed_part_fraction: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            customers: 100_000,
            events: 2_000_000,
            start: DEFAULT_START_MS,
            disorder_ms: 5_000,
            late_fraction: 0.01,
            duplicate_fraction: 0.005,
            poison_fraction: 0.001,
            fulfilment: true,
            missing_part_fraction: 0.02,
            delayed_part_fraction: 0.02,
        }
    }
}

/// An invalid generator configuration; each names the knob.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenError {
    #[error("datagen: knob `{knob}` must be a fraction in [0, 1], got {value}")]
    Fraction { knob: &'static str, value: f64 },
    #[error("datagen: knob `customers` must be between 1 and {MAX_CUSTOMERS}, got {value}")]
    Customers { value: u64 },
    #[error(
        "datagen: knob `start` must be epoch milliseconds between 0 (1970-01-01T00:00:00Z) \
         and {MAX_START_MS} (2100-01-01T00:00:00Z), got {value}"
    )]
    Start { value: i64 },
    #[error("datagen: knob `disorder_ms` must be at most {MAX_DISORDER_MS} (one day), got {value}")]
    Disorder { value: u64 },
    #[error(
        "datagen: knob `events` must be at most {MAX_EVENTS_PER_CUSTOMER} per customer \
         ({customers} customers allow {max}), got {value}"
    )]
    Events {
        value: u64,
        customers: u64,
        max: u64,
    },
}

impl GenConfig {
    /// Checks every knob; the first invalid one is reported.
    pub fn validate(&self) -> Result<(), GenError> {
        for (knob, value) in [
            ("late_fraction", self.late_fraction),
            ("duplicate_fraction", self.duplicate_fraction),
            ("poison_fraction", self.poison_fraction),
            ("missing_part_fraction", self.missing_part_fraction),
            ("delayed_part_fraction", self.delayed_part_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(GenError::Fraction { knob, value });
            }
        }
        if !(1..=MAX_CUSTOMERS).contains(&self.customers) {
            return Err(GenError::Customers {
                value: self.customers,
            });
        }
        if !(0..=MAX_START_MS).contains(&self.start) {
            return Err(GenError::Start { value: self.start });
        }
        if self.disorder_ms > MAX_DISORDER_MS {
            return Err(GenError::Disorder {
                value: self.disorder_ms,
            });
        }
        let max = self.customers * MAX_EVENTS_PER_CUSTOMER;
        if self.events > max {
            return Err(GenError::Events {
                value: self.events,
                customers: self.customers,
                max,
            });
        }
        Ok(())
    }

    /// Validates the knobs and sets up the simulation (O(customers) time and memory).
    pub fn build(self) -> Result<Generator, GenError> {
        self.validate()?;
        Generator::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = GenConfig::default();
        assert_eq!(
            (
                c.seed,
                c.customers,
                c.events,
                c.start,
                c.disorder_ms,
                c.fulfilment
            ),
            (42, 100_000, 2_000_000, 1_767_600_000_000, 5_000, true)
        );
        assert_eq!(
            [c.late_fraction, c.duplicate_fraction, c.poison_fraction],
            [0.01, 0.005, 0.001]
        );
        assert_eq!(
            [c.missing_part_fraction, c.delayed_part_fraction],
            [0.02, 0.02]
        );
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn config_reads_partial_toml_and_rejects_unknown_knobs() {
        let c: GenConfig = toml::from_str("events = 10\nlate_fraction = 0.5").expect("valid");
        assert_eq!(
            c,
            GenConfig {
                events: 10,
                late_fraction: 0.5,
                ..GenConfig::default()
            }
        );
        let err = toml::from_str::<GenConfig>("customerz = 3").expect_err("unknown knob");
        assert!(
            err.to_string().contains("unknown field `customerz`"),
            "{err}"
        );
    }

    #[test]
    fn invalid_knobs_are_named() {
        let check = |config: GenConfig, message: &str| {
            let err = config.validate().expect_err("invalid");
            assert_eq!(err.to_string(), message);
            let err = config.build().err().expect("build validates");
            assert_eq!(err.to_string(), message);
        };
        let d = GenConfig::default;
        check(
            GenConfig {
                late_fraction: 1.5,
                ..d()
            },
            "datagen: knob `late_fraction` must be a fraction in [0, 1], got 1.5",
        );
        check(
            GenConfig {
                duplicate_fraction: -0.1,
                ..d()
            },
            "datagen: knob `duplicate_fraction` must be a fraction in [0, 1], got -0.1",
        );
        check(
            GenConfig {
                poison_fraction: f64::NAN,
                ..d()
            },
            "datagen: knob `poison_fraction` must be a fraction in [0, 1], got NaN",
        );
        check(
            GenConfig {
                missing_part_fraction: 2.0,
                ..d()
            },
            "datagen: knob `missing_part_fraction` must be a fraction in [0, 1], got 2",
        );
        check(
            GenConfig {
                delayed_part_fraction: 1.01,
                ..d()
            },
            "datagen: knob `delayed_part_fraction` must be a fraction in [0, 1], got 1.01",
        );
        check(
            GenConfig {
                customers: 0,
                ..d()
            },
            "datagen: knob `customers` must be between 1 and 10000000, got 0",
        );
        check(
            GenConfig { start: -1, ..d() },
            "datagen: knob `start` must be epoch milliseconds between 0 (1970-01-01T00:00:00Z) \
             and 4102444800000 (2100-01-01T00:00:00Z), got -1",
        );
        check(
            GenConfig {
                disorder_ms: 86_400_001,
                ..d()
            },
            "datagen: knob `disorder_ms` must be at most 86400000 (one day), got 86400001",
        );
        check(
            GenConfig {
                customers: 2,
                events: 2_000_001,
                ..d()
            },
            "datagen: knob `events` must be at most 1000000 per customer \
             (2 customers allow 2000000), got 2000001",
        );
    }
}
