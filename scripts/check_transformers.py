#!/usr/bin/env python3
"""Independent check of a merged export with Hugging Face transformers (not part of the tests).

    python scripts/check_transformers.py MERGED_DIR BASE_DIR VALID.jsonl [--windows 16]

Loads MERGED_DIR with AutoModelForCausalLM as-is, checks that every weight that is zero in
BASE_DIR is still exactly zero (and reports the density), and prints the perplexity over the
first N non-overlapping 256-token windows of the concatenated records (BOS + text + EOS each),
to compare with `lors eval --model MERGED_DIR --data VALID.jsonl --max-windows N`.
"""
import argparse
import json
import math

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("merged")
    p.add_argument("base")
    p.add_argument("data")
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    a = p.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.merged, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(a.merged)
    base = load_file(f"{a.base}/model.safetensors")
    merged = load_file(f"{a.merged}/model.safetensors")
    kept = total = 0
    for name, w in base.items():
        m = merged[name]
        if "_proj" in name:
            assert torch.equal(m == 0, w == 0), f"zero pattern of {name} changed"
            kept += int((m != 0).sum())
            total += m.numel()
    print(f"zero patterns identical for all projections; density {kept / total:.6f}")
    ids = []
    with open(a.data) as f:
        for line in f:
            if line.strip():
                ids += tok(json.loads(line)["text"])["input_ids"] + [tok.eos_token_id]
    n = a.seq_len
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(a.windows):
            window = torch.tensor([ids[i * n:(i + 1) * n]])
            logits = model(window).logits[0, :-1]
            nll += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
            count += n - 1
    print(f"transformers perplexity over {a.windows} windows: {math.exp(nll / count):.4f}")


if __name__ == "__main__":
    main()
