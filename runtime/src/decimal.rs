//! Exact decimals from their text: `12.50`, `-0.001`, `1E-22`, `1.5e3`. Nothing goes
//! through a float, so no digit is lost or invented; the results are the text PostgreSQL
//! stores and prints for the same `NUMERIC`, so a value reads back as it was written.

use std::cmp::Ordering;

/// PostgreSQL's limits for `NUMERIC` without precision and scale.
const MAX_WHOLE_DIGITS: usize = 131_072;
const MAX_SCALE: usize = 16_383;

/// A decimal number as written: `digits` × 10^(`point` − `digits.len()`), that is, the
/// decimal point sits after the first `point` digits (before them if negative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    /// All digits of the mantissa, leading zeros removed (trailing zeros kept: they are
    /// the value's own scale).
    digits: Vec<u8>,
    point: i64,
    /// Digits after the point as written: `1.00` has 2, `1.5e3` has none.
    own_scale: usize,
}

/// Why a text is not an acceptable decimal; each says what was wrong in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotANumber,
    Exponent,
    Scale(usize),
    Whole(usize),
}

impl Decimal {
    /// Reads `[-+]digits[.digits][(e|E)[-+]digits]`; digits on at least one side of
    /// the point.
    pub(crate) fn parse(text: &str) -> Result<Self, Refusal> {
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
            None => (unsigned, None),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && fraction.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err(Refusal::NotANumber);
        }
        let exponent: i64 = match exponent {
            None => 0,
            Some(e) => {
                let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
                if digits.is_empty() || !all_digits(digits) {
                    return Err(Refusal::NotANumber);
                }
                // Far beyond any NUMERIC, and small enough to compute with.
                e.parse()
                    .ok()
                    .filter(|e: &i64| e.abs() <= 1_000_000)
                    .ok_or(Refusal::Exponent)?
            }
        };
        let mut digits: Vec<u8> = whole
            .bytes()
            .chain(fraction.bytes())
            .map(|b| b - b'0')
            .collect();
        let mut point = whole.len() as i64 + exponent;
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        point -= leading as i64;
        let own_scale = (fraction.len() as i64 - exponent).max(0) as usize;
        Ok(Self {
            negative: negative && digits.iter().any(|&d| d != 0),
            digits,
            point,
            own_scale,
        })
    }

    /// Digits before the point, leading zeros aside.
    fn whole_digits(&self) -> usize {
        let significant = self
            .digits
            .iter()
            .rposition(|&d| d != 0)
            .map_or(0, |i| i + 1);
        if significant == 0 {
            0
        } else {
            self.point.max(0) as usize
        }
    }

    /// Digits after the point that are not trailing zeros.
    fn significant_scale(&self) -> usize {
        match self.digits.iter().rposition(|&d| d != 0) {
            Some(last) => (last as i64 + 1 - self.point).max(0) as usize,
            None => 0,
        }
    }

    /// The digit `i` places after the point (negative: before it), 0 outside the digits.
    fn digit(&self, after_point: i64) -> u8 {
        let index = self.point + after_point;
        usize::try_from(index)
            .ok()
            .and_then(|i| self.digits.get(i).copied())
            .unwrap_or(0)
    }

    /// The text with exactly `scale` digits after the point, `-` only for non-zero values.
    fn text(&self, scale: usize) -> String {
        let whole = self.whole_digits();
        let mut out = String::with_capacity(whole + scale + 3);
        if self.negative {
            out.push('-');
        }
        if whole == 0 {
            out.push('0');
        }
        for i in -(whole as i64)..0 {
            out.push(char::from(b'0' + self.digit(i)));
        }
        if scale > 0 {
            out.push('.');
            for i in 0..scale as i64 {
                out.push(char::from(b'0' + self.digit(i)));
            }
        }
        out
    }

    /// As `NUMERIC(precision, scale)` stores it: exactly `scale` digits after the point.
    /// Refuses what that type would round or overflow.
    pub(crate) fn constrained(&self, precision: u32, scale: u32) -> Result<String, Refusal> {
        let scale = scale as usize;
        if self.significant_scale() > scale {
            return Err(Refusal::Scale(scale));
        }
        let whole_limit = (precision as usize).saturating_sub(scale);
        if self.whole_digits() > whole_limit {
            return Err(Refusal::Whole(whole_limit));
        }
        Ok(self.text(scale))
    }

    /// As `NUMERIC` without precision and scale stores it: the value's own scale, so
    /// `1.00` stays `1.00` and `1.5e3` is `1500`.
    pub(crate) fn unconstrained(&self) -> Result<String, Refusal> {
        if self.own_scale > MAX_SCALE {
            return Err(Refusal::Scale(MAX_SCALE));
        }
        if self.whole_digits() > MAX_WHOLE_DIGITS {
            return Err(Refusal::Whole(MAX_WHOLE_DIGITS));
        }
        Ok(self.text(self.own_scale))
    }

    /// Numeric order, exactly.
    pub(crate) fn compare(&self, other: &Self) -> Ordering {
        let zero = |d: &Self| d.whole_digits() == 0 && d.significant_scale() == 0;
        let sign = |d: &Self| match (zero(d), d.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        };
        let by_sign = sign(self).cmp(&sign(other));
        if by_sign != Ordering::Equal || sign(self) == 0 {
            return by_sign;
        }
        let magnitude = self
            .whole_digits()
            .cmp(&other.whole_digits())
            .then_with(|| {
                let from = -(self.whole_digits() as i64);
                let to = self.significant_scale().max(other.significant_scale()) as i64;
                (from..to)
                    .map(|i| self.digit(i).cmp(&other.digit(i)))
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            });
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constrained(text: &str, precision: u32, scale: u32) -> Result<String, Refusal> {
        Decimal::parse(text)?.constrained(precision, scale)
    }

    fn unconstrained(text: &str) -> Result<String, Refusal> {
        Decimal::parse(text)?.unconstrained()
    }

    #[test]
    fn constrained_text_has_exactly_the_scale() {
        assert_eq!(constrained("172799.49", 15, 2).unwrap(), "172799.49");
        assert_eq!(constrained("0012.5", 15, 2).unwrap(), "12.50");
        assert_eq!(constrained("-0.00", 15, 2).unwrap(), "0.00");
        assert_eq!(constrained(".5", 3, 2).unwrap(), "0.50");
        assert_eq!(constrained("5.", 3, 0).unwrap(), "5");
        assert_eq!(
            constrained("1E-22", 30, 22).unwrap(),
            "0.0000000000000000000001"
        );
        assert_eq!(constrained("1.5e3", 6, 1).unwrap(), "1500.0");
        assert_eq!(constrained("-12.50E+1", 5, 2).unwrap(), "-125.00");
        assert_eq!(constrained("100E-2", 3, 0).unwrap(), "1");
        assert_eq!(constrained("1.005", 15, 2), Err(Refusal::Scale(2)));
        assert_eq!(constrained("1E-22", 15, 2), Err(Refusal::Scale(2)));
        assert_eq!(
            constrained("12345678901234.5", 15, 2),
            Err(Refusal::Whole(13))
        );
        assert_eq!(constrained("1E13", 15, 2), Err(Refusal::Whole(13)));
        assert_eq!(constrained("1E999999999999", 15, 2), Err(Refusal::Exponent));
        for bad in [
            "", ".", "-", "abc", "1e", "1e+", "e5", "1.2.3", "--1", "1 2", "0x10", "1_000",
        ] {
            assert_eq!(constrained(bad, 15, 2), Err(Refusal::NotANumber), "{bad}");
        }
    }

    #[test]
    fn unconstrained_text_keeps_its_own_scale() {
        assert_eq!(unconstrained("1.00").unwrap(), "1.00");
        assert_eq!(
            unconstrained("66.899999999999991").unwrap(),
            "66.899999999999991"
        );
        assert_eq!(
            unconstrained("0.1234567890123456789").unwrap(),
            "0.1234567890123456789"
        );
        assert_eq!(unconstrained("1E-22").unwrap(), "0.0000000000000000000001");
        assert_eq!(unconstrained("1.5e3").unwrap(), "1500");
        assert_eq!(unconstrained("-0.0").unwrap(), "0.0");
        assert_eq!(unconstrained("007").unwrap(), "7");
        assert_eq!(
            unconstrained("1.000000000000000000E-245").unwrap(),
            format!("0.{}1{}", "0".repeat(244), "0".repeat(18))
        );
        assert_eq!(
            unconstrained("-1.000000000000000000E+245").unwrap(),
            format!("-1{}", "0".repeat(245))
        );
        assert_eq!(unconstrained("1E-16384"), Err(Refusal::Scale(MAX_SCALE)));
        assert_eq!(
            unconstrained("1E131072"),
            Err(Refusal::Whole(MAX_WHOLE_DIGITS))
        );
    }

    #[test]
    fn comparison_is_numeric_and_exact() {
        let d = |t: &str| Decimal::parse(t).unwrap();
        assert_eq!(
            d("0.10000000000000000001").compare(&d("0.1")),
            Ordering::Greater
        );
        assert_eq!(d("1.50").compare(&d("15e-1")), Ordering::Equal);
        assert_eq!(d("-2").compare(&d("-10")), Ordering::Greater);
        assert_eq!(d("-0").compare(&d("0.000")), Ordering::Equal);
        assert_eq!(d("-0.001").compare(&d("0")), Ordering::Less);
        assert_eq!(d("999").compare(&d("1000")), Ordering::Less);
        assert_eq!(d("1E3").compare(&d("999.9999")), Ordering::Greater);
    }
}
