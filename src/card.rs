//! Card data checks: number parsing, Luhn, brand from IIN ranges, expiry and CVC rules.
//!
//! Everything here is pure. The number and CVC only ever live inside [`Secret`]; no error
//! message or `Debug` output contains them. Brand detection picks the most specific (longest
//! prefix) IIN range that matches, so `6011…` is Discover rather than Maestro and `622126…` is
//! Discover rather than UnionPay. A number matching no range is `invalid_card_number`;
//! `unsupported_brand` is for a valid card of a brand the merchant does not accept.

use crate::error::ApiError;
use crate::secret::Secret;
use serde::Serialize;
use std::fmt;
use std::ops::RangeInclusive;

/// Card brands poptill accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Brand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    Diners,
    UnionPay,
    Maestro,
}

impl Brand {
    /// Stable snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::Jcb => "jcb",
            Brand::Diners => "diners",
            Brand::UnionPay => "union_pay",
            Brand::Maestro => "maestro",
        }
    }

    /// Number lengths (digits) this brand issues.
    pub fn allowed_lengths(self) -> RangeOrSet {
        match self {
            Brand::Visa => RangeOrSet::Set(&[13, 16, 19]),
            Brand::Mastercard => RangeOrSet::Set(&[16]),
            Brand::Amex => RangeOrSet::Set(&[15]),
            Brand::Discover | Brand::Jcb | Brand::UnionPay => RangeOrSet::Range(16..=19),
            Brand::Diners => RangeOrSet::Range(14..=19),
            Brand::Maestro => RangeOrSet::Range(12..=19),
        }
    }

    /// Digits in this brand's card verification code.
    pub fn cvc_length(self) -> usize {
        match self {
            Brand::Amex => 4,
            _ => 3,
        }
    }

    /// The brand of a digit string by its IIN (leading digits), if any range matches.
    /// The longest matching prefix wins. `digits` must be ASCII digits.
    pub fn from_iin(digits: &str) -> Option<Brand> {
        let mut best: Option<(usize, Brand)> = None;
        for &(prefix_len, low, high, brand) in IIN_RANGES {
            let Some(prefix) = digits.get(..prefix_len) else {
                continue;
            };
            let Ok(value) = prefix.parse::<u32>() else {
                continue;
            };
            let longer = best.is_none_or(|(len, _)| prefix_len > len);
            if (low..=high).contains(&value) && longer {
                best = Some((prefix_len, brand));
            }
        }
        best.map(|(_, brand)| brand)
    }
}

impl fmt::Display for Brand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A brand's allowed number lengths: either a list or a contiguous range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOrSet {
    Set(&'static [usize]),
    Range(RangeInclusive<usize>),
}

impl RangeOrSet {
    pub fn contains(&self, n: usize) -> bool {
        match self {
            RangeOrSet::Set(set) => set.contains(&n),
            RangeOrSet::Range(range) => range.contains(&n),
        }
    }
}

/// (prefix length, lowest prefix, highest prefix, brand). Order does not matter: the
/// longest matching prefix wins.
const IIN_RANGES: &[(usize, u32, u32, Brand)] = &[
    (1, 4, 4, Brand::Visa),
    (2, 51, 55, Brand::Mastercard),
    (4, 2221, 2720, Brand::Mastercard),
    (2, 34, 34, Brand::Amex),
    (2, 37, 37, Brand::Amex),
    (4, 6011, 6011, Brand::Discover),
    (3, 644, 649, Brand::Discover),
    (2, 65, 65, Brand::Discover),
    (6, 622126, 622925, Brand::Discover),
    (4, 3528, 3589, Brand::Jcb),
    (3, 300, 305, Brand::Diners),
    (2, 36, 36, Brand::Diners),
    (2, 38, 39, Brand::Diners),
    (2, 62, 62, Brand::UnionPay),
    (2, 50, 50, Brand::Maestro),
    (2, 56, 58, Brand::Maestro),
    (1, 6, 6, Brand::Maestro),
];

/// Why a card number was refused. Carried for logs; never contains digits of the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberProblem {
    /// A character other than a digit, space or dash, or an empty or overlong input.
    Format,
    /// The length is not one the brand issues.
    Length,
    /// The Luhn check digit is wrong.
    Luhn,
    /// The leading digits match no card brand's IIN range.
    UnknownBrand,
}

/// A refused card. Codes are stable; messages never contain the number or the CVC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardError {
    InvalidNumber(NumberProblem),
    /// A valid card of a brand the merchant does not accept ([`Card::check_accepted`]).
    UnsupportedBrand,
    InvalidExpiry,
    Expired,
    InvalidCvc,
}

impl CardError {
    pub fn code(&self) -> &'static str {
        match self {
            CardError::InvalidNumber(_) => "invalid_card_number",
            CardError::UnsupportedBrand => "unsupported_brand",
            CardError::InvalidExpiry => "invalid_expiry",
            CardError::Expired => "card_expired",
            CardError::InvalidCvc => "invalid_cvc",
        }
    }

    /// 422: the card was read but is not one that can pay (a request that does not parse
    /// is a 400 `invalid_body`).
    pub fn to_api(&self) -> ApiError {
        ApiError::new(422, self.code(), self.to_string())
    }
}

impl fmt::Display for CardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CardError::InvalidNumber(NumberProblem::Format) => {
                "The card number must contain only digits (spaces and dashes are allowed)."
            }
            CardError::InvalidNumber(NumberProblem::Length) => {
                "The card number has the wrong number of digits for its brand."
            }
            CardError::InvalidNumber(NumberProblem::Luhn | NumberProblem::UnknownBrand) => {
                "The card number is not valid; please check it for typing mistakes."
            }
            CardError::UnsupportedBrand => "This card brand is not accepted.",
            CardError::InvalidExpiry => {
                "The expiry date is not valid; give a month 1-12 and a 2- or 4-digit year."
            }
            CardError::Expired => "The card has expired.",
            CardError::InvalidCvc => "The security code (CVC) has the wrong format for this card.",
        })
    }
}

impl std::error::Error for CardError {}

impl From<CardError> for ApiError {
    fn from(e: CardError) -> Self {
        e.to_api()
    }
}

/// The Luhn (mod 10) check over ASCII digits. Non-digits make it fail.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, byte) in digits.bytes().rev().enumerate() {
        if !byte.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(byte - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Longest input accepted before any parsing (digits plus separators).
const MAX_NUMBER_INPUT: usize = 40;

/// Parses a card number typed by a person: digits with optional spaces and dashes.
/// Returns the bare digits (in a `Secret`) and the brand. Checks, in order: format, brand
/// (IIN), length for that brand, Luhn.
pub fn parse_number(input: &str) -> Result<(Secret<String>, Brand), CardError> {
    if input.len() > MAX_NUMBER_INPUT {
        return Err(CardError::InvalidNumber(NumberProblem::Format));
    }
    let mut digits = String::with_capacity(19);
    for c in input.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '-' => {}
            _ => return Err(CardError::InvalidNumber(NumberProblem::Format)),
        }
    }
    // Move into a Secret at once so the digits are zeroed on every early return.
    let digits = Secret::new(digits);
    let number = digits.expose();
    if number.len() < 12 || number.len() > 19 {
        return Err(CardError::InvalidNumber(if number.is_empty() {
            NumberProblem::Format
        } else {
            NumberProblem::Length
        }));
    }
    let brand =
        Brand::from_iin(number).ok_or(CardError::InvalidNumber(NumberProblem::UnknownBrand))?;
    if !brand.allowed_lengths().contains(number.len()) {
        return Err(CardError::InvalidNumber(NumberProblem::Length));
    }
    if !luhn_valid(number) {
        return Err(CardError::InvalidNumber(NumberProblem::Luhn));
    }
    Ok((digits, brand))
}

/// A card's expiry: month 1-12 and a four-digit year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub month: u8,
    pub year: u16,
}

/// Latest expiry year accepted relative to `now` (cards are issued for at most ~20 years).
const MAX_YEARS_AHEAD: i64 = 50;

impl Expiry {
    /// From numbers as sent in JSON. A year below 100 means 20yy; otherwise it must have
    /// four digits (1000-9999).
    pub fn new(month: u32, year: u32) -> Result<Expiry, CardError> {
        if !(1..=12).contains(&month) {
            return Err(CardError::InvalidExpiry);
        }
        let year = match year {
            0..=99 => 2000 + year,
            1000..=9999 => year,
            _ => return Err(CardError::InvalidExpiry),
        };
        Ok(Expiry {
            month: u8::try_from(month).map_err(|_| CardError::InvalidExpiry)?,
            year: u16::try_from(year).map_err(|_| CardError::InvalidExpiry)?,
        })
    }

    /// From strings as typed: month "1"-"12" (or "01"), year with exactly 2 or 4 digits.
    pub fn parse(month: &str, year: &str) -> Result<Expiry, CardError> {
        let month = month.trim();
        let year = year.trim();
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(month) || month.len() > 2 || !all_digits(year) {
            return Err(CardError::InvalidExpiry);
        }
        if year.len() != 2 && year.len() != 4 {
            return Err(CardError::InvalidExpiry);
        }
        let m = month.parse::<u32>().map_err(|_| CardError::InvalidExpiry)?;
        let y = year.parse::<u32>().map_err(|_| CardError::InvalidExpiry)?;
        // "0025" is four digits but below 1000: treat as invalid rather than year 25.
        if year.len() == 4 && y < 1000 {
            return Err(CardError::InvalidExpiry);
        }
        Expiry::new(m, y)
    }

    /// The first instant (Unix ms, UTC) after the card stops being valid: midnight UTC at
    /// the start of the month after the expiry month.
    pub fn end_ms(&self) -> i64 {
        let (y, m) = if self.month >= 12 {
            (i64::from(self.year) + 1, 1)
        } else {
            (i64::from(self.year), i64::from(self.month) + 1)
        };
        days_from_civil(y, m, 1) * MS_PER_DAY
    }

    /// Whether the card is still valid at `now_ms` (valid through the last instant of its
    /// expiry month, UTC).
    pub fn is_valid_at(&self, now_ms: i64) -> bool {
        now_ms < self.end_ms()
    }

    /// Refuses expired cards and years implausibly far in the future.
    pub fn check(&self, now_ms: i64) -> Result<(), CardError> {
        if !self.is_valid_at(now_ms) {
            return Err(CardError::Expired);
        }
        let now_year = civil_year_from_ms(now_ms);
        if i64::from(self.year) > now_year + MAX_YEARS_AHEAD {
            return Err(CardError::InvalidExpiry);
        }
        Ok(())
    }
}

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC calendar year containing `ms` (H. Hinnant's `civil_from_days`, year only).
fn civil_year_from_ms(ms: i64) -> i64 {
    let z = ms.div_euclid(MS_PER_DAY) + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

/// Checks a CVC for a brand: ASCII digits, 4 for Amex, 3 for the others.
pub fn parse_cvc(input: &str, brand: Brand) -> Result<Secret<String>, CardError> {
    let cvc = Secret::new(input.trim().to_owned());
    let value = cvc.expose();
    if value.len() != brand.cvc_length() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CardError::InvalidCvc);
    }
    Ok(cvc)
}

/// A validated card. The number and CVC are `Secret`s, so `Debug` never shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    number: Secret<String>,
    brand: Brand,
    pub exp_month: u8,
    pub exp_year: u16,
    cvc: Option<Secret<String>>,
}

impl Card {
    /// Validates everything a person typed: number (format, brand, length, Luhn), expiry
    /// (shape, not expired at `now_ms`) and, if given, the CVC for the brand.
    pub fn parse(
        number: &str,
        expiry: Expiry,
        cvc: Option<&str>,
        now_ms: i64,
    ) -> Result<Card, CardError> {
        let (number, brand) = parse_number(number)?;
        expiry.check(now_ms)?;
        let cvc = cvc.map(|c| parse_cvc(c, brand)).transpose()?;
        Ok(Card {
            number,
            brand,
            exp_month: expiry.month,
            exp_year: expiry.year,
            cvc,
        })
    }

    /// Rebuilds a card from data the vault sealed earlier (already validated when it was
    /// tokenized); rechecks the number and expiry shape but not whether it has expired.
    pub(crate) fn from_sealed(number: Secret<String>, expiry: Expiry) -> Result<Card, CardError> {
        let (number, brand) = parse_number(number.expose())?;
        Ok(Card {
            number,
            brand,
            exp_month: expiry.month,
            exp_year: expiry.year,
            cvc: None,
        })
    }

    pub fn number(&self) -> &Secret<String> {
        &self.number
    }

    pub fn cvc(&self) -> Option<&Secret<String>> {
        self.cvc.as_ref()
    }

    pub fn brand(&self) -> Brand {
        self.brand
    }

    pub fn expiry(&self) -> Expiry {
        Expiry {
            month: self.exp_month,
            year: self.exp_year,
        }
    }

    /// The last four digits (not secret under PCI DSS; shown on receipts).
    pub fn last4(&self) -> String {
        let n = self.number.expose();
        n.get(n.len().saturating_sub(4)..).unwrap_or("").to_owned()
    }

    /// Refuses the card with `unsupported_brand` if its brand is not in `accepted` (the
    /// merchant's or event's list).
    pub fn check_accepted(&self, accepted: &[Brand]) -> Result<(), CardError> {
        if accepted.contains(&self.brand) {
            Ok(())
        } else {
            Err(CardError::UnsupportedBrand)
        }
    }

    /// The card without its CVC (what the vault gives back).
    pub fn without_cvc(mut self) -> Card {
        self.cvc = None;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2030-06-15T00:00:00Z.
    const NOW: i64 = 1_907_712_000_000;

    #[test]
    fn now_constant_is_mid_2030() {
        assert_eq!(days_from_civil(2030, 6, 15) * MS_PER_DAY, NOW);
        assert_eq!(civil_year_from_ms(NOW), 2030);
        assert_eq!(civil_year_from_ms(0), 1970);
        assert_eq!(civil_year_from_ms(-1), 1969);
    }

    #[test]
    fn test_cards_parse_to_their_brands() {
        let table = [
            ("4242424242424242", Brand::Visa),
            ("5555555555554444", Brand::Mastercard),
            ("2223003122003222", Brand::Mastercard),
            ("378282246310005", Brand::Amex),
            ("6011111111111117", Brand::Discover),
            ("3566002020360505", Brand::Jcb),
            ("36227206271667", Brand::Diners),
            ("6200000000000005", Brand::UnionPay),
            ("4000000000000002", Brand::Visa),
            ("4222222222222", Brand::Visa),
            ("6759649826438453", Brand::Maestro),
        ];
        for (number, brand) in table {
            let (digits, got) = parse_number(number).unwrap_or_else(|e| panic!("{number}: {e}"));
            assert_eq!(got, brand, "{number}");
            assert_eq!(digits.expose(), number);
        }
    }

    #[test]
    fn spaces_and_dashes_are_allowed() {
        let (digits, brand) = parse_number("4242 4242-4242 4242").unwrap();
        assert_eq!(digits.expose(), "4242424242424242");
        assert_eq!(brand, Brand::Visa);
    }

    #[test]
    fn iin_table_most_specific_wins() {
        let table: &[(&str, Option<Brand>)] = &[
            ("4", Some(Brand::Visa)),
            ("51", Some(Brand::Mastercard)),
            ("55", Some(Brand::Mastercard)),
            ("56", Some(Brand::Maestro)),
            ("2220", None),
            ("2221", Some(Brand::Mastercard)),
            ("2720", Some(Brand::Mastercard)),
            ("2721", None),
            ("34", Some(Brand::Amex)),
            ("35", None),
            ("3527", None),
            ("3528", Some(Brand::Jcb)),
            ("3589", Some(Brand::Jcb)),
            ("37", Some(Brand::Amex)),
            ("300", Some(Brand::Diners)),
            ("305", Some(Brand::Diners)),
            ("306", None),
            ("36", Some(Brand::Diners)),
            ("38", Some(Brand::Diners)),
            ("39", Some(Brand::Diners)),
            ("50", Some(Brand::Maestro)),
            ("58", Some(Brand::Maestro)),
            ("59", None),
            ("6011", Some(Brand::Discover)),
            ("6012", Some(Brand::Maestro)),
            ("643", Some(Brand::Maestro)),
            ("644", Some(Brand::Discover)),
            ("649", Some(Brand::Discover)),
            ("65", Some(Brand::Discover)),
            ("62", Some(Brand::UnionPay)),
            ("622125", Some(Brand::UnionPay)),
            ("622126", Some(Brand::Discover)),
            ("622925", Some(Brand::Discover)),
            ("622926", Some(Brand::UnionPay)),
            ("67", Some(Brand::Maestro)),
            ("1", None),
            ("7", None),
            ("9", None),
        ];
        for &(prefix, want) in table {
            // Pad to 16 digits so every prefix length can be read.
            let padded = format!("{prefix:0<16}");
            assert_eq!(Brand::from_iin(&padded), want, "prefix {prefix}");
        }
    }

    #[test]
    fn invalid_numbers_are_refused_with_stable_codes() {
        let table: &[(&str, CardError)] = &[
            (
                "4242424242424241",
                CardError::InvalidNumber(NumberProblem::Luhn),
            ),
            (
                "4242x24242424242",
                CardError::InvalidNumber(NumberProblem::Format),
            ),
            ("", CardError::InvalidNumber(NumberProblem::Format)),
            (" - ", CardError::InvalidNumber(NumberProblem::Format)),
            (
                "42424242424",
                CardError::InvalidNumber(NumberProblem::Length),
            ),
            (
                "42424242424242424242",
                CardError::InvalidNumber(NumberProblem::Length),
            ),
            // Visa with 15 digits (only 13, 16, 19 allowed).
            (
                "424242424242424",
                CardError::InvalidNumber(NumberProblem::Length),
            ),
            // Amex with 16 digits.
            (
                "3782822463100052",
                CardError::InvalidNumber(NumberProblem::Length),
            ),
            (
                "1234567812345670",
                CardError::InvalidNumber(NumberProblem::UnknownBrand),
            ),
            (
                "9111111111111111",
                CardError::InvalidNumber(NumberProblem::UnknownBrand),
            ),
            (
                "４２４２４２４２４２４２４２４２",
                CardError::InvalidNumber(NumberProblem::Format),
            ),
        ];
        for &(number, want) in table {
            let got = parse_number(number).map(|_| ()).unwrap_err();
            assert_eq!(got, want, "{number:?}");
        }
        let long = "4".repeat(1000);
        assert!(parse_number(&long).is_err());
    }

    #[test]
    fn errors_never_echo_the_number() {
        let number = "4242424242424241";
        let err = parse_number(number).map(|_| ()).unwrap_err();
        let api = err.to_api();
        assert_eq!(api.code, "invalid_card_number");
        assert_eq!(api.status, 422);
        for text in [
            api.message.clone(),
            api.body().to_string(),
            format!("{err:?}"),
        ] {
            assert!(!text.contains(number), "{text}");
            assert!(!text.contains("4242"), "{text}");
        }
    }

    #[test]
    fn luhn_examples() {
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("79927398710"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("12a4"));
    }

    #[test]
    fn expiry_is_valid_through_last_instant_of_month_utc() {
        let feb = Expiry::new(2, 2024).unwrap();
        // 2024-03-01T00:00:00Z = 1709251200 s.
        assert_eq!(feb.end_ms(), 1_709_251_200_000);
        assert!(feb.is_valid_at(1_709_251_199_999));
        assert!(!feb.is_valid_at(1_709_251_200_000));
        let dec = Expiry::new(12, 2029).unwrap();
        // 2030-01-01T00:00:00Z = 1893456000 s.
        assert_eq!(dec.end_ms(), 1_893_456_000_000);
        assert_eq!(dec.check(1_893_455_999_999), Ok(()));
        assert_eq!(dec.check(1_893_456_000_000), Err(CardError::Expired));
    }

    #[test]
    fn expiry_accepts_two_and_four_digit_years() {
        assert_eq!(
            Expiry::parse("7", "31").unwrap(),
            Expiry {
                month: 7,
                year: 2031
            }
        );
        assert_eq!(
            Expiry::parse("07", "2031").unwrap(),
            Expiry {
                month: 7,
                year: 2031
            }
        );
        assert_eq!(Expiry::new(7, 31).unwrap(), Expiry::new(7, 2031).unwrap());
        for (m, y) in [
            ("0", "31"),
            ("13", "31"),
            ("1", "031"),
            ("1", "20311"),
            ("1", "0031"),
            ("x", "31"),
            ("1", ""),
            ("123", "31"),
            ("-1", "31"),
        ] {
            assert_eq!(
                Expiry::parse(m, y),
                Err(CardError::InvalidExpiry),
                "{m}/{y}"
            );
        }
        assert_eq!(Expiry::new(0, 2031), Err(CardError::InvalidExpiry));
        assert_eq!(Expiry::new(1, 500), Err(CardError::InvalidExpiry));
        assert_eq!(
            Expiry::new(1, 2099).unwrap().check(NOW),
            Err(CardError::InvalidExpiry)
        );
    }

    #[test]
    fn cvc_length_per_brand() {
        assert!(parse_cvc("1234", Brand::Amex).is_ok());
        assert_eq!(
            parse_cvc("123", Brand::Amex).map(|_| ()),
            Err(CardError::InvalidCvc)
        );
        assert!(parse_cvc("123", Brand::Visa).is_ok());
        assert_eq!(
            parse_cvc("1234", Brand::Visa).map(|_| ()),
            Err(CardError::InvalidCvc)
        );
        assert_eq!(
            parse_cvc("12a", Brand::Visa).map(|_| ()),
            Err(CardError::InvalidCvc)
        );
    }

    #[test]
    fn card_parse_and_accessors() {
        let exp = Expiry::new(12, 2031).unwrap();
        let card = Card::parse("3782 822463 10005", exp, Some("1234"), NOW).unwrap();
        assert_eq!(card.brand(), Brand::Amex);
        assert_eq!(card.last4(), "0005");
        assert_eq!(card.cvc().map(|c| c.expose().as_str()), Some("1234"));
        assert_eq!(
            Card::parse("378282246310005", exp, Some("123"), NOW),
            Err(CardError::InvalidCvc)
        );
        assert_eq!(card.check_accepted(&[Brand::Amex, Brand::Visa]), Ok(()));
        let refused = card.check_accepted(&[Brand::Visa, Brand::Mastercard]);
        assert_eq!(refused, Err(CardError::UnsupportedBrand));
        assert_eq!(refused.unwrap_err().to_api().code, "unsupported_brand");
        let old = Expiry::new(5, 2030).unwrap();
        assert_eq!(
            Card::parse("4242424242424242", old, None, NOW),
            Err(CardError::Expired)
        );
    }

    #[test]
    fn card_debug_never_shows_number_or_cvc() {
        let exp = Expiry::new(12, 2031).unwrap();
        let card = Card::parse("4242424242424242", exp, Some("987"), NOW).unwrap();
        for text in [format!("{card:?}"), format!("{card:#?}")] {
            assert!(!text.contains("4242424242424242"), "{text}");
            assert!(!text.contains("424242"), "{text}");
            assert!(!text.contains("987"), "{text}");
        }
    }
}
