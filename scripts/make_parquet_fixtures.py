"""Write the small parquet fixtures of tests/fixtures/ with pyarrow, the writer the Hugging Face
hub's datasets use, so the reader is checked against files it did not write itself.

    python -m venv /tmp/pq && /tmp/pq/bin/pip install pyarrow
    /tmp/pq/bin/python scripts/make_parquet_fixtures.py
"""
import pyarrow as pa
import pyarrow.parquet as pq

OUT = "tests/fixtures"

# Alpaca-style records (synthetic arithmetic), zstd-compressed, two row groups.
rows = [
    {"instruction": f"Add {a} and {b}.", "input": "" if a % 2 else f"{a}+{b}", "output": str(a + b)}
    for a, b in zip(range(1, 41), range(100, 140))
]
pq.write_table(pa.Table.from_pylist(rows), f"{OUT}/alpaca_sample.parquet",
               compression="zstd", row_group_size=25)

# Documents with a `text` column and an extra integer column, snappy-compressed; one null text.
texts = [f"Story {i}: once upon a time there was a number called {i * 7}." for i in range(30)]
texts[5] = None
pq.write_table(pa.table({"text": texts, "id": list(range(30))}), f"{OUT}/text_sample.parquet",
               compression="snappy")

# A task file as the hub serves ARC: `choices` a struct of two string lists (from the bundled
# JSON Lines file, so the two readers can be compared row for row).
import json  # noqa: E402

with open("assets/tasks/arc_easy.jsonl") as f:
    arc = [json.loads(line) for line in f]
pq.write_table(pa.Table.from_pylist(arc), f"{OUT}/arc_easy_sample.parquet", compression="snappy")
