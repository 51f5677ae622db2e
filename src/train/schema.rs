//! Every key a profile takes, as data: its section, value type, default, doc comment and
//! whether it may be left out. It comes from the schema schemars derives from the profile's
//! types, so their serde attributes and `///` comments are the one source; the keys keep the
//! order the structs declare them in (serde's own field lists). The workbench's Setup lists
//! these keys.

use std::sync::OnceLock;

use serde::de::{self, Deserialize, Visitor};
use serde_json::Value as Json;

use super::optim::OptimSection;
use super::profile::{AdapterSection, DataSection, ModelSection, Profile, TrainSection};
use crate::eval::TaskSuite;
use crate::prune::PruneSettings;

/// The type of a profile key's value.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueType {
    Bool,
    Integer,
    Number,
    /// Free text, or a path.
    Text,
    /// One of these names.
    Choice(Vec<String>),
    /// A list of values of one type.
    List(Box<ValueType>),
    /// A table of values of one type (such as `[eval.data]`: a file per task).
    Table(Box<ValueType>),
}

/// One key of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileKey {
    /// Its section: `model`, `prune`, `data`, `adapter`, `optim`, `train` or `eval`.
    pub section: &'static str,
    /// `section.name`, as overrides and error messages spell it.
    pub key: String,
    pub value: ValueType,
    /// Its doc comment, on one line.
    pub doc: String,
    /// The value it takes when absent, if it has one.
    pub default: Option<toml::Value>,
    /// Whether a profile must give it (when its section is there).
    pub required: bool,
    /// Whether its value may be none (an `Option`).
    pub nullable: bool,
    /// Whether its whole section may be absent (`[prune]`, `[eval]`).
    pub optional_section: bool,
}

impl ProfileKey {
    /// The name within its section.
    pub fn name(&self) -> &str {
        &self.key[self.section.len() + 1..]
    }
}

/// Every key of a profile, section by section in the profile's order.
pub fn profile_keys() -> &'static [ProfileKey] {
    static KEYS: OnceLock<Vec<ProfileKey>> = OnceLock::new();
    KEYS.get_or_init(build_keys)
}

/// The field names serde's derive lists for `T` (in declaration order).
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut recorder = FieldRecorder(&[]);
    let _ = T::deserialize(&mut recorder);
    recorder.0
}

/// Each section and the fields its type declares.
fn section_fields(section: &str) -> &'static [&'static str] {
    match section {
        "model" => field_names::<ModelSection>(),
        "prune" => field_names::<PruneSettings>(),
        "data" => field_names::<DataSection>(),
        "adapter" => field_names::<AdapterSection>(),
        "optim" => field_names::<OptimSection>(),
        "train" => field_names::<TrainSection>(),
        "eval" => field_names::<TaskSuite>(),
        _ => &[],
    }
}

fn build_keys() -> Vec<ProfileKey> {
    let root = schemars::schema_for!(Profile).to_value();
    let required = |schema: &Json, name: &str| {
        schema["required"]
            .as_array()
            .is_some_and(|r| r.iter().any(|k| k == name))
    };
    let mut keys = Vec::new();
    for &section in field_names::<Profile>() {
        let (schema, nullable) = resolve(&root, &root["properties"][section]);
        let properties = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        // Declared order first; any property the order misses still gets listed.
        let declared = section_fields(section);
        let mut names: Vec<&str> = declared.to_vec();
        names.extend(
            properties
                .keys()
                .map(String::as_str)
                .filter(|n| !declared.contains(n)),
        );
        for name in names {
            let Some(property) = properties.get(name) else {
                continue;
            };
            let (field, field_nullable) = resolve(&root, property);
            keys.push(ProfileKey {
                section,
                key: format!("{section}.{name}"),
                value: value_type(&root, &field),
                doc: one_line(property["description"].as_str().unwrap_or_default()),
                default: property.get("default").and_then(toml_of_json),
                required: required(&schema, name),
                nullable: field_nullable,
                optional_section: nullable,
            });
        }
    }
    keys
}

/// `schema` with its `$ref` followed and a `null` alternative removed; true when there was
/// one (the value may be none).
fn resolve(root: &Json, schema: &Json) -> (Json, bool) {
    let follow = |s: &Json| match s["$ref"].as_str() {
        Some(r) => root
            .pointer(r.trim_start_matches('#'))
            .cloned()
            .unwrap_or(Json::Null),
        None => s.clone(),
    };
    let is_null = |s: &Json| s["type"] == "null";
    if let Some(options) = schema["anyOf"].as_array() {
        let kept: Vec<&Json> = options.iter().filter(|s| !is_null(s)).collect();
        if let [only] = kept[..] {
            return (follow(only), kept.len() < options.len());
        }
    }
    let mut s = follow(schema);
    if let Some(types) = s["type"].as_array().cloned() {
        let kept: Vec<Json> = types.into_iter().filter(|t| t != "null").collect();
        let nullable = kept.len() == 1;
        if nullable {
            s["type"] = kept[0].clone();
        }
        return (s, nullable);
    }
    (s, false)
}

fn value_type(root: &Json, schema: &Json) -> ValueType {
    let names = |list: &Json| -> Option<Vec<String>> {
        list.as_array()?
            .iter()
            .map(|v| v.as_str().or_else(|| v["const"].as_str()).map(String::from))
            .collect()
    };
    if let Some(choices) = names(&schema["enum"]).or_else(|| names(&schema["oneOf"])) {
        return ValueType::Choice(choices);
    }
    let inner = |s: &Json| Box::new(value_type(root, &resolve(root, s).0));
    match schema["type"].as_str() {
        Some("boolean") => ValueType::Bool,
        Some("integer") => ValueType::Integer,
        Some("number") => ValueType::Number,
        Some("array") => ValueType::List(inner(&schema["items"])),
        Some("object") => {
            let values = schema["additionalProperties"]
                .as_object()
                .map(|_| &schema["additionalProperties"])
                .or_else(|| schema["properties"].as_object()?.values().next());
            ValueType::Table(values.map_or(Box::new(ValueType::Text), inner))
        }
        _ => ValueType::Text,
    }
}

fn one_line(doc: &str) -> String {
    doc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A JSON default as a TOML value (none for `null`).
fn toml_of_json(v: &Json) -> Option<toml::Value> {
    Some(match v {
        Json::Null => return None,
        Json::Bool(b) => toml::Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Json::String(s) => toml::Value::String(s.clone()),
        Json::Array(items) => toml::Value::Array(items.iter().filter_map(toml_of_json).collect()),
        Json::Object(map) => toml::Value::Table(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), toml_of_json(v)?)))
                .collect(),
        ),
    })
}

/// A deserializer that only notes the field list a struct asks for, then stops.
struct FieldRecorder(&'static [&'static str]);

impl<'de> de::Deserializer<'de> for &mut FieldRecorder {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only a struct's field names are read"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = fields;
        self.deserialize_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> &'static ProfileKey {
        profile_keys()
            .iter()
            .find(|p| p.key == k)
            .unwrap_or_else(|| panic!("{k} is a profile key"))
    }

    #[test]
    fn every_field_of_every_section_is_listed_in_declaration_order() {
        let keys = profile_keys();
        for &section in field_names::<Profile>() {
            let listed: Vec<&str> = keys
                .iter()
                .filter(|k| k.section == section)
                .map(ProfileKey::name)
                .collect();
            assert_eq!(listed, section_fields(section), "[{section}]");
        }
        assert_eq!(keys.first().map(|k| k.key.as_str()), Some("model.path"));
        assert!(keys.len() > 55, "{} keys", keys.len());
    }

    #[test]
    fn types_defaults_and_docs_come_from_the_profile_types() {
        assert_eq!(key("adapter.rank").value, ValueType::Integer);
        assert_eq!(key("adapter.rank").default, Some(toml::Value::Integer(8)));
        assert_eq!(key("optim.lr").value, ValueType::Number);
        assert_eq!(key("adapter.rslora").value, ValueType::Bool);
        let ValueType::Choice(methods) = &key("adapter.method").value else {
            panic!("method is a choice")
        };
        assert_eq!(methods.len(), crate::adapters::Method::ALL.len());
        let ValueType::Choice(packing) = &key("data.packing").value else {
            panic!("packing is a choice")
        };
        assert_eq!(packing, &["auto", "pack", "pad"]);
        assert!(
            matches!(&key("eval.tasks").value, ValueType::List(t) if matches!(**t, ValueType::Choice(_)))
        );
        assert!(
            matches!(&key("optim.betas").value, ValueType::List(t) if **t == ValueType::Number)
        );
        assert!(matches!(&key("eval.data").value, ValueType::Table(_)));
        assert!(key("data.valid").nullable && !key("data.valid").required);
        assert!(key("data.train").required && key("prune.method").required);
        assert!(key("prune.method").optional_section && !key("adapter.rank").optional_section);
        // Defaults a saved profile leaves out are still known.
        assert_eq!(
            key("adapter.flat_rho").default,
            Some(toml::Value::Float(0.05))
        );
        assert_eq!(
            key("adapter.frozen_blocks").default,
            Some(toml::Value::Integer(0))
        );
        assert!(key("adapter.init_samples").doc.contains("Calibration"));
    }

    #[test]
    fn every_key_has_a_default_or_is_required_or_may_be_none() {
        for k in profile_keys() {
            assert!(
                k.default.is_some() || k.required || k.nullable,
                "{} has no default, is not required and cannot be none",
                k.key
            );
        }
    }
}
