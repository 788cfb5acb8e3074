//! Dates and times in the forms nomnom reads and stores (`YYYY-MM-DD`,
//! `HH:MM:SS[.fff]`), with their chrono format items parsed once. chrono's
//! `parse_from_str` and `format` parse the format string again on every call, which cost
//! the worker more than the dates themselves (a TPC-H line item has three).

use std::sync::LazyLock;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{NaiveDate, NaiveTime};

static DATE: LazyLock<Vec<Item<'static>>> = LazyLock::new(|| items("%Y-%m-%d"));
static TIME: LazyLock<Vec<Item<'static>>> = LazyLock::new(|| items("%H:%M:%S%.f"));

fn items(format: &'static str) -> Vec<Item<'static>> {
    StrftimeItems::new(format)
        .parse()
        .expect("a valid chrono format")
}

fn parsed(text: &str, items: &[Item<'static>]) -> Option<Parsed> {
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, text, items.iter()).ok()?;
    Some(parsed)
}

/// `NaiveDate::parse_from_str(text, "%Y-%m-%d")`, exactly.
pub(crate) fn date(text: &str) -> Option<NaiveDate> {
    parsed(text, &DATE)?.to_naive_date().ok()
}

/// `NaiveTime::parse_from_str(text, "%H:%M:%S%.f")`, exactly.
pub(crate) fn time(text: &str) -> Option<NaiveTime> {
    parsed(text, &TIME)?.to_naive_time().ok()
}

/// `time.format("%H:%M:%S%.f").to_string()`, exactly.
pub(crate) fn time_text(time: NaiveTime) -> String {
    time.format_with_items(TIME.iter()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike as _;

    #[test]
    fn dates_read_as_chrono_reads_them_with_the_format_string() {
        let mut day = NaiveDate::from_ymd_opt(-12, 1, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(10_003, 1, 1).unwrap();
        while day <= last {
            assert_eq!(date(&day.to_string()), Some(day));
            day = day
                + chrono::Days::new(if day.year() < 10 || day.year() > 9_990 {
                    1
                } else {
                    37
                });
        }
        for text in [
            "1996-02-12",
            " 1996-02-12",
            "1996-02-12 ",
            "1996-2-12",
            "+1996-02-12",
            "19960212",
            "1996-02-30",
            "1996-02-12T00:00:00",
            "",
            "12",
        ] {
            assert_eq!(
                date(text),
                NaiveDate::parse_from_str(text, "%Y-%m-%d").ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn times_read_and_write_as_chrono_does_with_the_format_string() {
        for text in [
            "12:30:00",
            "12:30:00.5",
            "23:59:60.999999",
            "00:00:00.000000001",
            "12:30",
            " 12:30:00",
            "24:00:00",
            "12:30:00Z",
        ] {
            let parsed = time(text);
            assert_eq!(
                parsed,
                NaiveTime::parse_from_str(text, "%H:%M:%S%.f").ok(),
                "{text:?}"
            );
            if let Some(t) = parsed {
                assert_eq!(time_text(t), t.format("%H:%M:%S%.f").to_string());
            }
        }
    }
}
