#!/usr/bin/env python3
"""transformers' side of `lors eval` on a plain-text file: the same windows, timed.

Usage: python scripts/torch_eval_bench.py MODEL_DIR FILE [--seq-len 512 --windows 64
       --batch 8 --threads 2]. Needs torch and transformers; not part of the test suite.

Tokenises the file as lors does: a plain-text file as one document, a JSONL file as one
document per record's `text`, each with the tokenizer's own special tokens (BOS for Llama's,
none for byte-level BPE ones) and the config's EOS, concatenated; cuts it into non-overlapping windows of --seq-len tokens, scores the first --windows of them
in batches of --batch (lors eval's batch), SDPA attention, f32, no gradients. Prints one JSON
line: perplexity, predicted tokens, seconds of the scoring loop, tokens/s.

With --wikitext the file is WikiText-2 raw, read as SparseGPT and Wanda read it (`lors eval
--wikitext`): the hub split's rows (each line with its newline, blank lines empty) joined
with "\n\n", tokenised once.
"""
import argparse
import json
import math
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--wikitext", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float32, attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(a.model)
    with open(a.data, encoding="utf-8") as f:
        if a.data.endswith(".jsonl"):
            docs = [json.loads(line)["text"] for line in f if line.strip()]
        else:
            docs = [f.read()]
    eos = model.config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    ids = []
    if a.wikitext:
        rows = [line if line.strip() else "" for line in docs[0].splitlines(keepends=True)]
        ids = tok("\n\n".join(rows))["input_ids"]
    else:
        for doc in docs:
            ids += tok(doc)["input_ids"] + [eos]
    n = a.seq_len
    windows = [ids[i * n:(i + 1) * n] for i in range(min(a.windows, len(ids) // n))]
    nll, count = 0.0, 0
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(windows), a.batch):
            batch = torch.tensor(windows[b:b + a.batch])
            logits = model(batch).logits[:, :-1].float()
            nll += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                reduction="sum").item()
            count += batch[:, 1:].numel()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "tool": "transformers",
        "windows": len(windows),
        "seq_len": n,
        "perplexity": round(math.exp(nll / count), 4),
        "tokens": count,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(count / seconds, 1),
    }))


if __name__ == "__main__":
    main()
