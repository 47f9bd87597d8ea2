#!/usr/bin/env bash
# Installs everything (cached venv) and runs the main job on the embedded default: `defectlab demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
exec "$VENV/bin/defectlab" demo "$@"
