//! The seven linear projections of a decoder block, named once: their Hugging Face names,
//! groups and shapes, and the module paths built from them.

use std::fmt;

use super::ModelConfig;

/// A linear projection of a Llama-family decoder block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    /// Every projection, in checkpoint order.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// PEFT's short name (`q_proj`, ...), also the `adapter.target_modules` entry.
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// The projection of a short name.
    pub fn from_name(name: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.name() == name)
    }

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

    /// Its position in [`Proj::ALL`].
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
        for p in Proj::ALL {
            assert_eq!(Proj::from_name(p.name()), Some(p));
            assert_eq!(Proj::ALL[p.index()], p);
        }
        let id = ModuleId {
            layer: 3,
            proj: Proj::Down,
        };
        assert_eq!(id.to_string(), "model.layers.3.mlp.down_proj");
    }
}
