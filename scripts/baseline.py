"""Bag-of-words baseline: TF-IDF (word 1-2-grams) + logistic regression, on lmtune's task splits.

Reads DIR/train.jsonl, DIR/validation.jsonl and DIR/test.jsonl (`text`, `label`), picks the
regularisation strength C on validation (macro-F1), refits on train and reports test accuracy and
macro-F1. Every number lmtune reports for a task should stand beside this one, on the same split.

    .venv/bin/python scripts/baseline.py data/tweets data/bbc-news data/spam [--json results.json]
        [--predictions DIR]   # DIR/TASK.jsonl: text, gold, predicted for each test row, in order, as
                              # `lmtune eval` writes them (scripts/results.py paired compares the two)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)  # inverse regularisation strengths tried on validation


def read_split(folder: Path, name: str, text: str = "text", label: str = "label") -> tuple[list[str], list[str]]:
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} is missing: fetch the data first (scripts/fetch_data.py)")
    with open(path, encoding="utf-8") as handle:  # not splitlines(): texts may hold U+2028 and friends
        rows = [json.loads(line) for line in handle if line.strip()]
    return [str(r[text]) for r in rows], [str(r[label]) for r in rows]


def build(c: float, class_weight: str | None):
    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=200_000),
        LogisticRegression(C=c, max_iter=2000, class_weight=class_weight),
    )


def run(folder: Path, class_weight: str | None, predictions: Path | None = None) -> dict:
    start = time.perf_counter()
    x_train, y_train = read_split(folder, "train")
    x_val, y_val = read_split(folder, "validation")
    x_test, y_test = read_split(folder, "test")
    scores = {}
    for c in C_GRID:
        model = build(c, class_weight).fit(x_train, y_train)
        scores[c] = f1_score(y_val, model.predict(x_val), average="macro")
    best_c = max(scores, key=scores.get)
    model = build(best_c, class_weight).fit(x_train, y_train)
    predicted = model.predict(x_test)
    if predictions:
        predictions.mkdir(parents=True, exist_ok=True)
        with open(predictions / f"{folder.name}.jsonl", "w", encoding="utf-8") as out:
            for text, gold, guess in zip(x_test, y_test, predicted):
                out.write(json.dumps({"text": text, "gold": gold, "predicted": str(guess)}, ensure_ascii=False) + "\n")
    return {
        "task": folder.name,
        "model": "tfidf-1-2gram + logistic regression",
        "C": best_c,
        "class_weight": class_weight,
        "validation_f1_macro": scores[best_c],
        "test_accuracy": accuracy_score(y_test, predicted),
        "test_f1_macro": f1_score(y_test, predicted, average="macro"),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="task dirs holding train/validation/test.jsonl")
    parser.add_argument("--class-weight", choices=["balanced", "none"], default="balanced", help="logistic-regression class weights")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--predictions", type=Path, help="also write each task's test predictions to DIR/TASK.jsonl")
    args = parser.parse_args()
    weight = None if args.class_weight == "none" else args.class_weight
    results = [run(folder, weight, args.predictions) for folder in args.folders]
    print(f"{'task':<12} {'C':>5} {'test acc':>9} {'macro-F1':>9} {'train':>7} {'test':>6}")
    for r in results:
        print(f"{r['task']:<12} {r['C']:>5g} {r['test_accuracy']:>9.4f} {r['test_f1_macro']:>9.4f} {r['n_train']:>7} {r['n_test']:>6}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
