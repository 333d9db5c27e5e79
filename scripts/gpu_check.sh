#!/usr/bin/env bash
# GPU check (at most ~5 minutes on a lent GPU machine, no network there): lmtune pretrain of the mini and
# small presets and lmtune finetune on CUDA in bf16, through the real CLI on files shipped in the
# repository, with tokens/s, samples/s and model-FLOP utilisation against a bf16 matmul peak measured in
# the same run. Usage: bash scripts/gpu_check.sh [gpu_check.py options, e.g. --steps 300]
#
# It uses the machine's own python3 (which has torch and transformers). lmtune's other dependencies that
# such a machine may lack (datasets, pydantic and what they need) can travel as wheels in .whl/:
#   bash scripts/gpu_wheels.sh        # on a machine with the package registries, before the check
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
deps_ok() {
  "$PY" - <<'PY'
import datasets, pydantic, typer, rich, yaml, sklearn, transformers
import lmtune.cli, lmtune.data, lmtune.engine, lmtune.modeling, lmtune.stages.pretrain, lmtune.stages.finetune
major = int(transformers.__version__.split(".")[0])
assert major >= 5, f"lmtune needs transformers 5, this machine has {transformers.__version__}"
print(f"datasets {datasets.__version__}, pydantic {pydantic.__version__}, transformers {transformers.__version__}")
PY
}
# the carried wheels are installed only when something is missing
if ! deps_ok 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lmtune-site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/lmtune-site"
fi
deps_ok || { echo "error: lmtune's dependencies are not all importable by $PY: bring them with bash scripts/gpu_wheels.sh (and carry .whl)" >&2; exit 2; }
exec "$PY" scripts/gpu_check.py "$@"
