//! Money as it arrives in JSON ("60.00" or 60.5) converted exactly to cents, never through
//! a float's arithmetic.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The largest amount accepted: one billion in major units. Anything above is a typo or an
/// attack, and staying far below `i64::MAX` cents keeps every sum downstream exact.
pub const MAX_CENTS: i64 = 100_000_000_000;

/// A non-negative amount in minor units (cents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a decimal amount such as \"60.00\"")]
    Malformed,
    #[error("must not be negative")]
    Negative,
    #[error("must have at most 2 decimal places")]
    TooPrecise,
    #[error("must be at most 1000000000.00")]
    TooLarge,
}

impl Money {
    pub fn from_cents(cents: i64) -> Self {
        Money(cents)
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    /// Parses `digits[.d[d]]`: no sign other than a leading `-` (to say "negative" rather
    /// than "malformed"), no exponent, no spaces.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (unsigned, ""),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || (unsigned.contains('.') && !digits(fraction)) {
            return Err(MoneyError::Malformed);
        }
        if negative {
            return Err(MoneyError::Negative);
        }
        if fraction.len() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        let whole = whole.trim_start_matches('0');
        // 10 digits of major units is already above the maximum; checking the length first
        // keeps the arithmetic below from overflowing on a 40-digit input.
        if whole.len() > 10 {
            return Err(MoneyError::TooLarge);
        }
        let major: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| MoneyError::Malformed)?
        };
        let minor: i64 = match fraction.len() {
            0 => 0,
            1 => fraction.parse::<i64>().map_err(|_| MoneyError::Malformed)? * 10,
            _ => fraction.parse().map_err(|_| MoneyError::Malformed)?,
        };
        let cents = major * 100 + minor;
        if cents > MAX_CENTS {
            return Err(MoneyError::TooLarge);
        }
        Ok(Money(cents))
    }

    /// A JSON number. Within the accepted range (12 significant digits at most) an `f64`'s
    /// shortest round-trip representation is exactly the decimal the client wrote, so the
    /// number is converted through that text, not by multiplying a float.
    fn from_f64(value: f64) -> Result<Money, MoneyError> {
        if !value.is_finite() {
            return Err(MoneyError::Malformed);
        }
        if value < 0.0 {
            return Err(MoneyError::Negative);
        }
        if value > (MAX_CENTS / 100) as f64 {
            return Err(MoneyError::TooLarge);
        }
        Money::parse(&value.to_string())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Serialized as the decimal string, the same shape clients send.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MoneyVisitor;

        impl Visitor<'_> for MoneyVisitor {
            type Value = Money;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal amount as a string (\"60.00\") or a number")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
                Money::parse(v).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                let cents = i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(100))
                    .filter(|c| *c <= MAX_CENTS)
                    .ok_or(MoneyError::TooLarge)
                    .map_err(E::custom)?;
                Ok(Money(cents))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                if v < 0 {
                    return Err(E::custom(MoneyError::Negative));
                }
                self.visit_u64(v as u64)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                Money::from_f64(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(MoneyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Result<i64, String> {
        serde_json::from_str::<Money>(text)
            .map(Money::cents)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn decimal_strings_convert_exactly() {
        assert_eq!(Money::parse("60.00"), Ok(Money(6000)));
        assert_eq!(Money::parse("60"), Ok(Money(6000)));
        assert_eq!(Money::parse("60.1"), Ok(Money(6010)));
        assert_eq!(Money::parse("0.01"), Ok(Money(1)));
        assert_eq!(Money::parse("0"), Ok(Money(0)));
        assert_eq!(Money::parse("007.50"), Ok(Money(750)));
        assert_eq!(Money::parse("1000000000.00"), Ok(Money(MAX_CENTS)));
    }

    #[test]
    fn bad_strings_say_why() {
        assert_eq!(Money::parse("-1.00"), Err(MoneyError::Negative));
        assert_eq!(Money::parse("1.005"), Err(MoneyError::TooPrecise));
        assert_eq!(Money::parse("60.000"), Err(MoneyError::TooPrecise));
        assert_eq!(Money::parse("1000000000.01"), Err(MoneyError::TooLarge));
        assert_eq!(Money::parse(&"9".repeat(40)), Err(MoneyError::TooLarge));
        for bad in [
            "", ".", ".5", "5.", "1e3", "+1", " 1", "1 ", "1,00", "abc", "--1", "0x10", "1.2.3",
            "١٢",
        ] {
            assert_eq!(Money::parse(bad), Err(MoneyError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn json_numbers_convert_exactly() {
        assert_eq!(json("60"), Ok(6000));
        assert_eq!(json("60.1"), Ok(6010));
        assert_eq!(json("60.10"), Ok(6010));
        assert_eq!(json("0.29"), Ok(29));
        assert_eq!(json("1.15"), Ok(115));
        assert_eq!(json("999999999.99"), Ok(99_999_999_999));
        assert_eq!(json("\"19.99\""), Ok(1999));
        assert!(json("1.005").unwrap_err().contains("2 decimal"));
        assert!(json("-5").unwrap_err().contains("negative"));
        assert!(json("-0.5").unwrap_err().contains("negative"));
        assert!(json("1e20").unwrap_err().contains("at most"));
        assert!(
            json("18446744073709551615")
                .unwrap_err()
                .contains("at most")
        );
        assert!(json("true").is_err());
        assert!(json("null").is_err());
    }

    #[test]
    fn displays_as_a_decimal_string() {
        assert_eq!(Money(6000).to_string(), "60.00");
        assert_eq!(Money(5).to_string(), "0.05");
        assert_eq!(serde_json::to_string(&Money(1999)).unwrap(), "\"19.99\"");
    }
}
