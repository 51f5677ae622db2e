//! Log-likelihoods of continuations after contexts, computed as lm-evaluation-harness computes
//! them for a causal model (its `_encode_pair`, left truncation to the model's context, summed
//! log-softmax of the continuation's tokens), on the graph-free forward. Continuations of one
//! context share a single forward of it (its keys and values are cached and broadcast).

use candle_core::{DType, Device, Tensor, D};

use crate::data::TextTokenizer;
use crate::error::{LorsError, Result};
use crate::model::CausalLm;

/// A context and a continuation as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Tokenise a `(context, continuation)` pair as lm-evaluation-harness does: trailing spaces
/// of the context move to the continuation, the context is encoded alone and the
/// continuation is what encoding both adds after it (special tokens as the tokenizer adds
/// them by default). An empty context becomes `prefix_token` (the BOS, else EOS, token).
pub fn encode_request(
    tok: &TextTokenizer,
    prefix_token: u32,
    context: &str,
    continuation: &str,
) -> Result<Request> {
    if context.is_empty() {
        let cont = tok.encode(continuation, false)?;
        return Ok(match cont.first() {
            Some(&first) if first == prefix_token => Request {
                context: vec![first],
                continuation: cont[1..].to_vec(),
            },
            _ => Request {
                context: vec![prefix_token],
                continuation: cont,
            },
        });
    }
    let kept = context.trim_end_matches(super::tasks::py_space);
    let continuation = format!("{}{continuation}", &context[kept.len()..]);
    let whole = tok.encode(&format!("{kept}{continuation}"), true)?;
    let context = tok.encode(kept, true)?;
    let continuation = whole.get(context.len()..).unwrap_or_default().to_vec();
    Ok(Request {
        context,
        continuation,
    })
}

/// Scores requests on one model.
pub struct Scorer<'a> {
    model: &'a CausalLm,
    /// The longest input the model takes (its `max_position_embeddings`).
    max_len: usize,
}

/// Requests sharing the same (truncated) context: the context, and each request's index and
/// continuation.
struct Group {
    prefix: Vec<u32>,
    members: Vec<(usize, Vec<u32>)>,
}

impl<'a> Scorer<'a> {
    pub fn new(model: &'a CausalLm) -> Self {
        Self {
            model,
            max_len: model.config().max_position_embeddings,
        }
    }

    /// The summed log-probability of each request's continuation.
    pub fn loglikelihoods(&self, requests: &[Request]) -> Result<Vec<f64>> {
        let mut out = vec![0.0; requests.len()];
        for group in self.groups(requests)? {
            let sums = if group.members.len() == 1 {
                vec![self.score_whole(&group.prefix, &group.members[0].1)?]
            } else {
                self.score_shared(&group.prefix, &group.members)?
            };
            for ((index, _), sum) in group.members.iter().zip(sums) {
                out[*index] = sum;
            }
        }
        Ok(out)
    }

    /// The requests grouped by context after lm-evaluation-harness's left truncation (the
    /// input is the last `max_len + 1` tokens of context and continuation, less the last).
    fn groups(&self, requests: &[Request]) -> Result<Vec<Group>> {
        let mut groups: Vec<Group> = Vec::new();
        for (index, r) in requests.iter().enumerate() {
            let m = r.continuation.len();
            if m == 0 || m > self.max_len {
                return Err(LorsError::invalid(
                    "eval",
                    format!(
                        "a continuation of {m} tokens (the model takes 1 to {})",
                        self.max_len
                    ),
                ));
            }
            let keep = (self.max_len + 1 - m).min(r.context.len());
            let prefix = &r.context[r.context.len() - keep..];
            if prefix.is_empty() {
                return Err(LorsError::invalid("eval", "an empty context"));
            }
            let member = (index, r.continuation.clone());
            match groups.iter_mut().find(|g| g.prefix == prefix) {
                Some(g) => g.members.push(member),
                None => groups.push(Group {
                    prefix: prefix.to_vec(),
                    members: vec![member],
                }),
            }
        }
        Ok(groups)
    }

    /// One sequence, scored as lm-evaluation-harness does: a forward of context and
    /// continuation less its last token.
    fn score_whole(&self, prefix: &[u32], continuation: &[u32]) -> Result<f64> {
        let m = continuation.len();
        let input: Vec<u32> = prefix
            .iter()
            .chain(&continuation[..m - 1])
            .copied()
            .collect();
        let ids = Tensor::new(input.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = self
            .model
            .forward_after(&ids, &mut self.model.decode_cache())?;
        let picked = pick(&logits.narrow(1, prefix.len() - 1, m)?, &[continuation], m)?;
        Ok(picked[0])
    }

    /// Several continuations of one context: the context's forward once (its last position
    /// predicts every continuation's first token), then every continuation less its last
    /// token in one batch (right-padded) over the context's cached keys and values.
    fn score_shared(&self, prefix: &[u32], members: &[(usize, Vec<u32>)]) -> Result<Vec<f64>> {
        let mut cache = self.model.decode_cache();
        let ids = Tensor::new(prefix, &Device::Cpu)?.unsqueeze(0)?;
        let last = self.model.forward_cached(&ids, &mut cache)?;
        let last = log_softmax(&last)?.to_vec1::<f32>()?;
        let mut sums = members
            .iter()
            .map(|(_, c)| {
                last.get(c[0] as usize)
                    .map(|&x| f64::from(x))
                    .ok_or_else(|| {
                        LorsError::invalid(
                            "eval",
                            format!("token {} is outside the vocabulary", c[0]),
                        )
                    })
            })
            .collect::<Result<Vec<f64>>>()?;
        let longest = members.iter().map(|(_, c)| c.len() - 1).max().unwrap_or(0);
        if longest == 0 {
            return Ok(sums);
        }
        let rows: Vec<u32> = members
            .iter()
            .flat_map(|(_, c)| padded(&c[..c.len() - 1], longest))
            .collect();
        let ids = Tensor::from_vec(rows, (members.len(), longest), &Device::Cpu)?;
        let logits = self.model.forward_after(&ids, &mut cache)?;
        let rests: Vec<&[u32]> = members.iter().map(|(_, c)| &c[1..]).collect();
        for (sum, rest) in sums.iter_mut().zip(pick(&logits, &rests, longest)?) {
            *sum += rest;
        }
        Ok(sums)
    }
}

/// `tokens` followed by zeros up to `len`.
fn padded(tokens: &[u32], len: usize) -> impl Iterator<Item = u32> + '_ {
    tokens.iter().copied().chain(std::iter::repeat(0)).take(len)
}

/// Log-softmax over the last dimension, in f32.
fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(
        &logits.to_dtype(DType::F32)?,
        D::Minus1,
    )?)
}

/// For each row of `logits` (rows, ≥ len positions, vocab), the summed log-probability of
/// `targets[row]` at positions `0..targets[row].len()`.
fn pick(logits: &Tensor, targets: &[&[u32]], len: usize) -> Result<Vec<f64>> {
    let logits = logits.narrow(1, 0, len)?;
    let index: Vec<u32> = targets.iter().flat_map(|t| padded(t, len)).collect();
    let index = Tensor::from_vec(index, (targets.len(), len, 1), logits.device())?;
    let picked = log_softmax(&logits)?
        .gather(&index, D::Minus1)?
        .squeeze(D::Minus1)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    Ok(picked
        .iter()
        .zip(targets)
        .map(|(row, t)| row[..t.len()].iter().map(|&x| f64::from(x)).sum())
        .collect())
}
