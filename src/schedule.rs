//! Cron schedules: parsing the 5- or 6-field expressions of the configuration, and computing when a schedule
//! fires next and how long its period is (for jitter and back-off). A thin wrapper over the `croner` parser,
//! so the rest of the program never sees the crate.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron expression, in UTC. Shared, not copied: a parsed expression takes about 5 KB, and every
/// repository's configuration holds its schedule (10,000 repositories, each configuration kept in a few
/// places, would otherwise hold hundreds of megabytes of copies).
#[derive(Clone)]
pub(crate) struct Schedule(std::sync::Arc<Parsed>);

struct Parsed {
    text: String,
    cron: Cron,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    #[error(
        "a schedule has 5 fields (minute hour day month weekday) or 6 (with seconds first), found {0}; e.g. \"*/5 * * * *\""
    )]
    FieldCount(usize),
    #[error("not a valid cron expression: {0}")]
    Parse(String),
    #[error("the schedule never fires")]
    NeverFires,
}

impl Schedule {
    pub(crate) fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let text = text.trim();
        let fields = text.split_whitespace().count();
        if !text.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(ScheduleError::FieldCount(fields));
        }
        // An empty list item (`,` alone, `1,,2`, a trailing comma) makes a field match nothing; croner
        // accepts it and then searches years ahead for a firing that cannot come (found by fuzzing).
        if let Some((n, field)) = text
            .split_whitespace()
            .enumerate()
            .find(|(_, f)| f.split(',').any(str::is_empty))
        {
            return Err(ScheduleError::Parse(format!(
                "field {} (`{field}`) has an empty item between commas",
                n + 1
            )));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(text)
            .map_err(|e| ScheduleError::Parse(e.to_string()))?;
        let schedule = Schedule(std::sync::Arc::new(Parsed {
            text: text.to_string(),
            cron,
        }));
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::NeverFires);
        }
        Ok(schedule)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The first firing strictly after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.0.cron.find_next_occurrence(&t, false).ok()
    }

    /// The shortest gap between consecutive firings over a sample of a day's firings from a fixed reference
    /// time: "every 5 minutes" is 300 s, "0 9 * * 1-5" is a day. Used to cap back-off and size jitter.
    pub(crate) fn period(&self) -> Duration {
        let Some(mut t) = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single() else {
            return Duration::from_secs(60);
        };
        let mut shortest: Option<i64> = None;
        for _ in 0..64 {
            let Some(next) = self.next_after(t) else {
                break;
            };
            if let Some(after) = self.next_after(next) {
                let gap = (after - next).num_seconds();
                shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
            }
            t = next;
        }
        Duration::from_secs(shortest.unwrap_or(86_400).max(1) as u64)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.0.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (cargo-fuzz, `config` target): `*/2 , 0 * * *` has an empty minute list, which croner
    /// accepted and then searched years for a firing (0.6 s in release, over 10 s under the fuzzer). Empty
    /// list items are refused before croner sees them.
    #[test]
    fn empty_list_items_are_refused_before_searching() {
        for text in [
            "*/2  ,  0 * * *",
            "1,,2 * * * *",
            "0 9 * * 1,",
            "0 ,9 * * *",
        ] {
            match Schedule::parse(text) {
                Err(ScheduleError::Parse(m)) => assert!(m.contains("empty item"), "{text}: {m}"),
                other => panic!("{text}: {:?}", other.map(|s| s.as_str().to_string())),
            }
        }
        assert!(Schedule::parse("0 9,17 * * 1,3,5").is_ok());
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            Schedule::parse("*/5 * * * *").unwrap().period(),
            Duration::from_secs(300)
        );
        assert_eq!(
            Schedule::parse("*/2 * * * * *").unwrap().period(),
            Duration::from_secs(2)
        );
        assert_eq!(
            Schedule::parse("0 9 * * *").unwrap().period(),
            Duration::from_secs(86_400)
        );
        assert!(matches!(
            Schedule::parse("* * *"),
            Err(ScheduleError::FieldCount(3))
        ));
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("* * * * * * 2030").is_err());
    }

    #[test]
    fn next_is_in_the_future() {
        let s = Schedule::parse("* * * * * *").unwrap();
        let now = Utc::now();
        let next = s.next_after(now).unwrap();
        assert!(next > now && next - now <= chrono::Duration::seconds(1));
    }
}
