//! Time as text, one implementation for the whole crate: ISO 8601 / RFC 3339 timestamps to and
//! from nanoseconds since the Unix epoch (workflow `--at` queries and imports, telemetry
//! notes, the CLI's `--from`/`--to` and output), and the short durations operators type
//! (`500ms`, `10s`, `5m`, `48h`, `30d`).
//!
//! Pure: nothing here reads a clock. Every time is an argument.

use ::time::format_description::well_known::{Iso8601, Rfc3339};
use ::time::{Date, OffsetDateTime, PrimitiveDateTime};

/// Why a timestamp string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error(
        "timestamp {input:?} has no time zone; add \"Z\" for UTC or an offset such as \
         \"+01:00\" (e.g. \"2026-11-26T21:08:55Z\")"
    )]
    MissingZone { input: String },
    #[error(
        "timestamp {input:?} is not an RFC 3339 / ISO 8601 date-time with a time zone \
         (e.g. \"2026-11-26T21:08:55Z\" or \"2026-11-26T22:08:55.5+01:00\"): {reason}"
    )]
    Invalid { input: String, reason: String },
    #[error("timestamp {input:?} is outside the range of i64 nanoseconds since the epoch (years 1677 to 2262)")]
    OutOfRange { input: String },
    /// None of the forms [`parse_time_ns`] reads; holds why the zoned form failed.
    #[error(
        "{0}; a time is ns since the epoch, RFC 3339 with a zone (e.g. 2014-02-20T00:00:00Z \
         or 2014-02-20T01:00:00+01:00), or `YYYY-MM-DD HH:MM:SS` read as UTC"
    )]
    Unrecognized(Box<TimestampError>),
}

/// Parses an RFC 3339 or ISO 8601 date-time that carries a time zone (`Z` or `±hh:mm`, with
/// optional fractional seconds down to nanoseconds) into nanoseconds since the Unix epoch.
/// Strings without a zone are rejected: a local time is ambiguous.
pub fn parse_timestamp(input: &str) -> Result<i64, TimestampError> {
    let s = input.trim();
    let parsed = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|rfc_err| OffsetDateTime::parse(s, &Iso8601::PARSING).map_err(|_| rfc_err));
    match parsed {
        Ok(dt) if dt.offset().whole_hours().abs() > 23 => Err(TimestampError::Invalid {
            input: input.to_owned(),
            reason: "the zone offset must be less than 24 hours".to_owned(),
        }),
        Ok(dt) => {
            i64::try_from(dt.unix_timestamp_nanos()).map_err(|_| TimestampError::OutOfRange {
                input: input.to_owned(),
            })
        }
        Err(err) => {
            let parses_without_zone = PrimitiveDateTime::parse(s, &Iso8601::PARSING).is_ok()
                || Date::parse(s, &Iso8601::PARSING).is_ok();
            if !has_zone(s) && parses_without_zone {
                Err(TimestampError::MissingZone {
                    input: input.to_owned(),
                })
            } else {
                Err(TimestampError::Invalid {
                    input: input.to_owned(),
                    reason: err.to_string(),
                })
            }
        }
    }
}

/// Whether the time part of a date-time string ends in a zone designator (`Z`) or carries an
/// offset (`+hh…`/`-hh…`). A string without a time part has no zone.
fn has_zone(s: &str) -> bool {
    match s.split_once(['T', 't', ' ']) {
        None => false,
        Some((_, time)) => time.ends_with(['Z', 'z']) || time.contains(['+', '-']),
    }
}

/// A time as an operator writes it on the command line or in a CSV file: integer
/// nanoseconds since the epoch, a zoned timestamp ([`parse_timestamp`]), or
/// `YYYY-MM-DD HH:MM:SS` read as UTC (the NAB benchmark's CSV form).
pub fn parse_time_ns(input: &str) -> Result<i64, TimestampError> {
    let s = input.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let err = match parse_timestamp(s) {
        Ok(ns) => return Ok(ns),
        Err(e) => e,
    };
    let fmt = ::time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = PrimitiveDateTime::parse(s, &fmt)
        .map_err(|_| TimestampError::Unrecognized(Box::new(err)))?;
    i64::try_from(t.assume_utc().unix_timestamp_nanos()).map_err(|_| TimestampError::OutOfRange {
        input: s.to_owned(),
    })
}

/// Formats nanoseconds since the epoch as RFC 3339 in UTC, e.g. `2026-11-26T21:08:55.5Z`.
pub fn format_timestamp(ns: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        // Every i64 is within the years time supports; this fallback is never used.
        .unwrap_or_else(|| format!("{ns}ns since the epoch"))
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("bad duration {0:?}: use e.g. 500ms, 10s, 5m, 48h, 30d")]
    Invalid(String),
    #[error("duration {0:?} too large")]
    TooLarge(String),
}

/// `500ms`, `10s`, `5m`, `48h`, `30d` → milliseconds: whole numbers with one unit.
pub fn parse_duration_ms(s: &str) -> Result<u64, DurationError> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::Invalid(s.to_owned()))?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(DurationError::Invalid(s.to_owned())),
    };
    n.checked_mul(mult)
        .ok_or_else(|| DurationError::TooLarge(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-26T21:08:55Z.
    const BASE: i64 = 1_795_727_335_000_000_000;
    const SEC: i64 = 1_000_000_000;

    /// What a parse should give, without the free-text parts of errors.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        Ns(i64),
        NoZone,
        Invalid,
        OutOfRange,
        Unrecognized,
    }
    use Want::*;

    fn kind(r: Result<i64, TimestampError>) -> Want {
        match r {
            Ok(ns) => Ns(ns),
            Err(TimestampError::MissingZone { .. }) => NoZone,
            Err(TimestampError::Invalid { .. }) => Invalid,
            Err(TimestampError::OutOfRange { .. }) => OutOfRange,
            Err(TimestampError::Unrecognized(_)) => Unrecognized,
        }
    }

    /// The input an error names, which must be the one given.
    fn named_input(e: &TimestampError) -> Option<&str> {
        match e {
            TimestampError::MissingZone { input }
            | TimestampError::Invalid { input, .. }
            | TimestampError::OutOfRange { input } => Some(input),
            TimestampError::Unrecognized(e) => named_input(e),
        }
    }

    /// Runs `parse` over every case and reports all that differ at once: the outcome, the
    /// input an error names, and the fix a missing zone's message suggests.
    fn check(parse: fn(&str) -> Result<i64, TimestampError>, cases: &[(&str, Want)]) {
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|&(input, want)| {
                let got = parse(input);
                let problem = match &got {
                    _ if kind(got.clone()) != want => Some(format!("got {got:?}")),
                    Err(e) if named_input(e).map(str::trim) != Some(input.trim()) => {
                        Some(format!("names another input: {e:?}"))
                    }
                    Err(e @ TimestampError::MissingZone { .. })
                        if !e.to_string().contains("has no time zone; add \"Z\"") =>
                    {
                        Some(format!("says {e}"))
                    }
                    _ => None,
                };
                problem.map(|p| format!("{input:?}: want {want:?}, {p}"))
            })
            .collect();
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn zoned_timestamps() {
        check(
            parse_timestamp,
            &[
                ("2026-11-26T21:08:55Z", Ns(BASE)),
                ("2026-11-26T22:08:55+01:00", Ns(BASE)),
                ("2026-11-26T16:38:55-04:30", Ns(BASE)),
                ("2026-11-26T21:08:55+00:00", Ns(BASE)),
                ("2026-11-26T21:08:55z", Ns(BASE)), // lower-case z
                ("  2026-11-26T21:08:55Z\n", Ns(BASE)), // trimmed
                ("2026-11-26T21:08:55.5Z", Ns(BASE + 500_000_000)),
                (
                    "2026-11-26T22:08:55.123456789+01:00",
                    Ns(BASE + 123_456_789),
                ),
                ("2026-11-26T21:08:55.000001Z", Ns(BASE + 1_000)),
                // ISO 8601 forms beyond RFC 3339.
                ("20261126T210855Z", Ns(BASE)), // basic format
                ("2026-11-26T22:08:55+0100", Ns(BASE)),
                ("2026-11-26T22:08+01:00", Ns(BASE - 55 * SEC)),
                ("2026-11-26 21:08:55Z", Ns(BASE)), // RFC 3339 space
                ("2026-W48-4T21:08:55Z", Ns(BASE)), // ISO week date
                ("2026-330T21:08:55Z", Ns(BASE)),   // ISO ordinal date
                // Digits beyond nanoseconds are dropped.
                ("2026-11-26T21:08:55.1234567891Z", Ns(BASE + 123_456_789)),
                // Around the epoch.
                ("1969-12-31T23:59:59Z", Ns(-SEC)),
                ("1970-01-01T00:00:00Z", Ns(0)),
                // A local time is ambiguous.
                ("2026-11-26T21:08:55", NoZone),
                ("2026-11-26T21:08:55.5", NoZone),
                ("2026-11-26T21:08", NoZone),
                ("2026-11-26", NoZone),
                // Malformed.
                ("", Invalid),
                ("yesterday", Invalid),
                ("2026-13-01T00:00:00Z", Invalid),
                ("2026-11-26T25:00:00Z", Invalid),
                ("2026-11-26T21:08:55+25:00", Invalid),
                ("1700000000", Invalid),
                ("2026-11-26T21:08:60Z", Invalid),
                ("2026-11-26T21:08:55.Z", Invalid),
                ("2026-11-26T21:08:55 +01:00", Invalid),
                ("2026-11-26T25:00:00", Invalid),
                // Beyond i64 nanoseconds.
                ("2300-01-01T00:00:00Z", OutOfRange),
                ("1600-01-01T00:00:00Z", OutOfRange),
            ],
        );
    }

    #[test]
    fn errors_name_the_input_and_the_fix() {
        assert_eq!(
            parse_timestamp("2300-01-01T00:00:00Z"),
            Err(TimestampError::OutOfRange {
                input: "2300-01-01T00:00:00Z".into()
            })
        );
        let no_zone = parse_timestamp("2026-11-26").unwrap_err().to_string();
        assert!(no_zone.contains("has no time zone"), "{no_zone}");
        let cli = parse_time_ns("yesterday").unwrap_err().to_string();
        assert!(
            cli.contains("\"yesterday\"") && cli.contains("read as UTC"),
            "{cli}"
        );
    }

    #[test]
    fn command_line_times() {
        let nab = 1_392_854_400 * SEC; // 2014-02-20T00:00:00Z
        check(
            parse_time_ns,
            &[
                ("1700000000", Ns(1_700_000_000)),
                ("-5", Ns(-5)),
                (" 42 ", Ns(42)),
                ("2014-02-20T00:00:00Z", Ns(nab)),
                ("2014-02-20T01:00:00+01:00", Ns(nab)),
                ("2014-02-20 00:00:00", Ns(nab)),
                ("2014-02-20 00:00:05", Ns(nab + 5 * SEC)),
                ("2014-02-20T00:00:00", Unrecognized),
                ("2014-02-20", Unrecognized),
                ("yesterday", Unrecognized),
                ("", Unrecognized),
                ("2300-01-01 00:00:00", OutOfRange),
            ],
        );
    }

    #[test]
    fn formats_as_rfc3339_utc() {
        for (ns, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (BASE + 500_000_000, "2026-11-26T21:08:55.5Z"),
            (-SEC, "1969-12-31T23:59:59Z"),
            (BASE + 1, "2026-11-26T21:08:55.000000001Z"),
        ] {
            assert_eq!(format_timestamp(ns), text, "{ns}");
        }
        for ns in [0, 1, -1, BASE + 123_456_789, i64::MAX, i64::MIN] {
            assert_eq!(parse_timestamp(&format_timestamp(ns)), Ok(ns), "{ns}");
        }
    }

    #[test]
    fn durations() {
        use DurationError::{Invalid, TooLarge};
        let cases: &[(&str, Result<u64, DurationError>)] = &[
            ("500ms", Ok(500)),
            ("10s", Ok(10_000)),
            ("5m", Ok(300_000)),
            ("48h", Ok(172_800_000)),
            ("30d", Ok(2_592_000_000)),
            ("0s", Ok(0)),
            ("", Err(Invalid("".into()))),
            ("5", Err(Invalid("5".into()))),
            ("h", Err(Invalid("h".into()))),
            ("1.5h", Err(Invalid("1.5h".into()))),
            ("-5m", Err(Invalid("-5m".into()))),
            ("5 m", Err(Invalid("5 m".into()))),
            ("5M", Err(Invalid("5M".into()))),
            (
                "99999999999999999999d",
                Err(Invalid("99999999999999999999d".into())),
            ),
            (
                "9999999999999999d",
                Err(TooLarge("9999999999999999d".into())),
            ),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter_map(|(input, want)| {
                let got = parse_duration_ms(input);
                (got != *want).then(|| format!("{input:?}: want {want:?}, got {got:?}"))
            })
            .collect();
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    proptest::proptest! {
        #[test]
        fn timestamps_round_trip(ns in proptest::prelude::any::<i64>()) {
            proptest::prop_assert_eq!(parse_timestamp(&format_timestamp(ns)), Ok(ns));
        }
    }
}
