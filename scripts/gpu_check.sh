#!/usr/bin/env bash
# The GPU checks in one go: a short toy ReLIFT job on the vLLM backend (colocated engine, CUDA-IPC
# weight sync, sleep/wake, under Ray Train), tests/gpu, then scripts/bench_gpu.py (figures to
# $OUT/bench.json; logs to $OUT, default /tmp/gpu_out). The stage `lora` (not in the default
# list) is the same job training rank-16 adapters, each sync a vLLM LoRA adapter.
#   STAGES="job tests bench" picks and orders the stages; JOB_S, PYTEST_S, BENCH_S are their
#   time limits in seconds. JOB_STEPS (12), JOB_ARGS, GPU_TESTS and BENCH_ARGS pass options on;
#   KEEP_RUN=1 keeps /tmp/gpu_run so the job resumes its last checkpoint.
#   On a GPU machine with `pip install -e ".[gpu]"` done:   bash scripts/gpu_check.sh
#   On one without network: carry the archive that scripts/pack_gpu_wheels.sh makes (its parts
#   in .whl/*/part.*, extra wheels in .whl/*/*.whl); it is unpacked into /tmp/site first.
export PYTHONUNBUFFERED=1 DS_ACCELERATOR=cuda VLLM_LOGGING_LEVEL=WARNING
# the archive leaves flashinfer out (its sampler is optional); a full install may keep it
python3 -c "import flashinfer" 2>/dev/null || export VLLM_USE_FLASHINFER_SAMPLER=0
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*/part.* >/dev/null 2>&1; then
  mkdir -p /tmp/parts && cp .whl/*/part.* /tmp/parts/ && ls -la /tmp/parts
  if [ ! -d /tmp/site/vllm ]; then
    mkdir -p /tmp/site
    { cat /tmp/parts/part.* | xz -dc -T0 | tar -x -C /tmp/site; } 2>/dev/null ||
      cat /tmp/parts/part.* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site')" || exit 3
  fi
fi
if ls .whl/*/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*/*.whl 2>&1 | grep -v WARNING
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD || export PYTHONPATH=$PWD
[ -d .whl/c/cache ] && export RELIFT_CACHE=${RELIFT_CACHE:-$PWD/.whl/c/cache}
NV=$(python3 -c "import glob,os,site; print(':'.join(sorted(glob.glob(os.path.join(site.getsitepackages()[0], 'nvidia', '*', 'lib')))))")
export LD_LIBRARY_PATH=$NV:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, vllm, ray, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -3
job() {  # the whole system on one GPU: Ray, scheduler, reward pool, vLLM engine, DeepSpeed learner
  [ -n "${KEEP_RUN:-}" ] || rm -rf /tmp/gpu_run; mkdir -p /tmp/gpu_run  # KEEP_RUN=1: resume it
  timeout ${JOB_S:-300} python3 jobs/train.py \
    --config toy_relift output_dir=/tmp/gpu_run train.steps=${JOB_STEPS:-12} \
    train.checkpoint_every=6 model.dtype=bfloat16 cluster.use_gpu=true cluster.num_learners=1 \
    cluster.num_generators=1 cluster.dashboard=false generator.backend=vllm generator.colocate=true \
    generator.weight_sync=ipc generator.gpu_memory_utilization=0.2 \
    generator.enforce_eager=true tracking.eval_before=start ${JOB_ARGS:-} > "$OUT/${JOB_LOG:-job}.log" 2>&1
  echo "job rc $?"; python3 -m ray.scripts.scripts stop --force >/dev/null 2>&1  # a cut-off job's actors
  grep -v "^\s*$" "$OUT/${JOB_LOG:-job}.log" | tail -60
  find /tmp/gpu_run -name questions.csv -exec cp {} "$OUT/" \; -quit
}
lora() {  # the job with LoRA: adapters through the object store into vLLM's LoRA slot
  JOB_LOG=job_lora JOB_ARGS="model.lora.rank=16 generator.weight_sync=object_store algo.lr=1e-3 \
    algo.sft_lr=5e-3 ${JOB_ARGS:-}" job  # adapters learn at 10x the toy's rates (docs/lora.md)
}
tests() {
timeout ${PYTEST_S:-300} python3 -m pytest ${GPU_TESTS:-tests/gpu} -v -s -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | grep -v "^$" | tail -80
}
bench() {
timeout ${BENCH_S:-240} python3 scripts/bench_gpu.py ${BENCH_ARGS:-} --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | grep -E '^\{|Error|error' | tail -40
}
for st in ${STAGES:-job tests bench}; do echo "== $st $(date +%T)"; $st; done
