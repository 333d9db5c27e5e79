#!/usr/bin/env bash
# GPU check: set up, then pretrain the mini preset on CUDA in bf16 for a fixed number of steps on the
# bundled Moby-Dick sample and report tokens/s. Usage: bash scripts/gpu_check.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${1:-300}"
bash scripts/setup.sh >/dev/null
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
OUT="${OUT:-/tmp}/gpu-check"
.venv/bin/lmtune pretrain configs/pretrain/quickstart.yaml --device cuda --precision bf16 --overwrite \
  --output-dir "$OUT/pretrain-mini" --set model.preset=mini --set train.max_minutes=null \
  --set train.max_steps="$STEPS" --set train.batch_size=64 --set train.eval_every=100 --set train.log_every=50
.venv/bin/python - "$OUT/pretrain-mini/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rates = [r["tokens_per_s"] for r in rows if r["type"] == "train"][1:]  # the first window includes start-up
print(f"pretrain mini on cuda bf16: median {statistics.median(rates):,.0f} tokens/s over {len(rates)} log windows")
PY
