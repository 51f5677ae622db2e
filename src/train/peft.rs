//! The adapter as PEFT names and stores it: `base_model.model.<module>.lora_A.weight`
//! tensors in `adapter_model.safetensors` beside an `adapter_config.json`, read into and out
//! of a model's adapted layers (checkpoints, `init_from`, SoRA's folded export, boosting).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::profile::Profile;
use crate::error::{LorsError, Result};
use crate::io::{build_dir_atomic, write_json_atomic, write_safetensors_atomic};
use crate::model::CausalLm;

/// The adapter file of a checkpoint or an export.
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";

/// PEFT name of an adapter tensor.
pub fn peft_name(module: &impl std::fmt::Display, part: &str) -> String {
    format!("base_model.model.{module}.{part}.weight")
}

/// The adapter tensors of `model` under PEFT names.
pub fn adapter_tensors(model: &CausalLm) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (module, layer) in model.adapted() {
        for (part, var) in layer.trainable().into_iter().chain(gate_of(layer)) {
            out.insert(peft_name(&module, part), var.as_tensor().clone());
        }
    }
    out
}

/// The part name of SoRA's gate in checkpoints (`…lora_gate.weight`).
pub const GATE_PART: &str = "lora_gate";

fn gate_of(layer: &crate::adapters::AdaptedLinear) -> Option<(&'static str, &candle_core::Var)> {
    layer.gate().map(|g| (GATE_PART, g))
}

/// PEFT-style `adapter_config.json`, with the LoRS-specific fields under `lors`.
pub fn adapter_config_json(profile: &Profile) -> serde_json::Value {
    let a = &profile.adapter;
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": profile.model.path,
        "r": a.rank,
        "lora_alpha": a.alpha,
        "use_rslora": a.rslora,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "target_modules": a.target_modules,
        "lors": {
            "method": a.method,
            "scaling": a.adapter_config().scale(),
            "init": a.init,
            "mask_source": "nonzero",
        },
    })
}

/// Write `model`'s adapter as PEFT loads it into `dir`: SoRA's gates folded into `B`, the
/// components they zeroed dropped, and each lowered layer's rank in `rank_pattern` (its `B`
/// rescaled to PEFT's scale at that rank, so the update is the trained one).
pub fn export_folded_adapter(model: &CausalLm, profile: &Profile, dir: &Path) -> Result<()> {
    let mut tensors = HashMap::new();
    let mut rank_pattern = serde_json::Map::new();
    for (module, layer) in model.adapted() {
        let (a, b) = layer.folded_pair()?;
        let rank = a.dim(0)?;
        if rank != profile.adapter.rank {
            rank_pattern.insert(module.to_string(), rank.into());
        }
        tensors.insert(peft_name(&module, "lora_A"), a);
        tensors.insert(peft_name(&module, "lora_B"), b);
    }
    let mut config = adapter_config_json(profile);
    config["rank_pattern"] = rank_pattern.into();
    build_dir_atomic(dir, |tmp| {
        write_safetensors_atomic(&tmp.join(ADAPTER_FILE), &tensors)?;
        write_json_atomic(&tmp.join("adapter_config.json"), &config)
    })
}

/// Load adapter tensors (PEFT names) into `model`; every adapted layer must be present.
pub fn load_adapter(path: &Path, model: &CausalLm) -> Result<()> {
    let tensors = read_tensors(path)?;
    set_adapter_tensors(&tensors, model, &path.display().to_string())
}

/// Read a safetensors file onto the CPU.
pub(crate) fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| LorsError::parse(path, format!("cannot read: {e}")))
}

/// Set every adapted layer of `model` from `tensors` (PEFT names), which `source` names in
/// errors; each tensor must be there and finite.
pub fn set_adapter_tensors(
    tensors: &HashMap<String, Tensor>,
    model: &CausalLm,
    source: &str,
) -> Result<()> {
    let path = Path::new(source);
    for (module, layer) in model.adapted() {
        let get = |part: &str| {
            let name = peft_name(&module, part);
            let t = tensors
                .get(&name)
                .ok_or_else(|| LorsError::parse(path, format!("tensor `{name}` is missing")))?;
            if !all_finite(t)? {
                return Err(LorsError::parse(
                    path,
                    format!("tensor `{name}` holds NaN or infinite values (a diverged run?)"),
                ));
            }
            Ok(t)
        };
        let (a, b) = (get("lora_A")?, get("lora_B")?);
        let gate = layer.gate().map(|_| get(GATE_PART)).transpose()?;
        layer
            .set_adapter(a, b)
            .and_then(|()| gate.map_or(Ok(()), |g| layer.set_gate(g)))
            .map_err(|e| LorsError::parse(path, format!("{module}: {e}")))?;
    }
    Ok(())
}

fn all_finite(t: &Tensor) -> Result<bool> {
    let sum = t.to_dtype(candle_core::DType::F64)?.abs()?.sum_all()?;
    Ok(sum.to_scalar::<f64>()?.is_finite())
}
