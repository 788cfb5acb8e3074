//! Partial dates and date-times, as health records and other standards send them in one
//! field: `2013`, `2013-05`, `2013-05-17`, `2013-05-17T10:30`, `2013-05-17T10:30:15.5+02:00`.
//! Each is the interval of instants it covers, `[start, end)`: a year, a month, a day, a
//! minute, a second or a fraction of one. Without an offset, the time is UTC.

use chrono::{DateTime, Duration, FixedOffset, Months, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// The instants a partial date-time covers: `start` included, `end` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

fn number(text: &str, digits: usize) -> Option<u32> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// `Z`, `+hh:mm` or `-hh:mm` at the end of `time`: the time before it and the offset.
fn split_offset(time: &str) -> Option<(&str, FixedOffset)> {
    if let Some(local) = time.strip_suffix('Z') {
        return Some((local, FixedOffset::east_opt(0)?));
    }
    let at = time.rfind(['+', '-'])?;
    let (local, offset) = time.split_at(at);
    let (hours, minutes) = offset[1..].split_once(':')?;
    let seconds = (number(hours, 2)? * 3600 + number(minutes, 2)? * 60) as i32;
    if seconds >= 24 * 3600 {
        return None;
    }
    let seconds = if offset.starts_with('-') {
        -seconds
    } else {
        seconds
    };
    Some((local, FixedOffset::east_opt(seconds)?))
}

/// Reads `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or `YYYY-MM-DD(T| )hh:mm[:ss[.f…]][Z|±hh:mm]`.
pub(crate) fn interval(text: &str) -> Option<Interval> {
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year = number(parts.next()?, 4)? as i32;
    let month = parts.next().map(|m| number(m, 2)).unwrap_or(Some(0))?;
    let day = parts.next().map(|d| number(d, 2)).unwrap_or(Some(0))?;
    if parts.next().is_some() || (month == 0 && day != 0) {
        return None;
    }
    let first = NaiveDate::from_ymd_opt(year, month.max(1), day.max(1))?;
    let utc = |start: NaiveDate, end: Option<NaiveDate>| {
        Some(Interval {
            start: start.and_time(NaiveTime::MIN).and_utc(),
            end: end?.and_time(NaiveTime::MIN).and_utc(),
        })
    };
    let Some(time) = time else {
        return match (month, day) {
            (0, _) => utc(first, NaiveDate::from_ymd_opt(year + 1, 1, 1)),
            (_, 0) => utc(first, first.checked_add_months(Months::new(1))),
            _ => utc(first, first.succ_opt()),
        };
    };
    if day == 0 {
        return None; // a time needs a whole date
    }
    let (local, offset) = match split_offset(time) {
        Some((local, offset)) => (local, offset),
        None => (time, FixedOffset::east_opt(0)?),
    };
    let mut fields = local.split(':');
    let hour = number(fields.next()?, 2)?;
    let minute = number(fields.next()?, 2)?;
    let (second, nanos, width) = match fields.next() {
        None => (0, 0, Duration::minutes(1)),
        Some(seconds) => {
            let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
            let second = number(whole, 2)?;
            if fraction.len() > 9 || seconds.contains('.') && fraction.is_empty() {
                return None;
            }
            let nanos = if fraction.is_empty() {
                0
            } else {
                number(fraction, fraction.len())? * 10u32.pow(9 - fraction.len() as u32)
            };
            (
                second,
                nanos,
                Duration::nanoseconds(10i64.pow(9 - fraction.len() as u32)),
            )
        }
    };
    if fields.next().is_some() {
        return None;
    }
    let local = NaiveDateTime::new(
        first,
        NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?,
    );
    let start = local
        .and_local_timezone(offset)
        .single()?
        .with_timezone(&Utc);
    Some(Interval {
        start,
        end: start.checked_add_signed(width)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(text: &str) -> Option<(String, String)> {
        let i = interval(text)?;
        let show = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        Some((show(i.start), show(i.end)))
    }

    fn pair(start: &str, end: &str) -> Option<(String, String)> {
        Some((start.to_owned(), end.to_owned()))
    }

    #[test]
    fn each_precision_covers_its_whole_interval() {
        assert_eq!(
            bounds("2013"),
            pair("2013-01-01T00:00:00Z", "2014-01-01T00:00:00Z")
        );
        assert_eq!(
            bounds("2013-12"),
            pair("2013-12-01T00:00:00Z", "2014-01-01T00:00:00Z")
        );
        assert_eq!(
            bounds("2016-02"),
            pair("2016-02-01T00:00:00Z", "2016-03-01T00:00:00Z")
        );
        assert_eq!(
            bounds("2016-02-29"),
            pair("2016-02-29T00:00:00Z", "2016-03-01T00:00:00Z")
        );
        assert_eq!(
            bounds("2013-05-17T10:30"),
            pair("2013-05-17T10:30:00Z", "2013-05-17T10:31:00Z")
        );
        assert_eq!(
            bounds("2015-02-07T13:28:17-05:00"),
            pair("2015-02-07T18:28:17Z", "2015-02-07T18:28:18Z")
        );
        assert_eq!(
            bounds("2013-04-02T09:30:10.5+01:00"),
            pair("2013-04-02T08:30:10.500Z", "2013-04-02T08:30:10.600Z")
        );
        assert_eq!(
            bounds("2017-01-01 23:59:59.999Z"),
            pair("2017-01-01T23:59:59.999Z", "2017-01-02T00:00:00Z")
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "13",
            "2013-5",
            "2013-13",
            "2013-02-30",
            "2013-05-17T",
            "2013-05-17T10",
            "2013-05-17T24:00",
            "2013-05-17T10:30:61",
            "2013-05-17T10:30:00.",
            "2013-05T10:30",
            "2013-05-17T10:30+25:00",
            "2013-05-17T10:30:00.1234567890Z",
            "2013-05-17-01",
            "+2013",
            "2013-05-17T10:30:00+0200",
            "2013/05/17",
        ] {
            assert_eq!(interval(bad), None, "{bad:?}");
        }
    }
}
