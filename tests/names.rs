//! Every enum that profiles, flags and files spell has one name per variant: its name,
//! `Display`, `FromStr` and serde (JSON and TOML) agree, for every variant.

use std::fmt::Debug;
use std::str::FromStr;

use lors::adapters::{Init, Method};
use lors::device::{ComputeDtype, DeviceSpec};
use lors::eval::Task;
use lors::model::{Proj, Recompute};
use lors::prune::PruneMethod;
use lors::sparsity::Layout;
use lors::train::optim::OptimizerName;
use lors::train::optim::Schedule;
use lors::train::{EvalStage, RunState};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `value` written and read back through `Display`, `FromStr`, JSON and a TOML field.
fn round_trip<T>(value: T, name: &str)
where
    T: Copy + PartialEq + Debug + std::fmt::Display + FromStr + Serialize + DeserializeOwned,
    <T as FromStr>::Err: Debug,
{
    assert_eq!(value.to_string(), name);
    assert_eq!(name.parse::<T>().unwrap(), value, "{name}");
    assert_eq!(serde_json::to_value(value).unwrap(), name);
    assert_eq!(serde_json::from_value::<T>(name.into()).unwrap(), value);
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Field<T> {
        v: T,
    }
    let text = toml::to_string(&Field { v: value }).unwrap();
    assert_eq!(text.trim(), format!("v = \"{name}\""));
    assert_eq!(toml::from_str::<Field<T>>(&text).unwrap().v, value);
}

macro_rules! all_round_trip {
    ($($t:ty),*) => {$(
        assert!(!<$t>::ALL.is_empty());
        for &v in <$t>::ALL {
            round_trip(v, v.name());
        }
        let bad = "no-such-name".parse::<$t>().unwrap_err().to_string();
        assert!(bad.contains(&<$t>::choices()), "{bad}");
    )*};
}

#[test]
fn every_named_enum_round_trips() {
    all_round_trip!(
        Method,
        Init,
        Recompute,
        Proj,
        PruneMethod,
        OptimizerName,
        Schedule,
        Task,
        RunState,
        EvalStage
    );
}

#[test]
fn names_are_the_published_spellings() {
    // The names PEFT, lm-eval and our earlier profiles and run directories use.
    let names = |all: Vec<&'static str>| all.join(" ");
    assert_eq!(
        names(Method::ALL.iter().map(|m| m.name()).collect()),
        "lors lors-exact sqft spp lora"
    );
    assert_eq!(
        names(Proj::ALL.iter().map(|p| p.name()).collect()),
        "q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"
    );
    assert_eq!(
        names(Task::ALL.iter().map(|t| t.name()).collect()),
        "boolq rte hellaswag winogrande arc_easy arc_challenge openbookqa"
    );
    assert_eq!(PruneMethod::SparseGpt.name(), "sparsegpt");
    assert_eq!(OptimizerName::LoraRite.name(), "lora-rite");
    assert_eq!(Init::Olora.name(), "olora");
    assert_eq!(
        lors::gguf::export::GgufType::ALL
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>(),
        ["f32", "f16", "bf16", "q8_0", "q4_0"]
    );
}

#[test]
fn text_types_round_trip() {
    round_trip(DeviceSpec::Cpu, "cpu");
    round_trip(DeviceSpec::Cuda(3), "cuda:3");
    for d in ["f32", "f16", "bf16", "f64"] {
        round_trip(d.parse::<ComputeDtype>().unwrap(), d);
    }
    round_trip(Layout::Unstructured, "unstructured");
    round_trip(Layout::NofM { n: 2, m: 4 }, "2:4");
}
