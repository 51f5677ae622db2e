//! Llama-family causal language models (Llama 1/2/3, Mistral, Qwen2) with an adapter slot in
//! every linear layer, loaded from Hugging Face directories.

mod attention;
mod attention_cpu;
mod block;
mod config;
mod export;
mod fused;
mod generate;
mod grads;
mod head;
mod inspect;
mod linear;
mod llama;
mod ops;
mod proj;
pub mod random;
mod reference;
mod softmax;
#[cfg(test)]
pub(crate) mod testing;
mod weights;

pub use block::Recompute;
pub use config::{Architecture, Llama3Scaling, ModelConfig, RawConfig, RopeParameters};
pub use export::{
    export_merged, merged_sparsity, merged_tensors, write_model_dir, LayerSparsity, SparsityReport,
};
pub use generate::generate_greedy;
pub use grads::Gradients;
pub use inspect::{inspect_model, ModelSummary};
pub use linear::Linear;
pub use llama::{AdapterSpec, CausalLm, DecodeCache};
pub(crate) use ops::accumulation;
pub use proj::{ModuleId, Proj};
pub use weights::{ModelDir, SafetensorsSource, WeightSource};
