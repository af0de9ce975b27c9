//! [`Decimal`]: a JSON number exactly as written.

use std::cmp::Ordering;
use std::fmt;

use smallvec::SmallVec;

/// Exponents are clamped to this magnitude: past it every number compares as
/// "enormous" or "tiny", which no threshold a policy can write distinguishes.
const EXPONENT_LIMIT: i64 = 1 << 60;

/// A JSON number exactly as written: `100.00000000000001` is above `100`, and
/// `1000.0000000000000001` above `1000`, as a server that parses decimals exactly sees
/// them. Never rounded, any size; comparing costs O(digits), whatever the exponent.
///
/// ```
/// # use tower_mcp_policy::unstable::Decimal;
/// let d = |s: &str| s.parse::<Decimal>().unwrap();
/// assert!(d("100.00000000000001") > d("100"));
/// assert!(d("1000.0000000000000001") > d("1000"));
/// assert_eq!(d("1e2"), d("100.0"));
/// assert_eq!(d("-0"), d("0"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Decimal {
    negative: bool,
    /// Significant digits (ASCII), with no leading or trailing zero; empty for zero.
    digits: SmallVec<[u8; 16]>,
    /// The value is `0.digits × 10^exponent`.
    exponent: i64,
}

/// Why a text is not a JSON number.
///
/// ```
/// use tower_mcp_policy::unstable::{Decimal, NotANumber};
///
/// assert_eq!("1e".parse::<Decimal>(), Err(NotANumber));
/// assert_eq!("NaN".parse::<Decimal>(), Err(NotANumber)); // not JSON
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotANumber;

impl fmt::Display for NotANumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a JSON number")
    }
}

impl std::error::Error for NotANumber {}

impl Decimal {
    /// Zero.
    pub const ZERO: Decimal = Decimal {
        negative: false,
        digits: SmallVec::new_const(),
        exponent: 0,
    };

    /// True below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// True for zero (`0`, `-0`, `0.0e5`).
    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// The smallest whole number at or above this one, saturated to `u64`; `None` below
    /// zero. (Rate-limit costs: `2.1` costs 3.)
    pub(crate) fn ceil_u64(&self) -> Option<u64> {
        if self.negative {
            return None;
        }
        if self.is_zero() {
            return Some(0);
        }
        if self.exponent <= 0 {
            return Some(1); // strictly between 0 and 1
        }
        if self.exponent > 20 {
            return Some(u64::MAX);
        }
        let whole_digits = self.exponent as usize; // 1..=20
        let mut whole: u64 = 0;
        for i in 0..whole_digits {
            let digit = self.digits.get(i).map_or(0, |d| d - b'0');
            whole = whole.saturating_mul(10).saturating_add(u64::from(digit));
        }
        let fraction = self.digits.len() > whole_digits; // no trailing zeros: it is > 0
        Some(whole.saturating_add(u64::from(fraction)))
    }

    /// The nearest `f64` (correctly rounded), for display and conversions.
    pub fn to_f64(&self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    /// The value as an integer, when it is one that fits.
    fn to_i128(&self) -> Option<i128> {
        if self.is_zero() {
            return Some(0);
        }
        if self.exponent < self.digits.len() as i64 || self.exponent > 38 {
            return None;
        }
        let mut value: i128 = 0;
        for i in 0..self.exponent as usize {
            let digit = self.digits.get(i).map_or(0, |d| d - b'0');
            value = value.checked_mul(10)?.checked_add(i128::from(digit))?;
        }
        Some(if self.negative { -value } else { value })
    }

    /// As a `serde_json::Number`: exactly when it is an integer of 64 bits, otherwise
    /// the nearest `f64` (`None` when that is not finite).
    pub fn to_json_number(&self) -> Option<serde_json::Number> {
        match self.to_i128() {
            Some(n) if n >= 0 => u64::try_from(n).ok().map(Into::into),
            Some(n) => i64::try_from(n).ok().map(Into::into),
            None => None,
        }
        .or_else(|| serde_json::Number::from_f64(self.to_f64()))
    }
}

impl std::str::FromStr for Decimal {
    type Err = NotANumber;

    /// Parses JSON number syntax: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    /// (leading zeros are accepted too).
    fn from_str(text: &str) -> Result<Decimal, NotANumber> {
        let mut rest = text.as_bytes();
        let negative = rest.first() == Some(&b'-');
        if negative {
            rest = &rest[1..];
        }
        let digits_end = |b: &[u8]| {
            b.iter()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(b.len())
        };
        let whole_end = digits_end(rest);
        if whole_end == 0 {
            return Err(NotANumber);
        }
        let (whole, after) = rest.split_at(whole_end);
        rest = after;
        let mut fraction: &[u8] = &[];
        if rest.first() == Some(&b'.') {
            let end = digits_end(&rest[1..]);
            if end == 0 {
                return Err(NotANumber);
            }
            fraction = &rest[1..=end];
            rest = &rest[1 + end..];
        }
        let mut exponent: i64 = 0;
        if let Some(&e) = rest.first() {
            if e != b'e' && e != b'E' {
                return Err(NotANumber);
            }
            rest = &rest[1..];
            let negative_exponent = rest.first() == Some(&b'-');
            if matches!(rest.first(), Some(b'-' | b'+')) {
                rest = &rest[1..];
            }
            if rest.is_empty() || digits_end(rest) != rest.len() {
                return Err(NotANumber);
            }
            for &d in rest {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i64::from(d - b'0'))
                    .min(EXPONENT_LIMIT);
            }
            if negative_exponent {
                exponent = -exponent;
            }
        }
        // 0.digits × 10^point before the exponent: leading zeros move the point left.
        let mut point = whole.len() as i64;
        let mut digits = SmallVec::new();
        for &d in whole.iter().chain(fraction) {
            if digits.is_empty() && d == b'0' {
                point -= 1;
            } else {
                digits.push(d);
            }
        }
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        if digits.is_empty() {
            return Ok(Decimal::ZERO);
        }
        Ok(Decimal {
            negative,
            digits,
            exponent: (point + exponent).clamp(-EXPONENT_LIMIT, EXPONENT_LIMIT),
        })
    }
}

impl From<u64> for Decimal {
    fn from(n: u64) -> Decimal {
        n.to_string().parse().unwrap_or(Decimal::ZERO)
    }
}

impl From<i64> for Decimal {
    fn from(n: i64) -> Decimal {
        n.to_string().parse().unwrap_or(Decimal::ZERO)
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        let sign = |d: &Decimal| match (d.is_zero(), d.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        };
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal if sign(self) == 0 => Ordering::Equal,
            Ordering::Equal => {
                // Same sign: the exponent, then the digits (a prefix is the smaller).
                let magnitude = self
                    .exponent
                    .cmp(&other.exponent)
                    .then_with(|| self.digits.cmp(&other.digits));
                if self.negative {
                    magnitude.reverse()
                } else {
                    magnitude
                }
            }
            unequal => unequal,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Plain notation for moderate exponents (`1234.5`, `0.001`), scientific otherwise
/// (`1.5e+30`); always valid JSON.
impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        if self.negative {
            f.write_str("-")?;
        }
        let digits = std::str::from_utf8(&self.digits).map_err(|_| fmt::Error)?;
        let n = digits.len() as i64;
        let e = self.exponent;
        if (1..=21).contains(&e) {
            if n <= e {
                f.write_str(digits)?;
                (0..e - n).try_for_each(|_| f.write_str("0"))
            } else {
                let (whole, fraction) = digits.split_at(e as usize);
                write!(f, "{whole}.{fraction}")
            }
        } else if (-5..=0).contains(&e) {
            f.write_str("0.")?;
            (0..-e).try_for_each(|_| f.write_str("0"))?;
            f.write_str(digits)
        } else {
            let (first, rest) = digits.split_at(1);
            let dot = if rest.is_empty() { "" } else { "." };
            write!(f, "{first}{dot}{rest}e{:+}", e - 1)
        }
    }
}

impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decimal({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn equal_values_in_any_notation_are_equal() {
        for same in [
            [
                "100", "100.0", "1e2", "1E+2", "0.1e3", "100.000", "0100", "10000e-2",
            ],
            ["0", "-0", "0.0", "0e99", "-0.0e-5", "000", "0.000", "0e0"],
            [
                "-1.5", "-15e-1", "-0.15E1", "-1.50", "-1.5", "-1.5", "-1.5", "-1.5",
            ],
        ] {
            for s in same {
                assert_eq!(d(s), d(same[0]), "{s} = {}", same[0]);
                assert_eq!(d(s).cmp(&d(same[0])), Ordering::Equal);
            }
        }
    }

    #[test]
    fn order_is_exact() {
        let ascending = [
            "-1e400",
            "-1000.0000000000000001",
            "-1000",
            "-1",
            "-0.1",
            "-1e-400",
            "0",
            "1e-400",
            "0.1",
            "0.10000000000000000001",
            "0.2",
            "1",
            "99.99999999999999",
            "100",
            "100.00000000000001",
            "1000",
            "1000.0000000000000001",
            "123456789012345678901234567890",
            "1e308",
            "1e400",
            "1e99999999999999999999999",
        ];
        for (i, a) in ascending.iter().enumerate() {
            for (j, b) in ascending.iter().enumerate() {
                assert_eq!(d(a).cmp(&d(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn only_json_numbers_parse() {
        for bad in [
            "", "-", "+1", "1.", ".5", "1e", "1e+", "0x10", "1.5.2", "1e5e5", "NaN", " 1",
        ] {
            assert_eq!(bad.parse::<Decimal>(), Err(NotANumber), "{bad:?}");
        }
    }

    #[test]
    fn costs_round_up() {
        let c = |s: &str| d(s).ceil_u64();
        assert_eq!(c("0"), Some(0));
        assert_eq!(c("-0.0"), Some(0));
        assert_eq!(c("0.0000001"), Some(1));
        assert_eq!(c("1"), Some(1));
        assert_eq!(c("2.0000000000000000001"), Some(3));
        assert_eq!(c("2.5e1"), Some(25));
        assert_eq!(c("120e-1"), Some(12));
        assert_eq!(c("4294967295"), Some(4294967295));
        assert_eq!(c("4294967296"), Some(4294967296));
        assert_eq!(c("18446744073709551614.5"), Some(u64::MAX));
        assert_eq!(c("18446744073709551616"), Some(u64::MAX));
        assert_eq!(c("1e400"), Some(u64::MAX));
        assert_eq!(c("-0.5"), None);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "0",
            "1",
            "-1",
            "100",
            "1234.5",
            "0.001",
            "0.000001",
            "1e-7",
            "1.5e+30",
            "100.00000000000001",
            "123456789012345678901",
            "1e+22",
            "-2.5e-10",
        ] {
            assert_eq!(d(&d(s).to_string()), d(s), "{s} -> {}", d(s));
        }
        assert_eq!(d("1e2").to_string(), "100");
        assert_eq!(d("-0.00012").to_string(), "-0.00012");
        assert_eq!(d("1.5e30").to_string(), "1.5e+30");
        assert_eq!(d("1e-7").to_string(), "1e-7");
    }

    #[test]
    fn json_numbers_are_exact_integers_or_nearest_floats() {
        assert_eq!(
            d("18446744073709551615").to_json_number().unwrap().as_u64(),
            Some(u64::MAX)
        );
        assert_eq!(
            d("-9223372036854775808").to_json_number().unwrap().as_i64(),
            Some(i64::MIN)
        );
        assert_eq!(d("1e2").to_json_number().unwrap().as_u64(), Some(100));
        assert_eq!(d("0.1").to_json_number().unwrap().as_f64(), Some(0.1));
        assert!(d("1e400").to_json_number().is_none());
        assert_eq!(Decimal::from(u64::MAX), d("18446744073709551615"));
        assert_eq!(Decimal::from(-5i64), d("-5"));
    }
}
