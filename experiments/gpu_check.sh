#!/usr/bin/env bash
# The GPU check on a bare machine (jax with CUDA, flax, optax, torch, torchvision, timm; no TensorFlow,
# no network needed): experiments/gpu_check.py with the project on PYTHONPATH, pytest installed if it
# is missing and pip can get it, the whole run cut at 8.5 minutes.
#
#     experiments/gpu_check.sh OUT_DIR [gpu_check.py options, e.g. --tiny or --steps bench,profile]
#
# Writes OUT_DIR/gpu_check.log and OUT_DIR/gpu_check.json (and OUT_DIR/profile/, the trace).
set -u
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [gpu_check.py options]" >&2
  exit 2
fi
out=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"

# The project itself is pure Python: on the path, without installing its data dependencies
# (tensorflow, tensorflow-datasets, ml-collections), which the checks never import.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

if ! "$python" -c "import pytest" 2>/dev/null; then
  echo "pytest is missing; trying pip install pytest (60 s at most)" | tee -a "$out/gpu_check.log"
  timeout 60 "$python" -m pip install --quiet --disable-pip-version-check pytest \
      >>"$out/gpu_check.log" 2>&1 \
    || echo "pytest could not be installed: the tests part will be skipped" | tee -a "$out/gpu_check.log"
fi

cd "$root" || exit 1
# 8.5 minutes in all; each part also keeps to its own budget, and the JSON is rewritten after each
# measurement, so a run cut here keeps what it had.
timeout --kill-after=20 510 "$python" -u experiments/gpu_check.py "$out" "$@"
status=$?
if [ $status -eq 124 ] || [ $status -eq 137 ]; then
  echo "gpu_check.py cut at 8.5 minutes (exit $status); $out/gpu_check.json has what it measured" \
    | tee -a "$out/gpu_check.log"
fi
exit $status
