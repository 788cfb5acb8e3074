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
    // The form dates nearly always come in (and the only one `date_text` writes), read
    // without chrono's general parser: a TPC-H line item has three dates, each read
    // from the body and again when its row is copied.
    if let Some((year, month, day)) = plain_date(text.as_bytes()) {
        return NaiveDate::from_ymd_opt(year, month, day);
    }
    parsed(text, &DATE)?.to_naive_date().ok()
}

/// Year, month and day of exactly `DDDD-DD-DD` (all ASCII digits).
fn plain_date(text: &[u8]) -> Option<(i32, u32, u32)> {
    let &[y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = text else {
        return None;
    };
    let digits = [y1, y2, y3, y4, m1, m2, d1, d2];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number =
        |digits: &[u8]| (digits.iter()).fold(0_u32, |n, digit| n * 10 + u32::from(digit - b'0'));
    Some((
        number(&digits[..4]) as i32,
        number(&digits[4..6]),
        number(&digits[6..]),
    ))
}

/// `date.to_string()`, exactly: `YYYY-MM-DD`, written without chrono's formatter for
/// years 0 to 9999.
pub(crate) fn date_text(date: NaiveDate) -> String {
    use chrono::Datelike as _;
    let year = date.year();
    if !(0..=9_999).contains(&year) {
        return date.to_string();
    }
    let digit = |n: u32| b'0' + (n % 10) as u8;
    let (year, month, day) = (year as u32, date.month(), date.day());
    let text = [
        digit(year / 1_000),
        digit(year / 100),
        digit(year / 10),
        digit(year),
        b'-',
        digit(month / 10),
        digit(month),
        b'-',
        digit(day / 10),
        digit(day),
    ];
    String::from(std::str::from_utf8(&text).expect("ASCII digits and dashes"))
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
    fn dates_read_and_write_as_chrono_does_with_the_format_string() {
        let mut day = NaiveDate::from_ymd_opt(-12, 1, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(10_003, 1, 1).unwrap();
        while day <= last {
            assert_eq!(date(&day.to_string()), Some(day));
            assert_eq!(date_text(day), day.to_string());
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
            "0000-02-29",
            "1900-02-29",
            "2000-02-29",
            "2024-13-01",
            "2024-00-10",
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
