//! The names of the enums that profiles, flags and files spell, derived once from the
//! variants by strum's `IntoStaticStr`; [`named!`](crate::named) makes `Display`, serde and
//! `FromStr` read and write that name (`tests/names.rs` holds each enum to it).

use strum::VariantArray;

use crate::error::LorsError;

/// The bounds strum's derives give an enum named this way.
pub trait Named: Copy + PartialEq + Into<&'static str> + VariantArray + 'static {}

impl<T: Copy + PartialEq + Into<&'static str> + VariantArray + 'static> Named for T {}

/// Every name of `T`, for messages: `a, b or c`.
pub fn choices<T: Named>() -> String {
    let names: Vec<&str> = T::VARIANTS.iter().map(|&v| v.into()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// Why a value is invalid, without the field a [`LorsError::InvalidValue`] names (where the
/// caller names it already).
pub fn reason(e: LorsError) -> String {
    match e {
        LorsError::InvalidValue { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The variant named `s`, or why not (the choices).
pub fn from_name<T: Named>(s: &str) -> std::result::Result<T, String> {
    T::VARIANTS
        .iter()
        .copied()
        .find(|&v| v.into() == s)
        .ok_or_else(|| format!("`{s}` is not {}", choices::<T>()))
}

/// `Serialize` as `Display` and `Deserialize` through `FromStr` (its reason as the message:
/// the deserializer names the key), for types that profiles and files spell as one string;
/// their schema is a string, one of `choices` when given (a `Vec<String>`).
#[macro_export]
macro_rules! serde_as_text {
    (@serialize $t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
    (@schema $t:ty, $choices:expr) => {
        impl schemars::JsonSchema for $t {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let choices: Vec<String> = $choices;
                if choices.is_empty() {
                    schemars::json_schema!({ "type": "string" })
                } else {
                    schemars::json_schema!({ "type": "string", "enum": choices })
                }
            }
        }
    };
    ($t:ty) => {
        $crate::serde_as_text!($t, Vec::new());
    };
    ($t:ty, $choices:expr) => {
        $crate::serde_as_text!(@serialize $t);
        $crate::serde_as_text!(@schema $t, $choices);
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse()
                    .map_err(|e| serde::de::Error::custom($crate::names::reason(e)))
            }
        }
    };
}

/// `ALL`, `name()`, `choices()` and `Display` from the enum's strum names; with the key
/// errors should name, also `FromStr` and serde through them.
#[macro_export]
macro_rules! named {
    (@names $t:ty) => {
        impl $t {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$t] = <$t as strum::VariantArray>::VARIANTS;

            /// The name profiles, flags, files and reports use.
            pub fn name(self) -> &'static str {
                self.into()
            }

            /// Every name, for messages: `a, b or c`.
            pub fn choices() -> String {
                $crate::names::choices::<$t>()
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
    ($t:ty, $key:literal) => {
        $crate::named!(@names $t);
        impl std::str::FromStr for $t {
            type Err = $crate::error::LorsError;
            fn from_str(s: &str) -> $crate::error::Result<Self> {
                $crate::names::from_name(s)
                    .map_err(|reason| $crate::error::LorsError::invalid($key, reason))
            }
        }
        $crate::serde_as_text!(
            $t,
            <$t>::ALL.iter().map(|v| v.name().to_string()).collect()
        );
    };
}
