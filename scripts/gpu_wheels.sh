#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels of lmtune's dependencies that a GPU machine's image
# (Python 3.12 with torch, transformers, rich, typer, pyyaml, scikit-learn, pyarrow, pandas, xxhash,
# fsspec, huggingface-hub) lacks, so that scripts/gpu_check.sh can install them there with no network.
# Run it where pip reaches the package index; the run on the GPU machine must carry .whl/. If that
# machine's pyarrow, fsspec or typing-extensions are too old for these versions, the check's import
# test says so: add those wheels here too.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${GPU_PYTHON_VERSION:-3.12}"
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for spec in datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic_core==2.50.5 \
            annotated-types==0.7.0 typing-inspection==0.4.5; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d .whl "$spec"
done
ls -la .whl
