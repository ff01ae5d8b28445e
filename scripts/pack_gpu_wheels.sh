#!/usr/bin/env bash
# Pack vLLM 0.26 (with Ray, DeepSpeed, MLflow, math-verify and what they import) for a GPU
# machine without network that already has torch 2.11 (CUDA 13), transformers and the common
# scientific packages. Python 3.12, x86-64.
#   bash scripts/pack_gpu_wheels.sh          # WORK=<dir> sets the scratch folder
# Output: an xz tar archive in parts of <= 58 MiB, .whl/a/part.*, .whl/b/part.*, ... (the script
# adds /.whl/ to .git/info/exclude). Copy .whl/ into the checkout on the GPU machine;
# scripts/gpu_check.sh unpacks it into /tmp/site. Left out: vLLM's FA2 kernels (Hopper uses
# FA3), Ray's jars and RLlib, MLflow's web UI.
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
# what a whole job needs beyond that (MLflow with its SQLite store, math-verify, Ray's
# default/train/serve extras): the versions of a CPU install (scripts/install.sh) on 2026-11-27
pip download -q --no-deps $PLAT --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$W/wh" \
  mlflow==3.17.2 mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 alembic==1.20.1 Mako==1.4.3 \
  sqlalchemy==2.1.9 sqlparse==0.6.1 Flask==3.1.3 Flask-CORS==6.0.5 blinker==1.9.0 \
  itsdangerous==2.2.0 gunicorn==26.2.0 graphene==3.4.3 graphql-core==3.2.14 graphql-relay==3.2.0 \
  huey==3.5.4 docker==7.2.0 databricks-sdk==0.162.0 google-auth==2.63.0 pyasn1==0.6.5 \
  pyasn1-modules==0.4.2 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 importlib_metadata==9.1.0 \
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2 \
  opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-prometheus==0.66b2 \
  python-dotenv==1.2.4 skops==0.16.0 prettytable==3.18.0 wcwidth==0.9.4 cffi==2.1.1 \
  pycparser==3.12 cryptography==50.0.2 math-verify==0.9.0 latex2sympy2_extended==1.11.0 \
  antlr4-python3-runtime==4.13.2 aiohttp_cors==0.8.1 colorful==0.5.8 opencensus==0.11.4 \
  opencensus-context==0.1.3 google-api-core==2.44.0 googleapis-common-protos==1.76.0 \
  proto-plus==1.29.0 py-spy==0.4.3 smart_open==9.0.2 virtualenv==21.15.11 distlib==0.4.4 \
  platformdirs==4.14.8 python-discovery==1.9.6 grpcio-reflection==1.85.1 tensorboardX==2.6.5 \
  uvicorn==0.54.0 httptools==0.9.0 websockets==17.4 mmh3==5.3.1
(cd "$W/wh" && pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8)
rm -rf "$W/site"
pip install -q --no-deps --no-compile $PLAT --target "$W/site" "$W"/wh/*.whl
# FA2 (291 MB) is not used on Hopper (FA3 is); Ray's Java jars and RLlib are not used at all
rm -f "$W/site/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"
rm -rf "$W/site/ray/jars" "$W/site/ray/rllib" "$W/site/mlflow/server/js"  # and MLflow's web UI
tar -cf - -C "$W/site" . | xz -T0 -6 > "$W/site.tar.xz"
# one part per call of the device tool (64 MiB each, the working tree included): .whl/a, b, ...
rm -rf .whl/[a-z]; mkdir -p .whl .git/info
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
(cd "$W" && rm -f part.* && split -b 58M -d -a 1 site.tar.xz part.)
for f in "$W"/part.*; do d=.whl/$(echo abcdefghij | cut -c$(( ${f##*.} + 1 ))); mkdir -p "$d"; mv "$f" "$d/"; done
ls -la .whl/*/
