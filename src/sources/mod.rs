//! Where models and data come from besides local paths: the Hugging Face Hub ([`hub`]) and
//! GGUF files ([`gguf`]).

pub mod hub;

/// GGUF import (it lives in [`crate::gguf`], beside the export).
pub use crate::gguf::import as gguf;
pub use crate::gguf::import::{convert_gguf, read_gguf, resolve_gguf_path, GgufModel, GgufReport};
pub use hub::{
    fetch_file, fetch_model, resolve_data_path, resolve_model_path, HubRef, HubSettings,
};
