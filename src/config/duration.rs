//! Human durations in config files: `"500ms"`, `"2s"`, `"1m30s"`, `"1h"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration written as a string with units, so a config never guesses
/// whether `2` meant seconds or milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Parses `"1h30m"`, `"500ms"`, `"0s"`: one or more `<integer><unit>` parts,
/// units `d`, `h`, `m`, `s`, `ms`, each used at most once and largest first
/// (`"1m30s"`; `"1s1s"` and `"30s1m"` are errors). No fractions: `"1500ms"`,
/// not `"1.5s"`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    parse(text).map_err(DurationError)
}

/// A duration that cannot be read, and what was expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(pub String);

fn parse(text: &str) -> Result<Duration, String> {
    let expected = "expected a duration such as \"500ms\", \"2s\", \"1m30s\" or \"1h\"";
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("empty duration, {expected}"));
    }
    let mut total = Duration::ZERO;
    // The previous part's unit, in milliseconds: each must be smaller.
    let mut previous: Option<(&str, u64)> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {text:?}, {expected}"));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration {text:?} is too large"))?;
        rest = &rest[digits..];
        if rest.starts_with('.') {
            return Err(fraction(text));
        }
        if rest.starts_with(char::is_whitespace) {
            let joined: String = text.split_whitespace().collect();
            return Err(format!(
                "duration {text:?} has a space in it: write {joined:?}"
            ));
        }
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let Some(unit_millis) = unit_millis(unit) else {
            return Err(if unit.is_empty() {
                format!("duration {text:?} lacks a unit, {expected}")
            } else {
                format!("unknown unit {unit:?} in duration {text:?}, {expected}")
            });
        };
        if let Some((before, before_millis)) = previous {
            if before_millis == unit_millis {
                return Err(format!(
                    "duration {text:?} gives unit {unit:?} twice: write each unit once, largest first, as in \"1m30s\""
                ));
            }
            if before_millis < unit_millis {
                return Err(format!(
                    "duration {text:?} has {unit:?} after {before:?}: write the units largest first, as in \"1m30s\""
                ));
            }
        }
        previous = Some((unit, unit_millis));
        rest = &rest[unit_len..];
        let part = value
            .checked_mul(unit_millis)
            .map(Duration::from_millis)
            .or_else(|| {
                // Past u64 milliseconds, whole seconds still fit.
                (unit_millis >= 1000)
                    .then(|| value.checked_mul(unit_millis / 1000))
                    .flatten()
                    .map(Duration::from_secs)
            })
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
    }
    Ok(total)
}

fn unit_millis(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    })
}

/// The message for `"1.5s"`: fractions are not taken; name the same
/// duration in a smaller unit when it has one.
fn fraction(text: &str) -> String {
    let suggestion = text
        .trim()
        .split_once('.')
        .and_then(|(whole, rest)| {
            let decimals = rest.bytes().take_while(u8::is_ascii_digit).count();
            let unit = unit_millis(&rest[decimals..])?;
            let scale = 10u64.checked_pow(u32::try_from(decimals).ok()?)?;
            let number: u64 = format!("{whole}{}", &rest[..decimals]).parse().ok()?;
            let millis = number.checked_mul(unit)?;
            let millis = (millis % scale == 0).then_some(millis / scale)?;
            Some(if millis % 1000 == 0 {
                format_duration(Duration::from_millis(millis))
            } else {
                format!("{millis}ms")
            })
        })
        .map_or(String::new(), |d| format!(": write {d:?}"));
    format!(
        "duration {text:?} has a fraction, which lbd does not take: use a smaller unit{suggestion}"
    )
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
    fn each_unit_once_and_largest_first() {
        assert_eq!(
            parse_duration("1d2h3m4s5ms").unwrap().as_millis(),
            93_784_005
        );
        let twice = parse_duration("1s1s").unwrap_err().0;
        assert!(twice.contains("gives unit \"s\" twice"), "{twice}");
        let order = parse_duration("30s1m").unwrap_err().0;
        assert!(order.contains("has \"m\" after \"s\""), "{order}");
        assert!(parse_duration("1s500ms").is_ok());
    }

    #[test]
    fn a_fraction_is_named_with_what_to_write_instead() {
        let message = parse_duration("1.5s").unwrap_err().0;
        assert_eq!(
            message,
            "duration \"1.5s\" has a fraction, which lbd does not take: use a smaller unit: write \"1500ms\""
        );
        assert!(
            parse_duration("0.25m")
                .unwrap_err()
                .0
                .ends_with("write \"15s\"")
        );
        // No whole number of milliseconds: no suggestion.
        assert!(
            parse_duration("0.0001s")
                .unwrap_err()
                .0
                .ends_with("use a smaller unit")
        );
        let spaced = parse_duration("2 s").unwrap_err().0;
        assert!(spaced.ends_with("write \"2s\""), "{spaced}");
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
