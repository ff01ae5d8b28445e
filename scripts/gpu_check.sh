#!/usr/bin/env bash
# The GPU checks in one go (what a lent GPU machine runs): tests/gpu, then the benchmark.
# Packages not on the machine arrive as parts of one archive in .whl/*/part.* (see README).
export PYTHONUNBUFFERED=1 DS_ACCELERATOR=cuda VLLM_LOGGING_LEVEL=WARNING VLLM_USE_FLASHINFER_SAMPLER=0
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT" /tmp/parts
cp .whl/*/part.* /tmp/parts/ 2>/dev/null; ls -la /tmp/parts
if [ ! -d /tmp/site/vllm ]; then
  cat /tmp/parts/part.* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')" || exit 3
fi
ls .whl/*/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*/*.whl 2>&1 | grep -v WARNING
export PYTHONPATH=/tmp/site:$PWD RELIFT_CACHE=$PWD/.whl/c/cache
NV=$(python3 -c "import glob,os,site; print(':'.join(sorted(glob.glob(os.path.join(site.getsitepackages()[0], 'nvidia', '*', 'lib')))))")
export LD_LIBRARY_PATH=$NV:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, vllm, ray, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -3
timeout ${PYTEST_S:-300} python3 -m pytest ${GPU_TESTS:-tests/gpu} -v -s -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | grep -v "^$" | tail -80
timeout ${BENCH_S:-240} python3 scripts/bench_gpu.py ${BENCH_ARGS:-} --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | grep -E '^\{|Error|error' | tail -40
