//! Kubernetes resource quantities (`500m`, `0.5`, `64Mi`, `1e3`, `+1.5Gi`).
//!
//! The grammar is the one of `k8s.io/apimachinery/pkg/api/resource`:
//!
//! ```text
//! quantity        ::= signedNumber suffix
//! signedNumber    ::= number | sign number
//! number          ::= digits | digits "." digits | digits "." | "." digits
//! suffix          ::= binarySI | decimalExponent | decimalSI
//! binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI       ::= n | u | m | "" | k | M | G | T | P | E
//! decimalExponent ::= ("e" | "E") signedInteger
//! ```
//!
//! A parsed [`Quantity`] is exact (`digits × 10^scale × 2^pow2`); conversions to
//! integers round up, as Kubernetes' `Value()` and `MilliValue()` do, and fail
//! on overflow instead of wrapping. The largest value accepted is `i64::MAX`,
//! the bound of a Kubernetes quantity.

use std::fmt;

/// Why a string is not a quantity, or a quantity not a usable number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("{0:?} is not a quantity: expected a number with an optional suffix (e.g. 500m, 0.5, 2, 64Mi, 1G, 1e3)")]
    Syntax(String),
    #[error("{0:?} has an unknown suffix {1:?}: valid suffixes are n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent e<N>")]
    Suffix(String, String),
    #[error("{0:?} has too many digits (at most 38)")]
    TooManyDigits(String),
    #[error("{0:?} is too large (the largest quantity is 2^63-1)")]
    Overflow(String),
    #[error("{0:?} is negative: must be greater than or equal to 0")]
    Negative(String),
}

/// The suffix a quantity was written with; kept to warn about likely mistakes
/// (`128m` of memory is 0.128 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suffix {
    None,
    /// `n`, `u`, `m`, `k`, `M`, ... : a power of ten.
    Decimal(i32),
    /// `Ki`, `Mi`, ... : a power of two.
    Binary(u32),
    /// `e<N>` / `E<N>`.
    Exponent(i32),
}

/// An exact, parsed quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    /// All digits of the number, the decimal point removed.
    digits: u128,
    /// Power of ten applied to `digits` (the fraction's length subtracted).
    scale: i32,
    /// Power of two applied (binary suffixes).
    pow2: u32,
    suffix: Suffix,
    text: String,
}

const MAX_DIGITS: usize = 38;
const MAX: u128 = i64::MAX as u128;

impl Quantity {
    /// Parses a quantity string.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(QuantityError::Empty);
        }
        let syntax = || QuantityError::Syntax(text.to_string());
        let (negative, rest) = match t.as_bytes()[0] {
            b'-' => (true, &t[1..]),
            b'+' => (false, &t[1..]),
            _ => (false, t),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix_text) = rest.split_at(num_end);
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(syntax());
        }
        let all_digits = format!("{int_part}{frac_part}");
        let significant = all_digits.trim_start_matches('0');
        if significant.len() > MAX_DIGITS {
            return Err(QuantityError::TooManyDigits(text.to_string()));
        }
        let digits: u128 = if significant.is_empty() {
            0
        } else {
            significant.parse().map_err(|_| syntax())?
        };
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| syntax())?;
        let suffix = parse_suffix(suffix_text).ok_or_else(|| {
            if suffix_text.starts_with(['e', 'E']) || suffix_text.starts_with(['+', '-']) {
                syntax()
            } else {
                QuantityError::Suffix(text.to_string(), suffix_text.to_string())
            }
        })?;
        let (scale, pow2) = match suffix {
            Suffix::None => (-frac_len, 0),
            Suffix::Decimal(e) | Suffix::Exponent(e) => (e - frac_len, 0),
            Suffix::Binary(p) => (-frac_len, p),
        };
        let q = Quantity {
            negative: negative && digits != 0,
            digits,
            scale,
            pow2,
            suffix,
            text: text.to_string(),
        };
        // Reject what no conversion could represent, so a quantity that parses
        // is within Kubernetes' range.
        q.ceil_scaled(0)?;
        Ok(q)
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    pub fn is_zero(&self) -> bool {
        self.digits == 0
    }

    pub fn suffix(&self) -> Suffix {
        self.suffix
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value rounded up to an integer (bytes, counts), as Kubernetes'
    /// `Value()`. Negative quantities are an error here: every resource this
    /// crate resolves is non-negative.
    pub fn value_ceil(&self) -> Result<u64, QuantityError> {
        self.non_negative()?;
        self.ceil_scaled(0)
    }

    /// The value × 1000 rounded up (millicores), as Kubernetes' `MilliValue()`.
    pub fn milli_ceil(&self) -> Result<u64, QuantityError> {
        self.non_negative()?;
        self.ceil_scaled(3)
    }

    /// True when the value has a non-zero part finer than one thousandth
    /// (`0.0005`, `100u`): Kubernetes rounds such a cpu quantity up to 1m.
    pub fn finer_than_milli(&self) -> bool {
        let exp = self.scale + 3;
        if self.digits == 0 || exp >= 0 {
            return false;
        }
        let Some(n) = 1u128
            .checked_shl(self.pow2)
            .and_then(|t| self.digits.checked_mul(t))
        else {
            return false;
        };
        match 10u128.checked_pow(exp.unsigned_abs()) {
            Some(d) => n % d != 0,
            // The divisor exceeds any numerator: a non-zero value below 1/1000.
            None => true,
        }
    }

    fn non_negative(&self) -> Result<(), QuantityError> {
        if self.negative {
            Err(QuantityError::Negative(self.text.clone()))
        } else {
            Ok(())
        }
    }

    /// ceil(|value| × 10^extra) as u64, bounded by `i64::MAX`.
    fn ceil_scaled(&self, extra: i32) -> Result<u64, QuantityError> {
        let overflow = || QuantityError::Overflow(self.text.clone());
        if self.digits == 0 {
            return Ok(0);
        }
        let two = 1u128.checked_shl(self.pow2).ok_or_else(overflow)?;
        let n = self.digits.checked_mul(two).ok_or_else(overflow)?;
        let exp = self.scale + extra;
        let v = if exp >= 0 {
            let p = 10u128.checked_pow(exp as u32).ok_or_else(overflow)?;
            n.checked_mul(p).ok_or_else(overflow)?
        } else {
            match 10u128.checked_pow(exp.unsigned_abs()) {
                Some(d) => n.div_ceil(d),
                // The divisor exceeds any numerator: a positive value below 1.
                None => 1,
            }
        };
        if v > MAX {
            return Err(overflow());
        }
        Ok(v as u64)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_suffix(s: &str) -> Option<Suffix> {
    Some(match s {
        "" => Suffix::None,
        "n" => Suffix::Decimal(-9),
        "u" => Suffix::Decimal(-6),
        "m" => Suffix::Decimal(-3),
        "k" => Suffix::Decimal(3),
        "M" => Suffix::Decimal(6),
        "G" => Suffix::Decimal(9),
        "T" => Suffix::Decimal(12),
        "P" => Suffix::Decimal(15),
        "E" => Suffix::Decimal(18),
        "Ki" => Suffix::Binary(10),
        "Mi" => Suffix::Binary(20),
        "Gi" => Suffix::Binary(30),
        "Ti" => Suffix::Binary(40),
        "Pi" => Suffix::Binary(50),
        "Ei" => Suffix::Binary(60),
        _ => {
            let exp = s.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            Suffix::Exponent(exp.parse().ok()?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> u64 {
        Quantity::parse(s).unwrap().milli_ceil().unwrap()
    }
    fn value(s: &str) -> u64 {
        Quantity::parse(s).unwrap().value_ceil().unwrap()
    }

    #[test]
    fn cpu_forms_resolve_to_millicores() {
        assert_eq!(milli("500m"), 500);
        assert_eq!(milli("0.5"), 500);
        assert_eq!(milli("2"), 2000);
        assert_eq!(milli("+1.5"), 1500);
        assert_eq!(milli(".25"), 250);
        assert_eq!(milli("1."), 1000);
        assert_eq!(milli("1e3"), 1_000_000);
        assert_eq!(milli("1E-3"), 1);
        assert_eq!(milli("100u"), 1, "finer than 1m rounds up to 1m");
        assert_eq!(milli("0.0001"), 1);
        assert_eq!(milli("0"), 0);
    }

    #[test]
    fn memory_forms_resolve_to_bytes() {
        assert_eq!(value("64Mi"), 64 * 1024 * 1024);
        assert_eq!(value("1G"), 1_000_000_000);
        assert_eq!(value("+1.5Gi"), 1_610_612_736);
        assert_eq!(value("1e3"), 1000);
        assert_eq!(value("128974848"), 128_974_848);
        assert_eq!(value("129e6"), 129_000_000);
        assert_eq!(value("123Mi"), 128_974_848);
        assert_eq!(value("1k"), 1000);
        assert_eq!(value("1Ki"), 1024);
        assert_eq!(value("7Ei"), 7 << 60);
        assert!(
            matches!(Quantity::parse("8Ei"), Err(QuantityError::Overflow(_))),
            "2^63 > i64::MAX"
        );
    }

    #[test]
    fn millibytes_round_up_to_a_byte() {
        assert_eq!(value("128m"), 1);
        assert_eq!(
            Quantity::parse("128m").unwrap().suffix(),
            Suffix::Decimal(-3)
        );
    }

    #[test]
    fn negatives_parse_but_do_not_convert() {
        let q = Quantity::parse("-1").unwrap();
        assert!(q.is_negative());
        assert_eq!(q.milli_ceil(), Err(QuantityError::Negative("-1".into())));
        assert!(!Quantity::parse("-0").unwrap().is_negative());
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        for bad in [
            "", "abc", "1.2.3", "1Gb", "1 G", "--1", "1e", "1e+", ".", "1Mi5", "0x10", "1ee3",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(matches!(Quantity::parse("5Zi"), Err(QuantityError::Suffix(_, s)) if s == "Zi"));
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(matches!(
            Quantity::parse("9Ei"),
            Err(QuantityError::Overflow(_))
        ));
        assert!(matches!(
            Quantity::parse("1e19"),
            Err(QuantityError::Overflow(_))
        ));
        assert!(matches!(
            Quantity::parse("123456789012345678901234567890123456789012"),
            Err(QuantityError::TooManyDigits(_))
        ));
        // In range as bytes, out of range as millis.
        let q = Quantity::parse("9e18").unwrap();
        assert_eq!(q.value_ceil().unwrap(), 9_000_000_000_000_000_000);
        assert!(matches!(q.milli_ceil(), Err(QuantityError::Overflow(_))));
    }

    #[test]
    fn precision_finer_than_a_millicore_is_detected() {
        assert!(Quantity::parse("0.0005").unwrap().finer_than_milli());
        assert!(Quantity::parse("100u").unwrap().finer_than_milli());
        assert!(Quantity::parse("1n").unwrap().finer_than_milli());
        assert!(!Quantity::parse("0.001").unwrap().finer_than_milli());
        assert!(!Quantity::parse("1000u").unwrap().finer_than_milli());
        assert!(!Quantity::parse("250m").unwrap().finer_than_milli());
        assert!(!Quantity::parse("2").unwrap().finer_than_milli());
    }
}
