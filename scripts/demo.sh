#!/usr/bin/env bash
# The main job on a fresh machine (about 15 minutes on 2 CPU cores):
#   set up .venv -> fetch the public-domain corpus and the tweet sentiment data -> pretrain a mini
#   ModernBERT for 5 minutes -> fine-tune it on tweets for 4 minutes -> evaluate on the held-out test split
#   -> one summary table beside the TF-IDF + logistic-regression baseline on the same split.
# Nothing is cached from an earlier run: the run dirs are replaced (--overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=.venv/bin/python
$PY scripts/fetch_data.py corpus tweets
.venv/bin/lmtune pretrain configs/pretrain/demo.yaml --overwrite
.venv/bin/lmtune finetune configs/finetune/demo-tweets.yaml --overwrite
.venv/bin/lmtune eval configs/finetune/demo-tweets.yaml --output-dir runs/demo-tweets/eval-test
$PY scripts/baseline.py data/tweets --json runs/demo-tweets/baseline.json
$PY - <<'PY'
import json
from rich.console import Console
from rich.table import Table

pre = [json.loads(l) for l in open("runs/demo-pretrain/metrics.jsonl")]
last_eval = [r for r in pre if r["type"] == "eval"][-1]
ours = json.load(open("runs/demo-tweets/eval-test/metrics.json"))
base = json.load(open("runs/demo-tweets/baseline.json"))[0]
table = Table(title="lmtune demo: tweet sentiment (3 classes), held-out test split")
for col in ("model", "test accuracy", "test macro-F1"):
    table.add_column(col)
table.add_row("TF-IDF + logistic regression", f"{base['test_accuracy']:.4f}", f"{base['test_f1_macro']:.4f}")
table.add_row("lmtune mini (5 min pretrain + 4 min finetune)", f"{ours['accuracy']:.4f}", f"{ours['f1_macro']:.4f}")
Console().print(table)
print(f"pretraining: {last_eval['step']} steps, validation perplexity {last_eval['eval_perplexity']:.1f}, "
      f"masked-token accuracy {last_eval['eval_masked_accuracy']:.3f}")
PY
