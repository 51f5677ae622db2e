//! Tokenising records.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::Record;
use crate::error::{LorsError, Result};

/// A Hugging Face `tokenizer.json` with the model's special tokens.
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pub eos_id: Option<u32>,
    /// How long texts are cut into pieces (`None`: this tokenizer is not cut).
    pieces: Option<PieceRule>,
}

/// Texts longer than this are tokenised in pieces of about this size: BPE without a
/// pre-tokenizer (Llama's SentencePiece conversions) treats a whole text as one word, which
/// took 13 GB and minutes for one 50 MB record.
const PIECE_BYTES: usize = 1 << 16;

/// How a text cut at a single space between two words tokenises as the concatenation of its
/// pieces; found by probing the tokenizer (see [`PieceRule::probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PieceRule {
    /// The space at the cut goes with the next piece (byte-level BPE), or is dropped because
    /// the normaliser prepends one to every text (SentencePiece conversions).
    keep_space: bool,
    /// Special tokens the tokenizer adds before and after a text.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

/// Texts whose every single-space cut must tokenise like the whole for a rule to be used.
const PROBES: [&str; 4] = [
    "Once upon a time, there was a little girl named Lily. She loved to play.",
    "x = f(1, 2) + y[3]; print(\"done\") # 42 apples and 7.5 pears",
    "Über die Straße — naïve café, 東京 und Ωmega: ça va? Yes!",
    "Line one\nline two\ttabbed  double space end.",
];

impl PieceRule {
    /// The rule under which `inner` tokenises cut texts exactly like whole ones, if any.
    fn probe(inner: &Tokenizer) -> Option<Self> {
        let encode = |text: &str, special: bool| -> Option<Vec<u32>> {
            Some(inner.encode(text, special).ok()?.get_ids().to_vec())
        };
        let with = encode(PROBES[0], true)?;
        let without = encode(PROBES[0], false)?;
        let at = (0..=with.len().checked_sub(without.len())?)
            .find(|&i| with[i..i + without.len()] == without[..])?;
        let (prefix, suffix) = (with[..at].to_vec(), with[at + without.len()..].to_vec());
        [false, true].into_iter().find_map(|keep_space| {
            let exact = PROBES.iter().all(|text| {
                let Some(whole) = encode(text, false) else {
                    return false;
                };
                cut_points(text, 0, text.len()).all(|cut| {
                    let right = if keep_space { cut } else { cut + 1 };
                    match (encode(&text[..cut], false), encode(&text[right..], false)) {
                        (Some(a), Some(b)) => [a, b].concat() == whole,
                        _ => false,
                    }
                })
            });
            exact.then(|| Self {
                keep_space,
                prefix: prefix.clone(),
                suffix: suffix.clone(),
            })
        })
    }
}

/// Byte offsets in `text[from..to]` of single spaces between two non-whitespace characters:
/// word boundaries that every common pre-tokenisation also cuts at.
fn cut_points(text: &str, from: usize, to: usize) -> impl Iterator<Item = usize> + '_ {
    text[from..to]
        .match_indices(' ')
        .map(move |(i, _)| from + i)
        .filter(move |&i| {
            let before = text[..i].chars().next_back();
            let after = text[i + 1..].chars().next();
            [before, after]
                .iter()
                .all(|c| c.is_some_and(|c| !c.is_whitespace()))
        })
}

impl TextTokenizer {
    /// Load `tokenizer.json`; `eos_id` comes from the model config.
    pub fn from_file(path: &Path, eos_id: Option<u32>) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| LorsError::Tokenizer {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            pieces: PieceRule::probe(&inner),
            inner,
            path: path.to_path_buf(),
            eos_id,
        })
    }

    /// The `tokenizer.json` it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether texts longer than 64 KiB are tokenised in pieces (see [`Self::encode`]).
    pub fn cuts_long_texts(&self) -> bool {
        self.pieces.is_some()
    }

    fn encode_whole(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| LorsError::Tokenizer {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (BOS for Llama) when
    /// `special` is set. Long texts are tokenised in pieces cut at word boundaries, with the
    /// same result as at once (the tokenizer was probed for that when loaded).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let Some(rule) = self.pieces.as_ref().filter(|_| text.len() > PIECE_BYTES) else {
            return self.encode_whole(text, special);
        };
        let mut ids = if special {
            rule.prefix.clone()
        } else {
            Vec::new()
        };
        let mut start = 0;
        while start < text.len() {
            // Cut near PIECE_BYTES from `start`, else at the next cut point, else at the end.
            let window_end = floor_char_boundary(text, (start + PIECE_BYTES).min(text.len()));
            let cut = if window_end == text.len() {
                None
            } else {
                let half = floor_char_boundary(text, start + PIECE_BYTES / 2);
                cut_points(text, half, window_end)
                    .last()
                    .or_else(|| cut_points(text, window_end, text.len()).next())
            };
            let end = cut.unwrap_or(text.len());
            ids.extend(self.encode_whole(&text[start..end], false)?);
            start = match cut {
                Some(c) if rule.keep_space => c,
                Some(c) => c + 1,
                None => text.len(),
            };
        }
        if special {
            ids.extend(&rule.suffix);
        }
        Ok(ids)
    }

    /// Text of token ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LorsError::Tokenizer {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// The largest char boundary of `text` at or before `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// A tokenised record: ids and, per id, whether predicting it counts in the loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub loss: Vec<bool>,
}

/// The Alpaca prompt for an instruction (and optional input).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

/// Tokenise records (see [`tokenize_record`]).
pub fn tokenize_records(
    records: &[Record],
    tok: &TextTokenizer,
    train_on_prompt: bool,
) -> Result<Vec<Example>> {
    records
        .iter()
        .map(|r| tokenize_record(r, tok, train_on_prompt))
        .collect()
}

/// Tokenise a record: a document as BOS + text + EOS; an instruction as the Alpaca prompt plus
/// the response and EOS, with the prompt out of the loss unless `train_on_prompt`.
pub fn tokenize_record(r: &Record, tok: &TextTokenizer, train_on_prompt: bool) -> Result<Example> {
    let mut ex = match r {
        Record::Text(text) => {
            let ids = tok.encode(text, true)?;
            Example {
                loss: vec![true; ids.len()],
                ids,
            }
        }
        Record::Instruction {
            instruction,
            input,
            output,
        } => {
            let prompt = tok.encode(&alpaca_prompt(instruction, input), true)?;
            let response = tok.encode(output, false)?;
            let mut loss = vec![train_on_prompt; prompt.len()];
            loss.extend(std::iter::repeat_n(true, response.len()));
            Example {
                ids: [prompt, response].concat(),
                loss,
            }
        }
    };
    if let Some(eos) = tok.eos_id {
        ex.ids.push(eos);
        ex.loss.push(true);
    }
    Ok(ex)
}
