//! A Hugging Face tokenizer as GGUF metadata (`tokenizer.ggml.*`), the way llama.cpp's
//! converter writes it, for the two kinds [`super::import`] reads back:
//! - `llama` (SentencePiece style: a BPE with byte fallback): pieces by id, each piece's score
//!   the negated rank of the first merge that makes it (earlier merge, higher score, as
//!   SentencePiece scores its BPE pieces), byte pieces `<0xNN>` typed as bytes;
//! - `gpt2` (byte-level BPE): pieces, the merges as written, and the pre-tokenizer's
//!   llama.cpp name.
//!
//! Special tokens come from `tokenizer.json`'s added tokens, `tokenizer_config.json` and the
//! model's `config.json` ids.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use super::import::{gpt2_pre_tokenizer, KNOWN_PRE_TOKENIZERS};
use super::token_type;
use crate::error::{LorsError, Result};
use crate::model::ModelConfig;

/// Score of a piece no merge makes (single characters, bytes, specials): below every merge.
const UNMERGED_SCORE: f32 = -1e6;

/// What the metadata is built from: a model directory's tokenizer files and config.
struct Sources<'a> {
    /// `tokenizer.json`, where errors point.
    path: &'a Path,
    tokenizer: Json,
    /// `tokenizer_config.json`, or null when there is none.
    config: Json,
    model: &'a ModelConfig,
}

/// The `tokenizer.ggml.*` metadata (and `tokenizer.chat_template`) of the tokenizer in `dir`
/// (`tokenizer.json`, optionally `tokenizer_config.json`) for `model`, whose embedding has
/// `model.vocab_size` rows: the token list is padded to it with unused `[PADn]` tokens, as
/// llama.cpp's converter pads it.
pub fn tokenizer_metadata(dir: &Path, model: &ModelConfig) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    let read = |p: &Path| -> Result<Json> {
        let text = std::fs::read_to_string(p).map_err(|e| LorsError::io(p, e))?;
        serde_json::from_str(&text).map_err(|e| LorsError::parse(p, e.to_string()))
    };
    let config_path = dir.join("tokenizer_config.json");
    let s = Sources {
        path: &path,
        tokenizer: read(&path)?,
        config: if config_path.is_file() {
            read(&config_path)?
        } else {
            Json::Null
        },
        model,
    };
    s.metadata()
}

impl Sources<'_> {
    fn error(&self, detail: impl Into<String>) -> LorsError {
        LorsError::parse(self.path, detail)
    }

    fn metadata(&self) -> Result<Vec<(String, Value)>> {
        let bpe = &self.tokenizer["model"];
        if bpe["type"].as_str() != Some("BPE") {
            return Err(self.error(format!(
                "the GGUF export writes BPE tokenizers (SentencePiece-style or byte-level); \
                 this one's model type is {}",
                bpe["type"]
            )));
        }
        let tokens = self.tokens()?;
        let index: HashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, (t, _))| (t.as_str(), i))
            .collect();
        let merges = self.merges()?;
        let spm = bpe["byte_fallback"].as_bool() == Some(true);
        let mut meta = vec![(
            "tokenizer.ggml.model".to_string(),
            Value::String(if spm { "llama" } else { "gpt2" }.into()),
        )];
        if spm {
            meta.extend(self.spm_parts(&tokens, &merges));
        } else {
            meta.extend(self.byte_level_parts(&merges)?);
        }
        let names: Vec<&str> = tokens.iter().map(|(t, _)| t.as_str()).collect();
        meta.push(strings("tokenizer.ggml.tokens", &names));
        meta.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(tokens.iter().map(|(_, ty)| Value::I32(*ty)).collect()),
        ));
        meta.extend(self.special_ids(&index));
        if let Some(template) = self.config["chat_template"].as_str() {
            meta.push((
                "tokenizer.chat_template".into(),
                Value::String(template.into()),
            ));
        }
        Ok(meta)
    }

    /// Every token by id with its GGUF type, padded to the embedding's rows.
    fn tokens(&self) -> Result<Vec<(String, i32)>> {
        let bpe = &self.tokenizer["model"];
        let vocab = bpe["vocab"]
            .as_object()
            .ok_or_else(|| self.error("`model.vocab` is not an object"))?;
        let unk = bpe["unk_token"].as_str();
        let mut tokens: Vec<Option<(String, i32)>> = vec![None; self.model.vocab_size];
        let mut put = |id: u64, piece: &str, ty: i32| -> Result<()> {
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| tokens.get_mut(i))
                .ok_or_else(|| {
                    self.error(format!(
                        "token `{piece}` has id {id}, beyond the model's {} embeddings",
                        self.model.vocab_size
                    ))
                })?;
            *slot = Some((piece.to_string(), ty));
            Ok(())
        };
        for (piece, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| self.error(format!("token `{piece}` has no integer id")))?;
            let ty = match piece.as_str() {
                p if Some(p) == unk => token_type::UNKNOWN,
                p if is_byte_piece(p) => token_type::BYTE,
                _ => token_type::NORMAL,
            };
            put(id, piece, ty)?;
        }
        for added in self.tokenizer["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(piece)) = (added["id"].as_u64(), added["content"].as_str()) else {
                return Err(self.error(format!("added token {added} lacks an id or content")));
            };
            let ty = match (Some(piece) == unk, added["special"].as_bool()) {
                (true, _) => token_type::UNKNOWN,
                (false, Some(true)) => token_type::CONTROL,
                _ => token_type::USER_DEFINED,
            };
            put(id, piece, ty)?;
        }
        Ok(tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), token_type::UNUSED)))
            .collect())
    }

    /// The merges as pairs, from either spelling (`["a", "b"]` or `"a b"`).
    fn merges(&self) -> Result<Vec<(String, String)>> {
        let Some(list) = self.tokenizer["model"]["merges"].as_array() else {
            return Ok(Vec::new());
        };
        list.iter()
            .map(|m| {
                let pair = match m {
                    Json::String(s) => s.split_once(' ').map(|(a, b)| (a.into(), b.into())),
                    Json::Array(p) => match (p.first(), p.get(1), p.len()) {
                        (Some(Json::String(a)), Some(Json::String(b)), 2) => {
                            Some((a.clone(), b.clone()))
                        }
                        _ => None,
                    },
                    _ => None,
                };
                pair.ok_or_else(|| self.error(format!("merge {m} is not two tokens")))
            })
            .collect()
    }

    /// Scores (the negated rank of the first merge making each piece) and the space prefix.
    fn spm_parts(
        &self,
        tokens: &[(String, i32)],
        merges: &[(String, String)],
    ) -> Vec<(String, Value)> {
        let mut rank: HashMap<String, usize> = HashMap::new();
        for (i, (a, b)) in merges.iter().enumerate() {
            rank.entry(format!("{a}{b}")).or_insert(i);
        }
        let scores = tokens
            .iter()
            .map(|(t, _)| Value::F32(rank.get(t).map_or(UNMERGED_SCORE, |&r| -(r as f32))))
            .collect();
        let normalizer = self.tokenizer["normalizer"].to_string();
        let prefix = normalizer.contains(r#""type":"Prepend""#)
            || self.tokenizer["pre_tokenizer"]["prepend_scheme"].as_str() == Some("always");
        vec![
            ("tokenizer.ggml.pre".into(), Value::String("default".into())),
            ("tokenizer.ggml.scores".into(), Value::Array(scores)),
            (
                "tokenizer.ggml.add_space_prefix".into(),
                Value::Bool(prefix),
            ),
        ]
    }

    /// The merges and the pre-tokenizer's llama.cpp name: one whose pre-tokenizer is exactly
    /// this one's, else an error (llama.cpp would split text differently).
    fn byte_level_parts(&self, merges: &[(String, String)]) -> Result<Vec<(String, Value)>> {
        let ours = &self.tokenizer["pre_tokenizer"];
        let pre = KNOWN_PRE_TOKENIZERS
            .into_iter()
            .find(|name| &gpt2_pre_tokenizer(name) == ours)
            .ok_or_else(|| {
                self.error(format!(
                    "the byte-level pre-tokenizer {ours} is not one llama.cpp names here ({}); \
                     llama.cpp would split text differently",
                    KNOWN_PRE_TOKENIZERS.join(", ")
                ))
            })?;
        let merges: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
        let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
        Ok(vec![
            ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
            strings("tokenizer.ggml.merges", &merges),
        ])
    }

    /// BOS, EOS, unknown and padding ids, and whether BOS/EOS are added.
    fn special_ids(&self, index: &HashMap<&str, usize>) -> Vec<(String, Value)> {
        let named = |key: &str| {
            let v = &self.config[key];
            let piece = v.as_str().or_else(|| v["content"].as_str())?;
            index.get(piece).map(|&i| i as u32)
        };
        let bos = self.model.bos_token_id.or_else(|| named("bos_token"));
        let eos = self
            .model
            .eos_token_ids
            .first()
            .copied()
            .or_else(|| named("eos_token"));
        let unk = self.tokenizer["model"]["unk_token"]
            .as_str()
            .and_then(|p| index.get(p))
            .map(|&i| i as u32);
        let mut meta = Vec::new();
        for (key, id) in [
            ("bos_token_id", bos),
            ("eos_token_id", eos),
            ("unknown_token_id", unk),
            ("padding_token_id", named("pad_token")),
        ] {
            if let Some(id) = id {
                meta.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
            }
        }
        let add_bos = self.config["add_bos_token"]
            .as_bool()
            .unwrap_or_else(|| self.template_starts_with_bos(bos));
        let add_eos = self.config["add_eos_token"].as_bool().unwrap_or(false);
        meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
        meta.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
        meta
    }

    /// Whether the post-processor's single-sequence template starts with the BOS token.
    fn template_starts_with_bos(&self, bos: Option<u32>) -> bool {
        let first = &self.tokenizer["post_processor"]["single"][0]["SpecialToken"]["id"];
        let special = &self.tokenizer["post_processor"]["special_tokens"];
        match (first.as_str(), bos) {
            (Some(name), Some(bos)) => special[name]["ids"][0].as_u64() == Some(u64::from(bos)),
            _ => false,
        }
    }
}

/// `<0xNN>`, a byte-fallback piece.
fn is_byte_piece(p: &str) -> bool {
    p.len() == 6 && p.starts_with("<0x") && p.ends_with('>')
}

fn strings(key: &str, items: &[&str]) -> (String, Value) {
    (
        key.to_string(),
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect()),
    )
}
