//! One change to a profile, `adapter.rank = 16`: what `--set KEY=VALUE`, the workbench's
//! Setup and sweep forms and a sweep's trials all build, with one parser and one writer.

use std::fmt;
use std::str::FromStr;

use crate::error::{LorsError, Result};

/// A dotted profile key and the TOML value it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
}

impl Override {
    pub fn new(key: impl Into<String>, value: impl Into<toml::Value>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Set the value in `table` at the dotted key, creating the sections it names; an error
    /// when a part of the key is a value, not a section.
    pub fn apply(&self, table: &mut toml::Table) -> Result<()> {
        let parts: Vec<&str> = self.key.trim().split('.').collect();
        let (last, sections) = parts.split_last().expect("split gives one part");
        let mut cur = table;
        for s in sections {
            cur = cur
                .entry(s.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| LorsError::invalid(&self.key, format!("`{s}` is not a section")))?;
        }
        cur.insert(last.to_string(), self.value.clone());
        Ok(())
    }
}

/// `text` read as one TOML value (`16`, `true`, `"x"`, `[4, 8]`, `{ a = 1 }`), if it is one.
pub fn toml_value(text: &str) -> Option<toml::Value> {
    let mut t: toml::Table = toml::from_str(&format!("v = {text}")).ok()?;
    t.remove("v")
}

impl FromStr for Override {
    type Err = LorsError;

    /// `section.key=value`: the value as TOML, or as a plain string when it is not TOML
    /// (`model.path=runs/x` needs no quotes).
    fn from_str(spec: &str) -> Result<Self> {
        let (key, raw) = spec
            .split_once('=')
            .ok_or_else(|| LorsError::invalid("--set", format!("`{spec}` is not key=value")))?;
        let value = toml_value(raw).unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Self::new(key.trim(), value))
    }
}

/// `key=value` with the value as TOML: what [`FromStr`] reads back.
impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_or_plain_text_and_round_trips() {
        for (spec, value) in [
            ("adapter.rank=16", toml::Value::Integer(16)),
            ("optim.lr=3e-4", toml::Value::Float(3e-4)),
            ("train.merge_at_end=true", toml::Value::Boolean(true)),
            ("model.path=runs/x", toml::Value::String("runs/x".into())),
            (
                "adapter.method=\"lors\"",
                toml::Value::String("lors".into()),
            ),
        ] {
            let o: Override = spec.parse().unwrap();
            assert_eq!(o.value, value, "{spec}");
            assert_eq!(o.to_string().parse::<Override>().unwrap(), o);
        }
        assert!("no-equals".parse::<Override>().is_err());
    }

    #[test]
    fn applies_at_the_dotted_key() {
        let mut t: toml::Table = toml::from_str("[adapter]\nrank = 8\nx = 1").unwrap();
        Override::new("adapter.rank", 16).apply(&mut t).unwrap();
        Override::new("eval.tasks", "boolq").apply(&mut t).unwrap();
        assert_eq!(t["adapter"]["rank"].as_integer(), Some(16));
        assert_eq!(t["eval"]["tasks"].as_str(), Some("boolq"));
        let e = Override::new("adapter.x.y", 1).apply(&mut t).unwrap_err();
        assert!(e.to_string().contains("`x` is not a section"), "{e}");
    }
}
