//! Checkpoints: the adapter in PEFT naming (see [`super::peft`]) with an adapter config, the optimiser moments, and the trainer state (step), so that a resumed
//! run continues exactly as an uninterrupted one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::boost::{self, Booster};
use super::optim::Optimizer;
use super::peft::{
    adapter_config_json, adapter_tensors, read_tensors, set_adapter_tensors, ADAPTER_FILE,
};
use super::profile::Profile;
use crate::error::{LorsError, Result};
use crate::io::{build_dir_atomic, write_atomic, write_json_atomic, write_safetensors_atomic};
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

/// Everything a checkpoint holds, taken at one step: the adapter is copied, so later updates
/// of the model do not change it (the optimiser's moments are replaced, never updated in place).
pub struct Snapshot {
    pub state: TrainerState,
    adapter: HashMap<String, Tensor>,
    optimizer: HashMap<String, Tensor>,
    /// Boosting's finished rounds, as one tensor map (empty without boosting).
    boosters: HashMap<String, Tensor>,
}

impl Snapshot {
    /// The state of `model`, `optimizer` and the finished boosting `rounds` now, as of `state`.
    pub fn capture(
        state: &TrainerState,
        model: &CausalLm,
        optimizer: &Optimizer,
        rounds: &[Booster],
    ) -> Result<Self> {
        let adapter = adapter_tensors(model)
            .into_iter()
            .map(|(name, t)| Ok((name, t.copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            state: state.clone(),
            adapter,
            optimizer: optimizer.state_tensors(),
            boosters: boost::to_tensors(rounds),
        })
    }
}

/// The files of a checkpoint; `manifest.json` lists them with sizes and checksums and is
/// written last, so a checkpoint verifies only if it was written whole.
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";
const PROFILE_FILE: &str = "profile.toml";
const MANIFEST_FILE: &str = "manifest.json";
/// Boosting's finished rounds (only with `adapter.boost_every`).
const BOOSTERS_FILE: &str = "boosters.safetensors";

/// One file of a checkpoint as its manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ManifestEntry {
    bytes: u64,
    sha256: String,
}

fn file_digest(path: &Path) -> Result<ManifestEntry> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|e| LorsError::io(path, e))?;
    let hash = sha2::Sha256::digest(&bytes);
    Ok(ManifestEntry {
        bytes: bytes.len() as u64,
        sha256: hash.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// Save `snap` as `checkpoints/step-NNNNNN` (written under a temporary name first), with the
/// run's recorded profile (`profile_toml`) so a resume can tell whether it was edited since.
pub fn save(
    checkpoints: &Path,
    snap: &Snapshot,
    profile: &Profile,
    profile_toml: &str,
) -> Result<PathBuf> {
    let dir = checkpoints.join(format!("step-{:06}", snap.state.step));
    build_dir_atomic(&dir, |tmp| {
        write_safetensors_atomic(&tmp.join(ADAPTER_FILE), &snap.adapter)?;
        write_json_atomic(
            &tmp.join("adapter_config.json"),
            &adapter_config_json(profile),
        )?;
        write_safetensors_atomic(&tmp.join(OPTIMIZER_FILE), &snap.optimizer)?;
        write_json_atomic(&tmp.join(STATE_FILE), &snap.state)?;
        write_atomic(&tmp.join(PROFILE_FILE), profile_toml.as_bytes())?;
        let mut files = vec![ADAPTER_FILE, OPTIMIZER_FILE, STATE_FILE, PROFILE_FILE];
        if !snap.boosters.is_empty() {
            write_safetensors_atomic(&tmp.join(BOOSTERS_FILE), &snap.boosters)?;
            files.push(BOOSTERS_FILE);
        }
        let manifest = files
            .into_iter()
            .map(|f| Ok((f.to_string(), file_digest(&tmp.join(f))?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        write_json_atomic(&tmp.join(MANIFEST_FILE), &manifest)
    })?;
    Ok(dir)
}

/// Check that every file the checkpoint's manifest lists is there with its size and checksum.
/// A checkpoint from before manifests (always written whole, under a temporary name) only
/// needs its files.
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    if !path.exists() {
        return match [ADAPTER_FILE, OPTIMIZER_FILE, STATE_FILE]
            .into_iter()
            .find(|f| !dir.join(f).is_file())
        {
            Some(missing) => Err(LorsError::parse(
                dir,
                format!("no {MANIFEST_FILE} and no {missing}"),
            )),
            None => Ok(()),
        };
    }
    let text = std::fs::read_to_string(&path).map_err(|e| LorsError::io(&path, e))?;
    let manifest: BTreeMap<String, ManifestEntry> =
        serde_json::from_str(&text).map_err(|e| LorsError::parse(&path, e.to_string()))?;
    for required in [ADAPTER_FILE, OPTIMIZER_FILE, STATE_FILE] {
        if !manifest.contains_key(required) {
            return Err(LorsError::parse(
                &path,
                format!("`{required}` is not listed"),
            ));
        }
    }
    for (file, expected) in &manifest {
        let got = file_digest(&dir.join(file))?;
        if got != *expected {
            return Err(LorsError::parse(
                &dir.join(file),
                format!(
                    "does not match the manifest ({} bytes, sha256 {}; expected {} bytes, {})",
                    got.bytes, got.sha256, expected.bytes, expected.sha256
                ),
            ));
        }
    }
    Ok(())
}

/// The profile recorded in a checkpoint (absent in checkpoints older than this field).
pub fn recorded_profile(dir: &Path) -> Result<Option<Profile>> {
    let path = dir.join(PROFILE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    Profile::load(&path, &[]).map(Some)
}

/// The boosting rounds a checkpoint kept (none without boosting).
pub fn read_boosters(dir: &Path) -> Result<Vec<Booster>> {
    let path = dir.join(BOOSTERS_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    boost::from_tensors(read_tensors(&path)?).map_err(|e| LorsError::parse(&path, e.to_string()))
}

/// Whether every value of `t` is finite.
/// Restore model adapter, optimiser and trainer state from a checkpoint directory, with the
/// boosting rounds it kept replayed into the base weights (`boost_every` steps each). Every
/// file is read and checked before the model's base weights change.
pub fn restore(
    dir: &Path,
    model: &mut CausalLm,
    optimizer: &mut Optimizer,
    boost_every: usize,
) -> Result<(TrainerState, Vec<Booster>)> {
    let adapter = read_tensors(&dir.join(ADAPTER_FILE))?;
    let source = dir.join(ADAPTER_FILE).display().to_string();
    set_adapter_tensors(&adapter, model, &source)?;
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| LorsError::io(&state_path, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| LorsError::parse(&state_path, e.to_string()))?;
    let opt = read_tensors(&dir.join(OPTIMIZER_FILE))?;
    let boosters = read_boosters(dir)?;
    // The optimiser restarted with each round.
    let round_start = boosters.len() * boost_every;
    optimizer.restore(&opt, state.step.saturating_sub(round_start))?;
    if !boosters.is_empty() {
        boost::replay(model, &boosters)?;
        set_adapter_tensors(&adapter, model, &source)?;
    }
    Ok((state, boosters))
}
