"""Compare what `lors convert --gguf` wrote with what transformers makes of the same GGUF file
(its own GGUF reader, dequantiser and tokenizer converter: an independent implementation):
every weight, and the token ids of the first 2000 lines of a text file.

    python -m venv /tmp/pq && /tmp/pq/bin/pip install torch transformers accelerate gguf safetensors
    /tmp/pq/bin/python scripts/check_gguf.py GGUF_FILE CONVERTED_DIR [TEXT_FILE]
"""
import os
import sys

from tokenizers import Tokenizer
from transformers import AutoTokenizer

gguf, converted = sys.argv[1], sys.argv[2]
text_file = sys.argv[3] if len(sys.argv) > 3 else "../shared/data/wikitext2-test.raw"
ref = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(gguf)),
                                    gguf_file=os.path.basename(gguf))
ours = Tokenizer.from_file(os.path.join(converted, "tokenizer.json"))
lines = [l for l in open(text_file, encoding="utf-8").read().split("\n") if l.strip()][:2000]
samples = lines + [
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
    "naïve café ☃ — “quotes” 1,000,000.5",
]
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(gguf)),
                                             gguf_file=os.path.basename(gguf))
theirs = model.state_dict()
mine = load_file(os.path.join(converted, "model.safetensors"))
worst = 0.0
for name, t in mine.items():
    diff = (theirs[name].float() - t.float()).abs().max().item()
    worst = max(worst, diff)
print(f"{len(mine)} tensors, max |difference| to transformers' dequantised weights: {worst:.3g}")

bad = tokens = 0
for s in samples:
    a = ref.encode(s, add_special_tokens=True)
    b = ours.encode(s, add_special_tokens=True).ids
    tokens += len(a)
    if a != b:
        bad += 1
        if bad <= 3:
            print("differs:", repr(s[:80]), a[:20], b[:20])
print(f"{len(samples)} texts, {tokens} tokens: {len(samples) - bad} identical, {bad} differ")
sys.exit(1 if bad else 0)
