//! Money as integer minor units of an ISO 4217 currency; never a float.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO 4217 currency code with its number of minor-unit digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct Currency {
    code: [u8; 3],
}

/// Currencies poptill accepts, with their minor-unit exponent (ISO 4217).
const CURRENCIES: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("INR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("BHD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("USD", 2),
    ("ZAR", 2),
];

impl Currency {
    /// Parses an upper-case ISO 4217 code that poptill supports.
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        if CURRENCIES.iter().any(|(c, _)| *c == code) {
            let b = code.as_bytes();
            Ok(Currency {
                code: [b[0], b[1], b[2]],
            })
        } else {
            Err(MoneyError::UnknownCurrency(code.chars().take(8).collect()))
        }
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        // The bytes always come from the ASCII table above.
        std::str::from_utf8(&self.code).unwrap_or("XXX")
    }

    /// Number of digits after the decimal point (JPY 0, EUR 2, KWD 3).
    pub fn exponent(&self) -> u8 {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == self.code())
            .map(|(_, e)| *e)
            .unwrap_or(2)
    }
}

/// A currency is described as the list of codes poptill accepts.
impl schemars::JsonSchema for Currency {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Currency".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let codes: Vec<&str> = CURRENCIES.iter().map(|(c, _)| *c).collect();
        schemars::json_schema!({
            "type": "string",
            "description": "An ISO 4217 currency code poptill accepts.",
            "enum": codes,
        })
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Currency::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount in minor units (cents, yen, fils). Signed so refunds and differences fit.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct MinorUnits(pub i64);

impl MinorUnits {
    pub const ZERO: MinorUnits = MinorUnits(0);

    pub fn checked_add(self, other: MinorUnits) -> Option<MinorUnits> {
        self.0.checked_add(other.0).map(MinorUnits)
    }

    pub fn checked_sub(self, other: MinorUnits) -> Option<MinorUnits> {
        self.0.checked_sub(other.0).map(MinorUnits)
    }

    pub fn checked_mul(self, n: i64) -> Option<MinorUnits> {
        self.0.checked_mul(n).map(MinorUnits)
    }

    /// Formats for a person, e.g. `12.50 EUR`, `1500 JPY`, `1.250 KWD`.
    pub fn display(self, currency: Currency) -> String {
        let exp = currency.exponent() as u32;
        if exp == 0 {
            return format!("{} {}", self.0, currency);
        }
        let div = 10i64.pow(exp);
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        format!(
            "{sign}{}.{:0width$} {currency}",
            abs / div as u64,
            abs % div as u64,
            width = exp as usize
        )
    }
}

/// An amount together with its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount: MinorUnits,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    UnknownCurrency(String),
    Overflow,
    CurrencyMismatch,
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoneyError::UnknownCurrency(c) => write!(f, "unknown or unsupported currency {c:?}"),
            MoneyError::Overflow => f.write_str("amount out of range"),
            MoneyError::CurrencyMismatch => f.write_str("amounts in different currencies"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!(Currency::parse("JPY").map(|c| c.exponent()), Ok(0));
        assert_eq!(Currency::parse("EUR").map(|c| c.exponent()), Ok(2));
        assert_eq!(Currency::parse("KWD").map(|c| c.exponent()), Ok(3));
        assert!(Currency::parse("eur").is_err());
        assert!(Currency::parse("XYZ").is_err());
    }

    #[test]
    fn display_uses_minor_units() {
        let eur = Currency::parse("EUR").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(MinorUnits(1250).display(eur), "12.50 EUR");
        assert_eq!(MinorUnits(-5).display(eur), "-0.05 EUR");
        assert_eq!(MinorUnits(1500).display(jpy), "1500 JPY");
        assert_eq!(MinorUnits(1250).display(kwd), "1.250 KWD");
    }

    #[test]
    fn serde_round_trip() {
        let m = Money {
            amount: MinorUnits(995),
            currency: Currency::parse("GBP").unwrap(),
        };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, r#"{"amount":995,"currency":"GBP"}"#);
        assert_eq!(serde_json::from_str::<Money>(&j).unwrap(), m);
        assert!(serde_json::from_str::<Money>(r#"{"amount":1,"currency":"ABC"}"#).is_err());
    }
}
