#!/usr/bin/env bash
# The main job on a fresh machine: set up, then pretrain a tiny BERT on the public-domain Moby-Dick
# sample shipped in samples/, and show what it learned with the fill-mask pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/lmtune pretrain configs/pretrain/quickstart.yaml --overwrite "$@"
.venv/bin/python - <<'PY'
from transformers import pipeline

fill = pipeline("fill-mask", model="runs/quickstart/final")
for text in ["call me [MASK].", "the white [MASK].", "captain [MASK] stood on the deck."]:
    print(text, "->", ", ".join(f"{r['token_str']} ({r['score']:.2f})" for r in fill(text, top_k=3)))
PY
