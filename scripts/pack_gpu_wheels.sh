#!/usr/bin/env bash
# Pack vLLM 0.26 (and Ray, DeepSpeed, what they import) for a GPU machine without network that
# already has torch 2.11 (CUDA 13), transformers and the common scientific packages, as the
# lent H200 had. Output: parts of <= 58 MiB in .whl/a, .whl/b, .whl/c (git-ignored through
# .git/info/exclude) that scripts/gpu_check.sh unpacks. Python 3.12, x86-64 wheels.
set -euo pipefail
W=${WORK:-/tmp/relift-gpu-pack}; mkdir -p "$W/wh"
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_31_x86_64 \
  --platform manylinux_2_35_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_34_x86_64 --platform linux_x86_64"
# what vLLM 0.26 imports on the generation path and the machine lacks (found by an import
# walk of vllm and two runs on the H200), plus Ray and DeepSpeed's own needs
pip download -q --no-deps $PLAT -d "$W/wh" vllm==0.26.0 ray==2.60.0 \
  lm-format-enforcer==0.11.3 outlines-core==0.2.14 lark==1.2.2 depyf==0.20.0 nvtx==0.2.15 \
  fastapi starlette llguidance==1.7.6 cachetools blake3 openai httpx2 httpcore2 jiter \
  prometheus-fastapi-instrumentator partial-json-parser jsonschema pyzmq msgspec \
  mistral-common watchfiles python-json-logger pybase64 cbor2 ijson setproctitle \
  openai-harmony hjson annotated-types interegular jsonschema-specifications \
  pydantic pydantic-core pydantic-extra-types pycountry referencing rpds-py truststore \
  typing-inspection astor dill sniffio compressed-tensors==0.17.0 "xgrammar>=0.2.1,<1" \
  gguf "apache-tvm-ffi==0.1.11" loguru
(cd "$W/wh" && pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8)
rm -rf "$W/site"
pip install -q --no-deps --no-compile $PLAT --target "$W/site" "$W"/wh/*.whl
# FA2 (291 MB) is not used on Hopper (FA3 is); Ray's Java jars and RLlib are not used at all
rm -f "$W/site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"
rm -rf "$W/site/ray/jars" "$W/site/ray/rllib"
tar -cf - -C "$W/site" . | xz -T0 -6 > "$W/site.tar.xz"
mkdir -p .whl/a .whl/b .whl/c && grep -qx "/.whl/" .git/info/exclude || echo "/.whl/" >> .git/info/exclude
(cd "$W" && rm -f part.* && split -b 58M -d -a 1 site.tar.xz part.)
mv "$W/part.0" .whl/a/; mv "$W/part.1" .whl/b/; mv "$W/part.2" .whl/c/
ls -la .whl/*/
