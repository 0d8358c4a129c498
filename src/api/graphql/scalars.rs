//! The GraphQL API's time types: `DateTime` (RFC 3339 with an offset or `Z`, never a
//! floating local time), `Duration` (ISO 8601 `PT5M`/`P1D` or the short `5m`/`1h30m`),
//! and the `TimeRange` a query covers (end exclusive, optionally in an IANA zone that shifts
//! output times and aligns calendar buckets on local midnights). Time zones come from jiff's
//! bundled database, so answers do not depend on the host's zoneinfo.

use async_graphql::{InputObject, InputValueError, InputValueResult, Scalar, ScalarType, Value};
use jiff::tz::TimeZone;
use jiff::{Span, SpanRelativeTo, Timestamp, Unit};

use crate::telemetry::command::{MAX_TS, MIN_TS};

/// An instant, in ns since the Unix epoch, and the zone it is rendered in (input is
/// always UTC: the offset it was written with is not kept).
#[derive(Debug, Clone, PartialEq)]
pub struct DateTime {
    pub ns: i64,
    pub zone: Zone,
}

impl DateTime {
    pub fn utc(ns: i64) -> Self {
        DateTime {
            ns,
            zone: Zone::Utc,
        }
    }
}

/// Parses an RFC 3339 / ISO 8601 instant. A time without an offset names no instant (it is
/// a wall-clock reading in an unknown zone): refused, saying so.
pub fn parse_instant(s: &str) -> Result<i64, String> {
    match s.parse::<Timestamp>() {
        Ok(t) => {
            let ns = t.as_nanosecond();
            i64::try_from(ns)
                .ok()
                .filter(|ns| (MIN_TS..=MAX_TS).contains(ns))
                .ok_or_else(|| format!("{s:?} is outside the supported times"))
        }
        Err(e) => {
            if s.parse::<jiff::civil::DateTime>().is_ok() || s.parse::<jiff::civil::Date>().is_ok()
            {
                Err(format!(
                    "{s:?} has no time zone: give an offset or Z (e.g. {s}Z or {s}+01:00), a \
                     time without one names no instant"
                ))
            } else {
                Err(format!("{s:?} is not an RFC 3339 date-time: {e}"))
            }
        }
    }
}

#[Scalar(name = "DateTime")]
/// An instant as RFC 3339 with an offset or `Z`, e.g. `2026-03-29T14:05:00+02:00`. Input
/// without an offset is an error. Output is in UTC, or in the query range's `zone`.
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(s) => parse_instant(&s)
                .map(DateTime::utc)
                .map_err(InputValueError::custom),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.zone.render(self.ns))
    }
}

/// A length of time: ISO 8601 (`PT5M`, `P1D`, `P1W`, `P1M`) or short (`5m`, `90s`, `1h30m`,
/// `1d`). Days, weeks, months and years are calendar units: in a range with a `zone` they
/// follow its calendar (a day across a DST change is 23 or 25 hours); elsewhere a day is
/// 24 hours and months or years are refused.
#[derive(Debug, Clone, Copy)]
pub struct Duration(pub Span);

#[Scalar(name = "Duration")]
/// A length of time: ISO 8601 (`PT5M`, `P1D`) or short (`5m`, `1h30m`, `1d`).
impl ScalarType for Duration {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(s) = value else {
            return Err(InputValueError::expected_type(value));
        };
        let span: Span = s
            .trim()
            .parse()
            .map_err(|e| InputValueError::custom(format!("{s:?} is not a duration: {e}")))?;
        if span.is_negative() || span.is_zero() {
            return Err(InputValueError::custom(format!(
                "{s:?}: a duration must be positive"
            )));
        }
        Ok(Duration(span))
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

impl Duration {
    /// Whether it counts calendar units (days or longer), which depend on a zone.
    pub fn is_calendar(&self) -> bool {
        let s = self.0;
        s.get_years() != 0 || s.get_months() != 0 || s.get_weeks() != 0 || s.get_days() != 0
    }

    /// Its length in ns, a day being 24 hours; months and years (whose length varies) are
    /// refused.
    pub fn fixed_ns(&self) -> Result<i64, String> {
        if self.0.get_years() != 0 || self.0.get_months() != 0 {
            return Err(format!(
                "{}: months and years have no fixed length; use days, or buckets in a zone",
                self.0
            ));
        }
        let ns = self
            .0
            .total((Unit::Nanosecond, SpanRelativeTo::days_are_24_hours()))
            .map_err(|e| format!("{}: {e}", self.0))?;
        if !(1.0..=i64::MAX as f64).contains(&ns) {
            return Err(format!("{}: out of range", self.0));
        }
        Ok(ns as i64)
    }
}

/// The zone a range's output is rendered in.
#[derive(Debug, Clone, PartialEq)]
pub enum Zone {
    Utc,
    Named(TimeZone),
}

impl Zone {
    pub fn parse(name: Option<&str>) -> Result<Zone, String> {
        match name {
            None => Ok(Zone::Utc),
            Some(n) => TimeZone::get(n)
                .map(Zone::Named)
                .map_err(|_| format!("{n:?} is not an IANA time zone (e.g. Europe/Berlin)")),
        }
    }

    /// The instant `ns` as RFC 3339: `Z` in UTC, else with the zone's offset at that instant.
    pub fn render(&self, ns: i64) -> String {
        let Ok(t) = Timestamp::from_nanosecond(i128::from(ns)) else {
            return ns.to_string();
        };
        match self {
            Zone::Utc => t.to_string(),
            Zone::Named(tz) => t.display_with_offset(tz.to_offset(t)).to_string(),
        }
    }

    pub fn time_zone(&self) -> TimeZone {
        match self {
            Zone::Utc => TimeZone::UTC,
            Zone::Named(tz) => tz.clone(),
        }
    }

    pub fn name(&self) -> Option<String> {
        match self {
            Zone::Utc => None,
            Zone::Named(tz) => tz.iana_name().map(str::to_owned),
        }
    }
}

/// A time range: `start` inclusive, `end` exclusive, optionally in an IANA `zone`.
#[derive(Debug, Clone, InputObject)]
#[graphql(name = "TimeRangeInput")]
pub struct TimeRangeInput {
    pub start: DateTime,
    pub end: DateTime,
    /// IANA zone (e.g. `Europe/Berlin`): output times carry its offset, and calendar
    /// buckets (`every: "P1D"`) start at its local midnights.
    pub zone: Option<String>,
}

/// A validated range.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub start_ns: i64,
    pub end_ns: i64,
    pub zone: Zone,
}

impl TimeRangeInput {
    pub fn validate(&self) -> Result<Range, String> {
        if self.end.ns <= self.start.ns {
            return Err(format!(
                "empty or inverted range: end {} is not after start {}",
                Zone::Utc.render(self.end.ns),
                Zone::Utc.render(self.start.ns)
            ));
        }
        Ok(Range {
            start_ns: self.start.ns,
            end_ns: self.end.ns,
            zone: Zone::parse(self.zone.as_deref())?,
        })
    }
}

impl Range {
    /// The edges of calendar buckets of `every` over the range, in its zone: the range's
    /// start, every local boundary inside it (aligned to the start of the local day, so
    /// `P1D` buckets begin at local midnights whatever DST does), and its end. At most
    /// `max_buckets` buckets.
    pub fn calendar_edges(&self, every: &Duration, max_buckets: usize) -> Result<Vec<i64>, String> {
        let tz = self.zone.time_zone();
        let ts = |ns: i64| Timestamp::from_nanosecond(i128::from(ns)).map_err(|e| e.to_string());
        // Each edge is the local midnight of the start's day plus k × `every`, in civil
        // time, then placed in the zone: adding to the previous edge would let a short
        // month (Jan 31 + 1 month = Feb 28) or a midnight DST change shift every later edge.
        let base = ts(self.start_ns)?
            .to_zoned(tz.clone())
            .date()
            .to_datetime(jiff::civil::Time::midnight());
        let past = || "bucket edge past the supported times".to_owned();
        let mut edges = vec![self.start_ns];
        for k in 1i64.. {
            let step = every.0.checked_mul(k).map_err(|_| past())?;
            let civil = base.checked_add(step).map_err(|_| past())?;
            let edge = civil.to_zoned(tz.clone()).map_err(|e| e.to_string())?;
            let ns = i64::try_from(edge.timestamp().as_nanosecond()).map_err(|_| past())?;
            if ns >= self.end_ns {
                break;
            }
            if ns > self.start_ns {
                edges.push(ns);
            }
            if edges.len() > max_buckets {
                return Err(format!(
                    "more than {max_buckets} buckets of {} in the range",
                    every.0
                ));
            }
        }
        edges.push(self.end_ns);
        Ok(edges)
    }

    /// `ns` as an output `DateTime`, in the range's zone.
    pub fn at(&self, ns: i64) -> DateTime {
        DateTime {
            ns,
            zone: self.zone.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> i64 {
        parse_instant(s).unwrap()
    }

    #[test]
    fn instants_need_a_zone_and_name_the_same_instant_in_any_offset() {
        let z = ns("2026-03-29T08:30:00Z");
        assert_eq!(ns("2026-03-29T14:00:00+05:30"), z);
        assert_eq!(ns("2026-03-29T00:30:00-08:00"), z);
        let e = parse_instant("2026-03-29T08:30:00").unwrap_err();
        assert!(e.contains("no time zone"), "{e}");
        assert!(parse_instant("2026-03-29")
            .unwrap_err()
            .contains("no time zone"));
        assert!(parse_instant("yesterday")
            .unwrap_err()
            .contains("not an RFC 3339"));
        assert!(parse_instant("9999-12-31T23:59:59Z").is_err());
    }

    #[test]
    fn durations_in_both_forms() {
        let d = |s: &str| Duration::parse(Value::String(s.into()));
        let min5 = 5 * 60 * 1_000_000_000;
        assert_eq!(d("PT5M").unwrap().fixed_ns().unwrap(), min5);
        assert_eq!(d("5m").unwrap().fixed_ns().unwrap(), min5);
        assert_eq!(
            d("1h30m").unwrap().fixed_ns().unwrap(),
            90 * 60 * 1_000_000_000
        );
        assert_eq!(
            d("P1D").unwrap().fixed_ns().unwrap(),
            86_400 * 1_000_000_000
        );
        assert!(d("P1D").unwrap().is_calendar());
        assert!(d("P1M").unwrap().fixed_ns().is_err());
        assert!(d("-5m").is_err());
        assert!(d("PT0S").is_err());
        assert!(d("soon").is_err());
    }

    #[test]
    fn berlin_days_across_dst_are_23_and_25_hours() {
        let hours = |start: &str, end: &str| {
            let r = Range {
                start_ns: ns(start),
                end_ns: ns(end),
                zone: Zone::parse(Some("Europe/Berlin")).unwrap(),
            };
            let every = Duration("P1D".parse().unwrap());
            let e = r.calendar_edges(&every, 100).unwrap();
            e.windows(2)
                .map(|w| (w[1] - w[0]) / 3_600_000_000_000)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            hours("2026-03-28T00:00:00+01:00", "2026-03-31T00:00:00+02:00"),
            [24, 23, 24]
        );
        assert_eq!(
            hours("2026-10-24T00:00:00+02:00", "2026-10-27T00:00:00+01:00"),
            [24, 25, 24]
        );
        let z = Zone::parse(Some("Europe/Berlin")).unwrap();
        assert_eq!(
            z.render(ns("2026-03-29T01:00:00Z")),
            "2026-03-29T03:00:00+02:00"
        );
        assert!(Zone::parse(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn month_edges_do_not_drift_and_midnight_dst_changes_shift_one_day_only() {
        let edges = |start: &str, end: &str, zone: &str, every: &str| {
            let r = Range {
                start_ns: ns(start),
                end_ns: ns(end),
                zone: Zone::parse(Some(zone)).unwrap(),
            };
            let e = r
                .calendar_edges(&Duration(every.parse().unwrap()), 100)
                .unwrap();
            e.iter().map(|n| r.zone.render(*n)).collect::<Vec<_>>()
        };
        assert_eq!(
            edges(
                "2026-01-31T00:00:00+00:00",
                "2026-05-01T00:00:00Z",
                "UTC",
                "P1M"
            ),
            [
                "2026-01-31T00:00:00+00:00",
                "2026-02-28T00:00:00+00:00",
                "2026-03-31T00:00:00+00:00",
                "2026-04-30T00:00:00+00:00",
                "2026-05-01T00:00:00+00:00"
            ]
        );
        // Chile moves its clocks at local midnight (2026-09-06: 00:00 → 01:00): that day
        // begins at 01:00, the next ones at midnight again.
        let e = edges(
            "2026-09-05T00:00:00-04:00",
            "2026-09-08T00:00:00-03:00",
            "America/Santiago",
            "P1D",
        );
        assert_eq!(
            e,
            [
                "2026-09-05T00:00:00-04:00",
                "2026-09-06T01:00:00-03:00",
                "2026-09-07T00:00:00-03:00",
                "2026-09-08T00:00:00-03:00"
            ]
        );
    }
}
