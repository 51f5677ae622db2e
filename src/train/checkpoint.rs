//! Checkpoints: the adapter in PEFT naming (`base_model.model.<module>.lora_A.weight`) with
//! an adapter config, the optimiser moments, and the trainer state (step), so that a resumed
//! run continues exactly as an uninterrupted one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use super::profile::Profile;
use crate::error::{LorsError, Result};
use crate::io::{build_dir_atomic, write_json_atomic, write_safetensors_atomic};
use crate::model::CausalLm;

/// `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: usize,
    pub seed: u64,
    /// Micro-batches consumed (the data position).
    pub batches_seen: usize,
    pub best_eval_loss: Option<f64>,
}

/// PEFT name of an adapter tensor.
pub fn peft_name(module: &str, part: &str) -> String {
    format!("base_model.model.{module}.{part}.weight")
}

/// The adapter tensors of `model` under PEFT names.
pub fn adapter_tensors(model: &CausalLm) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (module, layer) in model.adapted() {
        for (part, var) in layer.trainable() {
            out.insert(peft_name(&module, part), var.as_tensor().clone());
        }
    }
    out
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

/// Save a checkpoint as `checkpoints/step-NNNNNN` (written under a temporary name first).
pub fn save(
    checkpoints: &Path,
    state: &TrainerState,
    model: &CausalLm,
    optimizer: &AdamW,
    profile: &Profile,
) -> Result<PathBuf> {
    let dir = checkpoints.join(format!("step-{:06}", state.step));
    build_dir_atomic(&dir, |tmp| {
        write_safetensors_atomic(
            &tmp.join("adapter_model.safetensors"),
            &adapter_tensors(model),
        )?;
        write_json_atomic(
            &tmp.join("adapter_config.json"),
            &adapter_config_json(profile),
        )?;
        write_safetensors_atomic(
            &tmp.join("optimizer.safetensors"),
            &optimizer.state_tensors(),
        )?;
        write_json_atomic(&tmp.join("trainer_state.json"), state)
    })?;
    Ok(dir)
}

/// Load adapter tensors (PEFT names) into `model`; every adapted layer must be present.
pub fn load_adapter(path: &Path, model: &CausalLm) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| LorsError::parse(path, format!("cannot read adapter: {e}")))?;
    for (module, layer) in model.adapted() {
        let get = |part: &str| {
            let name = peft_name(&module, part);
            tensors
                .get(&name)
                .ok_or_else(|| LorsError::parse(path, format!("tensor `{name}` is missing")))
        };
        layer
            .set_adapter(get("lora_A")?, get("lora_B")?)
            .map_err(|e| LorsError::parse(path, format!("{module}: {e}")))?;
    }
    Ok(())
}

/// Restore model adapter, optimiser and trainer state from a checkpoint directory.
pub fn restore(dir: &Path, model: &CausalLm, optimizer: &mut AdamW) -> Result<TrainerState> {
    load_adapter(&dir.join("adapter_model.safetensors"), model)?;
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| LorsError::io(&state_path, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| LorsError::parse(&state_path, e.to_string()))?;
    let opt_path = dir.join("optimizer.safetensors");
    let opt = candle_core::safetensors::load(&opt_path, &Device::Cpu)
        .map_err(|e| LorsError::parse(&opt_path, e.to_string()))?;
    optimizer.restore(&opt, state.step)?;
    Ok(state)
}
