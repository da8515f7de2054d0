//! Calendar days and budget periods, in UTC.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

/// Days since 1970-01-01 (UTC).
pub type Day = i64;

const SECONDS_PER_DAY: i64 = 86_400;

/// The current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// The UTC day of a Unix time in milliseconds.
pub fn day_of_ms(ms: i64) -> Day {
    ms.div_euclid(SECONDS_PER_DAY * 1000)
}

/// The calendar date of a day.
pub fn date_of(day: Day) -> Date {
    Timestamp::from_second(day.saturating_mul(SECONDS_PER_DAY))
        .map(|t| t.to_zoned_datetime(TimeZone::UTC).date())
        .unwrap_or_default()
}

/// The day of a calendar date: days since 1970-01-01, counted on the
/// calendar (every date jiff holds has one, 9999-12-31 included).
pub fn day_of_date(date: Date) -> Day {
    date.since(jiff::civil::date(1970, 1, 1))
        .map(|span| i64::from(span.get_days()))
        .unwrap_or_default()
}

/// How often a budget starts again. Periods are calendar-aligned in UTC: a
/// day starts at midnight, a week on Monday, a month on its first day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every Monday at 00:00 UTC.
    Weekly,
    /// The first of every month at 00:00 UTC.
    Monthly,
}

impl BudgetPeriod {
    /// Parses `daily`/`1d`/`24h`, `weekly`/`7d`/`1w`, `monthly`/`1mo`/`30d`
    /// (LiteLLM's `30d` budgets, too, start again on the first of the month).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "daily" | "1d" | "24h" | "day" => Some(Self::Daily),
            "weekly" | "7d" | "1w" | "week" => Some(Self::Weekly),
            "monthly" | "1mo" | "30d" | "month" => Some(Self::Monthly),
            _ => None,
        }
    }

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        }
    }

    /// The first day of the period containing `day`.
    pub fn start(self, day: Day) -> Day {
        match self {
            Self::Daily => day,
            Self::Weekly => {
                let offset = i64::from(date_of(day).weekday().to_monday_zero_offset());
                day - offset
            }
            Self::Monthly => day_of_date(date_of(day).first_of_month()),
        }
    }

    /// The first day of the next period after the one containing `day`.
    pub fn next_start(self, day: Day) -> Day {
        match self {
            Self::Daily => day + 1,
            Self::Weekly => self.start(day) + 7,
            Self::Monthly => {
                let first = date_of(day).first_of_month();
                day_of_date(first.last_of_month()) + 1
            }
        }
    }
}

/// Parses a duration such as `30s`, `15m`, `12h`, `30d` into seconds.
pub fn parse_duration_secs(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().ok()?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => SECONDS_PER_DAY,
        "w" => 7 * SECONDS_PER_DAY,
        // LiteLLM's month, as a key's lifetime: 30 days.
        "mo" => 30 * SECONDS_PER_DAY,
        _ => return None,
    };
    n.checked_mul(unit_secs).filter(|s| *s > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> Day {
        day_of_date(text.parse().unwrap())
    }

    #[test]
    fn periods_are_calendar_aligned() {
        // 2026-11-29 is a Sunday.
        let sunday = day("2026-11-29");
        assert_eq!(date_of(sunday).to_string(), "2026-11-29");
        assert_eq!(BudgetPeriod::Daily.start(sunday), sunday);
        assert_eq!(BudgetPeriod::Weekly.start(sunday), day("2026-11-23"));
        assert_eq!(BudgetPeriod::Weekly.next_start(sunday), day("2026-11-30"));
        assert_eq!(BudgetPeriod::Monthly.start(sunday), day("2026-11-01"));
        assert_eq!(BudgetPeriod::Monthly.next_start(sunday), day("2026-12-01"));
        assert_eq!(BudgetPeriod::Monthly.next_start(day("2028-02-10")), day("2028-03-01"));
        assert_eq!(BudgetPeriod::Weekly.start(day("2026-11-30")), day("2026-11-30"));
        assert_eq!(day_of_ms(0), 0);
        assert_eq!(day_of_ms(-1), -1);
        // The calendar's edges are days like any other, not 1970.
        assert_eq!(day("2026-11-30"), 20_787);
        assert_eq!(day("9999-12-31"), 2_932_896);
        assert_eq!(day("1969-12-31"), -1);
        assert_eq!(day("0001-01-01"), -719_162);
    }

    #[test]
    fn durations_and_periods_parse() {
        assert_eq!(parse_duration_secs("30d"), Some(30 * 86_400));
        assert_eq!(parse_duration_secs("15m"), Some(900));
        assert_eq!(parse_duration_secs("2s"), Some(2));
        assert_eq!(parse_duration_secs("1mo"), Some(30 * 86_400));
        assert_eq!(parse_duration_secs("0s"), None);
        assert_eq!(parse_duration_secs("abc"), None);
        assert_eq!(parse_duration_secs("10"), None);
        assert_eq!(BudgetPeriod::parse("1mo"), Some(BudgetPeriod::Monthly));
        assert_eq!(BudgetPeriod::parse("Weekly"), Some(BudgetPeriod::Weekly));
        // LiteLLM's calendar-aligned spellings.
        assert_eq!(BudgetPeriod::parse("30d"), Some(BudgetPeriod::Monthly));
        assert_eq!(BudgetPeriod::parse("24h"), Some(BudgetPeriod::Daily));
        assert_eq!(BudgetPeriod::parse("2mo"), None);
        assert_eq!(BudgetPeriod::parse("12h"), None);
    }
}
