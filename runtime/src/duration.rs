//! Human-readable durations for flags and environment variables: `500ms`, `30s`, `2m`, `1h`, `7d`.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid duration {input:?}: use a number followed by ms, s, m, h or d (for example 30s or 2m)"
)]
pub struct ParseDurationError {
    input: String,
}

/// Parses `500ms`, `30s`, `2m`, `1h`, `7d`, or `0`.
pub fn parse(input: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError {
        input: input.to_owned(),
    };
    let text = input.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| err())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(err)
}

/// Formats a duration in the largest unit that represents it exactly, the inverse of [`parse`].
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0".to_owned();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis % size == 0 {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_garbage_with_a_helpful_message() {
        for bad in ["", "s", "10", "10x", "-1s", "1.5s", "99999999999999999999d"] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("use a number followed by"),
                "{bad}"
            );
        }
    }

    #[test]
    fn format_round_trips() {
        for text in ["500ms", "30s", "2m", "1h", "7d", "0", "90s", "1500ms"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
