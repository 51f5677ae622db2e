//! The seven linear projections of a decoder block, named once: their Hugging Face names,
//! groups and shapes, and the module paths built from them.

use std::fmt;

use super::ModelConfig;

/// A linear projection of a Llama-family decoder block.
/// Its name is PEFT's (`q_proj`, ...), also the `adapter.target_modules` entry; listed in
/// checkpoint order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
pub enum Proj {
    #[strum(serialize = "q_proj")]
    Q,
    #[strum(serialize = "k_proj")]
    K,
    #[strum(serialize = "v_proj")]
    V,
    #[strum(serialize = "o_proj")]
    O,
    #[strum(serialize = "gate_proj")]
    Gate,
    #[strum(serialize = "up_proj")]
    Up,
    #[strum(serialize = "down_proj")]
    Down,
}

crate::named!(Proj, "adapter.target_modules");

impl Proj {
    /// The block's submodule holding it (`self_attn` or `mlp`).
    pub fn group(self) -> &'static str {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            Proj::Gate | Proj::Up | Proj::Down => "mlp",
        }
    }

    /// `(out_features, in_features)` in a model of configuration `c`.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (h, hd, i) = (c.hidden_size, c.head_dim, c.intermediate_size);
        match self {
            Proj::Q => (c.num_heads * hd, h),
            Proj::K | Proj::V => (c.num_kv_heads * hd, h),
            Proj::O => (h, c.num_heads * hd),
            Proj::Gate | Proj::Up => (i, h),
            Proj::Down => (h, i),
        }
    }

    /// Whether the checkpoint holds a bias for it (Qwen2's q/k/v).
    pub fn has_bias(self, c: &ModelConfig) -> bool {
        c.qkv_bias && matches!(self, Proj::Q | Proj::K | Proj::V)
    }

    /// Its position in `Proj::ALL`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A linear layer of a model by decoder layer and projection; displays as its Hugging Face
/// module path (`model.layers.3.self_attn.q_proj`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId {
    pub layer: usize,
    pub proj: Proj,
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "model.layers.{}.{}.{}",
            self.layer,
            self.proj.group(),
            self.proj.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_paths_follow_hugging_face() {
        for &p in Proj::ALL {
            assert_eq!(p.name().parse::<Proj>().unwrap(), p);
            assert_eq!(Proj::ALL[p.index()], p);
        }
        let id = ModuleId {
            layer: 3,
            proj: Proj::Down,
        };
        assert_eq!(id.to_string(), "model.layers.3.mlp.down_proj");
    }
}
