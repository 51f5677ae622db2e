#!/usr/bin/env python3
"""Write small local files in the format of each zero-shot task's hub dataset (the columns
lm-evaluation-harness reads), built from the TinyStories sentences in ../shared, for the
lm-eval agreement check (scripts/check_lm_eval.sh).

Usage: make_task_files.py OUT_DIR [ITEMS_PER_TASK]

The items are nonsense as questions; what matters is that both scorers see the same text in
each task's exact format, including the corner cases the prompt code handles: HellaSwag's
`[title]`/`[step]` artefacts and lower-cased second context half, ARC's numeric choice labels,
OpenBookQA's padded answer key, non-ASCII choices (acc_norm counts characters), and
contexts with trailing spaces (moved to the continuation).
"""
import json
import random
import re
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def sentences():
    out = []
    with open(SHARED / "tinystories-synth-valid.jsonl") as f:
        for line in f:
            text = json.loads(line)["text"]
            for s in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")):
                s = s.strip()
                if 4 <= len(s.split()) <= 30:
                    out.append(s)
    return out


def write(out_dir, task, rows):
    with open(out_dir / f"{task}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


ACCENTED = ["café", "naïve", "jalapeño", "crème brûlée", "piñata", "über"]


def main():
    out_dir = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2501)
    pool = sentences()
    pick = lambda k=1: rng.sample(pool, k)  # noqa: E731

    def maybe_accent(s):
        return s if rng.random() < 0.8 else f"{s[:-1]} {rng.choice(ACCENTED)}."

    write(out_dir, "boolq", [
        {"question": pick()[0].rstrip(".!?").lower(), "passage": " ".join(pick(3)),
         "idx": i, "label": rng.randint(0, 1)}
        for i in range(n)])
    write(out_dir, "rte", [
        {"sentence1": " ".join(pick(2)), "sentence2": pick()[0], "idx": i,
         "label": rng.randint(0, 1)}
        for i in range(n)])

    hellaswag = []
    for i in range(n):
        a, b = pick(2)
        words = b.split()
        cut = rng.randint(1, max(1, len(words) // 2))
        endings = [" ".join(words[cut:])] + [maybe_accent(s) for s in pick(3)]
        rng.shuffle(endings)
        gold = endings.index(" ".join(words[cut:]))
        if i % 5 == 0:  # WikiHow artefacts
            endings = [e.replace(" ", " [step] ", 1) for e in endings]
            a = a + " [title] " + " ".join(pick()[0].split()[:3])
        hellaswag.append({
            "ind": i, "activity_label": " ".join(a.split()[:2]).strip(".,"),
            "ctx_a": a, "ctx_b": " ".join(words[:cut]).upper() if i % 7 == 0
            else " ".join(words[:cut]),
            "ctx": a + " " + " ".join(words[:cut]), "endings": endings,
            "source_id": f"synth~{i}", "split": "val", "split_type": "indomain",
            "label": str(gold)})
    write(out_dir, "hellaswag", hellaswag)

    names = ["Lily", "Tom", "Sue", "Ben", "Max", "Mia", "Anna", "Sam", "Zoë", "Tim"]
    wino = []
    while len(wino) < n:
        s = pick()[0]
        present = [w for w in names if re.search(rf"\b{w}\b", s)]
        if not present:
            s = f"{rng.choice(names)} said that {s[0].lower()}{s[1:]}"
            present = [w for w in names if re.search(rf"\b{w}\b", s)]
        name = present[0]
        other = rng.choice([w for w in names if w != name])
        options = [name, other] if rng.random() < 0.5 else [other, name]
        wino.append({"sentence": re.sub(rf"\b{name}\b", "_", s, count=1),
                     "option1": options[0], "option2": options[1],
                     "answer": str(options.index(name) + 1)})
    write(out_dir, "winogrande", wino)

    def lettered(numeric):
        k = rng.choice([3, 4, 4, 5])
        texts = [maybe_accent(s) for s in pick(k)]
        labels = [str(j + 1) for j in range(k)] if numeric else "ABCDE"[:k]
        return {"text": texts, "label": list(labels)}, rng.randrange(k)

    for task in ("arc_easy", "arc_challenge"):
        rows = []
        for i in range(n):
            choices, gold = lettered(i % 6 == 0)
            rows.append({"id": f"{task}-{i}", "question": pick()[0],
                         "choices": choices, "answerKey": choices["label"][gold]})
        write(out_dir, task, rows)

    rows = []
    for i in range(n):
        choices, gold = lettered(False)
        stem = pick()[0] + (" " if i % 4 == 0 else "")
        key = choices["label"][gold]
        rows.append({"id": f"obqa-{i}", "question_stem": stem, "choices": choices,
                     "answerKey": (" " + key) if i % 9 == 0 else key})
    write(out_dir, "openbookqa", rows)


if __name__ == "__main__":
    main()
