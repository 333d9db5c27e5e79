"""What `lmtune predict --precision int8` costs in accuracy and buys in speed, on real labelled data.

For each fine-tuned classifier given, classifies the labelled file's texts in fp32 and in int8
(`stages.predict.quantize_int8`), the two alternating for `--repeats` rounds, and prints a table:
accuracy and macro-F1 against the file's labels (scikit-learn), how many labels int8 changes, and
the median texts/s of each. Same calls as `lmtune predict`, the model already loaded.

    .venv/bin/python scripts/int8_check.py runs/results/tweets-2k/lmtune-60/seed-*/best \\
        --data data/tweets-2k/test.jsonl --json runs/int8-tweets.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from sklearn.metrics import accuracy_score, f1_score

from lmtune.stages.predict import load_classifier, predict, quantize_int8


def check(checkpoint: str, texts: list[str], gold: list[str], args: argparse.Namespace) -> dict:
    cpu = torch.device("cpu")
    model, tokenizer, info = load_classifier(checkpoint, cpu)
    models = {"fp32": model, "int8": quantize_int8(model)}
    labels: dict[str, list[str]] = {}
    speed: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.repeats + 1):  # round 0 is untimed (first-call costs)
        for name in list(models) if r % 2 == 0 else list(models)[::-1]:
            t0 = time.perf_counter()
            out = predict(models[name], tokenizer, info, texts, batch_size=args.batch_size, device=cpu)
            if r:
                speed[name].append(len(texts) / (time.perf_counter() - t0))
            labels[name] = [o["label"] for o in out]
    row = {"checkpoint": checkpoint, "texts": len(texts)}
    for name in models:
        row[name] = {
            "accuracy": accuracy_score(gold, labels[name]),
            "f1_macro": f1_score(gold, labels[name], average="macro"),
            "texts_per_s": statistics.median(speed[name]),
            "texts_per_s_repeats": speed[name],
        }
    row["labels_changed"] = sum(a != b for a, b in zip(labels["fp32"], labels["int8"]))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="fine-tuned classifier dirs (a run's best/ or final/)")
    p.add_argument("--data", required=True, help="a labelled .jsonl (text, label)")
    p.add_argument("--batch-size", type=int, default=64, help="as lmtune predict's default (64)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of (fp32, int8), alternating (default 3)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    rows_in = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    texts, gold = [r["text"] for r in rows_in], [str(r["label"]) for r in rows_in]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(texts)} texts from {args.data}", flush=True)
    print("| checkpoint | fp32 accuracy | int8 accuracy | fp32 macro-F1 | int8 macro-F1 | labels changed | fp32 texts/s | int8 texts/s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for checkpoint in args.checkpoints:
        r = check(checkpoint, texts, gold, args)
        rows.append(r)
        a, b = r["fp32"], r["int8"]
        print(
            f"| {checkpoint} | {a['accuracy']:.4f} | {b['accuracy']:.4f} | {a['f1_macro']:.4f} | {b['f1_macro']:.4f} "
            f"| {r['labels_changed']} of {r['texts']} | {a['texts_per_s']:,.0f} | {b['texts_per_s']:,.0f} "
            f"| {b['texts_per_s'] / a['texts_per_s']:.2f}x |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
