//! Local cache mode (`[retention]`): studies delivered everywhere their forwarding rules
//! send them may be deleted here — after they have gone unread for a while
//! (`delete_after_forwarded`), or, least recently used first, while the archive holds more
//! than `max_bytes`. An undelivered study is never deleted. Off by default.

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delete a fully delivered study once it has been neither stored to nor read for this
    /// long: a number of seconds, or a number with a unit (`30d`, `12h`, `15m`, `45s`).
    #[serde(
        deserialize_with = "duration_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub delete_after_forwarded: Option<u64>,
    /// Keep the stored bytes under this (a number of bytes, or with a unit: `500GB`,
    /// `2TiB`) by deleting fully delivered studies, least recently used first.
    #[serde(deserialize_with = "bytes", skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// How often the server looks for studies to delete.
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            delete_after_forwarded: None,
            max_bytes: None,
            interval_secs: 300,
        }
    }
}

impl RetentionConfig {
    pub fn is_on(&self) -> bool {
        self.delete_after_forwarded.is_some() || self.max_bytes.is_some()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

pub(super) fn duration_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    with_units(
        d,
        &[("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)],
        "a duration",
    )
}

pub(super) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let units = [
        ("B", 1),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("TB", 1_000_000_000_000),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("TiB", 1 << 40),
    ];
    with_units(d, &units, "a size")
}

/// A number, or a number followed by one of `units` (name, multiplier).
fn with_units<'de, D: Deserializer<'de>>(
    d: D,
    units: &[(&str, u64)],
    what: &str,
) -> Result<Option<u64>, D::Error> {
    let text = match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => return Ok(Some(n)),
        NumberOrText::Text(t) => t,
    };
    parse_with_units(&text, units).map(Some).ok_or_else(|| {
        let names: Vec<&str> = units.iter().map(|u| u.0).collect();
        serde::de::Error::custom(format!(
            "{text:?} is not {what}: a number, or a number with one of {}",
            names.join(", ")
        ))
    })
}

fn parse_with_units(text: &str, units: &[(&str, u64)]) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().ok()?;
    let unit = unit.trim();
    if unit.is_empty() {
        return Some(n);
    }
    let (_, mult) = units.iter().find(|(name, _)| *name == unit)?;
    n.checked_mul(*mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_with_units() {
        let c: RetentionConfig = toml_from(
            r#"delete_after_forwarded = "30d"
max_bytes = "2GiB""#,
        );
        assert_eq!(c.delete_after_forwarded, Some(30 * 86_400));
        assert_eq!(c.max_bytes, Some(2 << 30));
        let c: RetentionConfig = toml_from("delete_after_forwarded = 90\nmax_bytes = 1000");
        assert_eq!(
            (c.delete_after_forwarded, c.max_bytes),
            (Some(90), Some(1000))
        );
        assert!(RetentionConfig::default().delete_after_forwarded.is_none());
        let units = [("s", 1), ("m", 60)];
        assert_eq!(parse_with_units("15m", &units), Some(900));
        assert_eq!(parse_with_units("15 w", &units), None);
        assert_eq!(parse_with_units("m", &units), None);
    }

    fn toml_from(text: &str) -> RetentionConfig {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .unwrap()
    }
}
