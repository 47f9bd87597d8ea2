#!/usr/bin/env bash
# One command on a machine with a CUDA GPU: the gpu-marked tests, then the GPU-vs-CPU speed benchmarks,
# all written to one JSON (default bench/results/gpu_check.json, with the GPU's name).
#
#   bash bench/gpu_check.sh                     # python: $PY, else $VENV/bin/python, else python3
#   PY=/path/to/python OUT_JSON=/tmp/g.json bash bench/gpu_check.sh
#
# Needs the project's dependencies importable by that python (torch with CUDA, the packages of
# requirements.txt; faiss-gpu is optional). Needs no network and no dataset (synthetic data only).
# Exit code: 0 all ran; 3 no CUDA device; 1 a test failed (the benchmarks still run and are written).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-${VENV:+$VENV/bin/python}}"
PY="${PY:-python3}"
OUT_JSON="${OUT_JSON:-$ROOT/bench/results/gpu_check.json}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"

echo "[gpu_check] python: $PY"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)'; then
  echo "[gpu_check] no CUDA device visible to torch (or torch missing): nothing to check" >&2
  exit 3
fi
"$PY" -c 'import torch; print("[gpu_check] torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(0))'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 1. device-marked tests (skip nothing silently: the summary lands in the JSON)
timeout 900 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts="-ra --strict-markers" \
  --junitxml="$TMP/gpu_tests.xml" tests/
TESTS_RC=$?
echo "[gpu_check] gpu tests exit code $TESTS_RC"

# 2. speed: PatchCore fit + inference (+ half precision), U-Net and classifier epochs, NN search; GPU then CPU
timeout 1200 "$PY" bench/gpu_speed.py --devices cuda cpu --tests-xml "$TMP/gpu_tests.xml" \
  --tests-rc "$TESTS_RC" --out "$OUT_JSON"
BENCH_RC=$?
echo "[gpu_check] speed benchmarks exit code $BENCH_RC; results in $OUT_JSON"
if [ "$TESTS_RC" -ne 0 ] || [ "$BENCH_RC" -ne 0 ]; then
  exit 1
fi
exit 0
