//! Human durations in config files: `"500ms"`, `"2s"`, `"1m30s"`, `"1h"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration written as a string with units, so a config never guesses
/// whether `2` meant seconds or milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Parses `"1h30m"`, `"500ms"`, `"0s"`: one or more `<integer><unit>` parts,
/// units `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = "expected a duration such as \"500ms\", \"2s\", \"1m30s\" or \"1h\"";
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("empty duration, {expected}"));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {text:?}, {expected}"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {text:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => None,
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86400),
            "" => return Err(format!("duration {text:?} lacks a unit, {expected}")),
            other => {
                return Err(format!(
                    "unknown unit {other:?} in duration {text:?}, {expected}"
                ));
            }
        };
        rest = &rest[unit_len..];
        let part = match seconds_per_unit {
            None => Some(Duration::from_millis(value)),
            Some(size) => value.checked_mul(size).map(Duration::from_secs),
        }
        .ok_or_else(|| format!("duration {text:?} is too large"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
    }
    Ok(total)
}

/// Renders a duration the way a config would write it (`1m30s`, `500ms`,
/// `1s500ms`), to whole milliseconds; the text parses back to the same value.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let millis = d.subsec_millis();
    if secs == 0 && millis == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    out
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"2s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "2", "s", "2x", "1.5s", "-1s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in [
            "500ms",
            "2s",
            "1m30s",
            "1h",
            "0s",
            "1s500ms",
            "103079215080h",
        ] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn large_values_are_fine_until_a_duration_overflows() {
        let days = parse_duration("4294967295d").unwrap();
        assert_eq!(days.as_secs(), 4_294_967_295 * 86_400);
        let max = format!("{}s999ms", u64::MAX);
        let parsed = parse_duration(&max).unwrap();
        assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        assert!(parse_duration(&format!("{max}1ms")).is_err());
        assert!(parse_duration("213503982334602d").is_err());
    }
}
