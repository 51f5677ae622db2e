//! Llama-family causal language models (Llama 1/2/3, Mistral, Qwen2) with an adapter slot in
//! every linear layer, loaded from Hugging Face directories.

mod config;
mod export;
mod generate;
mod inspect;
mod linear;
mod llama;
pub mod random;
mod softmax;
mod weights;

pub use config::{Architecture, Llama3Scaling, ModelConfig, RawConfig, RopeParameters};
pub use export::{export_merged, merged_sparsity, write_model_dir, LayerSparsity, SparsityReport};
pub use generate::generate_greedy;
pub use inspect::{inspect_model, ModelSummary};
pub use linear::Linear;
pub use llama::{AdapterSpec, BlockContext, CausalLm, Probes, DEFAULT_TARGETS};
pub use weights::{index_shards, parse_dtype, ModelDir, SafetensorsSource, WeightSource};
