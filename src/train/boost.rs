//! XGBLoRA's boosting (arXiv 2410.19694): training runs in rounds of `adapter.boost_every`
//! steps; each round's small adapter (the booster) is folded into the frozen weights through
//! the mask, `W ← M ? W + s·B·A : +0.0` (in f32 masters for lower-precision bases, so repeated
//! folds do not drift), then re-initialised with fresh optimiser state. Every zero stays
//! exact in every round. Checkpoints keep each finished round's booster, so a resume rebuilds
//! the folded weights by replaying the rounds: bit for bit the uninterrupted run's.

use std::collections::HashMap;

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::peft::{adapter_tensors, set_adapter_tensors};
use crate::error::{LorsError, Result};
use crate::model::CausalLm;

/// One finished round's booster: the adapter tensors by PEFT name.
pub type Booster = HashMap<String, Tensor>;

/// End a round at the end of step `step`: fold the current boosters into the base weights and
/// start fresh ones (seeded by the run's `seed` and the round); returns the folded booster.
pub fn end_round(model: &mut CausalLm, seed: u64, round: usize) -> Result<Booster> {
    let booster = adapter_tensors(model)
        .into_iter()
        .map(|(name, t)| Ok((name, t.copy()?)))
        .collect::<Result<Booster>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0058_4742_4c6f_5241);
    rng.set_stream(round as u64);
    for (_, layer) in model.adapted_mut() {
        layer.fold_into_base()?;
        layer.reset_adapter(&mut rng)?;
    }
    Ok(booster)
}

/// Fold `rounds` into `model`'s base weights in order, as training did (the adapters are
/// left holding the last booster; load the current adapter after this).
pub fn replay(model: &mut CausalLm, rounds: &[Booster]) -> Result<()> {
    for booster in rounds {
        set_adapter_tensors(booster, model, "boosters")?;
        for (_, layer) in model.adapted_mut() {
            layer.fold_into_base()?;
        }
    }
    Ok(())
}

/// The rounds as one tensor map (`round-NNN.<name>`), for a checkpoint file.
pub fn to_tensors(rounds: &[Booster]) -> HashMap<String, Tensor> {
    rounds
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            b.iter()
                .map(move |(n, t)| (format!("round-{i:03}.{n}"), t.clone()))
        })
        .collect()
}

/// The rounds back from [`to_tensors`]' map; an unexpected key is an error naming it.
pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Result<Vec<Booster>> {
    let mut rounds: Vec<Booster> = Vec::new();
    for (key, t) in tensors {
        let parsed = key
            .strip_prefix("round-")
            .and_then(|k| k.split_once('.'))
            .and_then(|(i, name)| Some((i.parse::<usize>().ok()?, name.to_string())));
        let Some((i, name)) = parsed else {
            return Err(LorsError::invalid(
                "boosters",
                format!("unexpected tensor `{key}`"),
            ));
        };
        if rounds.len() <= i {
            rounds.resize_with(i + 1, HashMap::new);
        }
        rounds[i].insert(name, t);
    }
    if let Some(i) = rounds.iter().position(HashMap::is_empty) {
        return Err(LorsError::invalid(
            "boosters",
            format!("round {i} is missing"),
        ));
    }
    Ok(rounds)
}
