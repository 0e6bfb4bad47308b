#!/usr/bin/env bash
# The GPU tier in one command, on a machine with an NVIDIA GPU:
#   tests/gpu/run_gpu_tier.sh
# A venv with vLLM and the project ($VENV, default .venv, created if missing; installs
# only when something is missing, so a machine without network access runs it with a
# venv prepared beforehand), the zoo model the tier serves, then tests/gpu, stopped
# after $TIER_TIMEOUT_S seconds (default 600).
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${VENV:-.venv}"
TIER_TIMEOUT_S="${TIER_TIMEOUT_S:-600}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"

if ! "$PY" -c "import vllm, openai, peft, pytest_timeout, modelfleet.zoo" 2>/dev/null; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -e '.[dev,gpu]'
fi
"$PY" -c "from modelfleet.zoo.cache import ensure_model; print(ensure_model('llama-arith'))"
exec timeout --kill-after=30 "$TIER_TIMEOUT_S" "$PY" -m pytest tests/gpu -x -q -rs
