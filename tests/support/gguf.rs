//! Writing GGUF files the way llama.cpp's `convert_hf_to_gguf.py` lays them out (shared by
//! the GGUF tests and the fuzz seeds).

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use lors::gguf::export;

/// Write the HF model in `dir` as a GGUF file through the exporter's own pieces, with any
/// ggml type for the 2-D weights (the K-quants too, which `lors export` refuses) and the
/// given tokenizer metadata.
pub fn write_gguf(dir: &Path, out: &Path, dtype: GgmlDType, tokenizer: Vec<(String, Value)>) {
    let config = lors::model::ModelDir::open(dir).unwrap().config;
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let (q, _) = export::llama_tensors(&config, &tensors, dtype).unwrap();
    let mut meta = export::llama_metadata(&config, "test", export::GgufType::F32);
    meta.extend(tokenizer);
    export::write_gguf_file(out, &meta, &q).unwrap();
}

/// The exporter's tokenizer metadata for the model directory holding `tokenizer_json`
/// (stories260K's: the SentencePiece kind, as llama.cpp stores a llama2.c tokenizer).
pub fn spm_metadata(tokenizer_json: &Path) -> Vec<(String, Value)> {
    let dir = tokenizer_json.parent().unwrap();
    let config = lors::model::ModelDir::open(dir).unwrap().config;
    lors::gguf::vocab::tokenizer_metadata(dir, &config).unwrap()
}
