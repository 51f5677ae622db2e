#!/usr/bin/env python3
"""What a user would run instead of `lors bench train`: Hugging Face transformers + PEFT LoRA
on the same checkpoint directory, the same batch and sequence length, on the CPU.

Usage: python scripts/torch_train_bench.py --model DIR [--batch 4 --seq 256 --rank 16
       --steps 6 --warmup 2 --threads 2 --checkpointing]. Needs torch, transformers and peft
       (`pip install torch transformers peft`); not part of the test suite.

LoRA of rank 16 on all seven projections (alpha 16, no dropout), SDPA attention, AdamW,
random token ids. Prints one JSON line: median step seconds and tokens/s over the measured
steps, and the peak RSS growth over all steps (the kernel's high-water mark, reset through
/proc/self/clear_refs before the first step, minus the RSS then).
"""
import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpointing", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float32, attn_implementation="sdpa")
    config = LoraConfig(r=a.rank, lora_alpha=16, lora_dropout=0.0,
                        target_modules=PROJECTIONS, bias="none")
    model = get_peft_model(model, config)
    if a.checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (a.batch, a.seq))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss_before = status_kib("VmRSS")
    times = []
    for step in range(a.warmup + a.steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= a.warmup:
            times.append(time.perf_counter() - start)
    growth = (status_kib("VmHWM") - rss_before) / 1024
    step_s = statistics.median(times)
    print(json.dumps({
        "tool": "transformers+peft",
        "torch": torch.__version__,
        "checkpointing": a.checkpointing,
        "batch": a.batch,
        "seq": a.seq,
        "threads": torch.get_num_threads(),
        "median_step_s": round(step_s, 4),
        "tokens_per_s": round(a.batch * a.seq / step_s, 1),
        "rss_growth_mib": round(growth, 1),
    }))


if __name__ == "__main__":
    main()
