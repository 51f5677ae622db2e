//! Where models and data come from besides local paths: the Hugging Face Hub ([`hub`]) and
//! GGUF files ([`gguf`]).

pub mod gguf;
pub mod hub;

pub use gguf::{convert_gguf, read_gguf, resolve_gguf_path, GgufModel, GgufReport};
pub use hub::{
    fetch_file, fetch_model, resolve_data_path, resolve_model_path, HubRef, HubSettings,
};
