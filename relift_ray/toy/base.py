"""The toy "base model": a tiny Llama built from a config and pretrained on the easy levels.

It is saved in the standard Hugging Face format (config, safetensors, tokenizer), so the rest
of the system loads it with ``from_pretrained`` exactly as it loads a real model. The result is
cached under ``<cache_dir>/toy_base-<hash of the recipe>``: later runs start at once.

    python -m relift_ray.toy.base [CACHE_DIR]    # build (or find) it; prints its directory
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from relift_ray.toy import task
from relift_ray.toy.tokenizer import build_tokenizer

RECIPE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
          "num_attention_heads": 4, "max_position_embeddings": 128,
          "steps": 1500, "batch_size": 64, "lr": 3e-3, "seed": 0, "levels": list(task.BASE_LEVELS),
          "version": 5, "level3_examples": 40}


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:10]


def build_base_model(cache_dir: str | Path, log=print) -> str:
    """Return the directory of the pretrained toy base model, building it if it is not cached."""
    out = Path(cache_dir).expanduser().resolve() / f"toy_base-{recipe_hash()}"
    if (out / "config.json").exists() and (out / "DONE").exists():
        return str(out)
    from transformers import LlamaConfig, LlamaForCausalLM

    log(f"[base model] not cached yet: pretraining the toy base model once ({RECIPE['steps']} "
        f"steps, about 4 minutes on 2 CPU cores) into {out}")
    torch.manual_seed(RECIPE["seed"])
    rng = random.Random(RECIPE["seed"])
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=RECIPE["hidden_size"],
                         intermediate_size=RECIPE["intermediate_size"],
                         num_hidden_layers=RECIPE["num_hidden_layers"],
                         num_attention_heads=RECIPE["num_attention_heads"],
                         num_key_value_heads=RECIPE["num_attention_heads"],
                         max_position_embeddings=RECIPE["max_position_embeddings"],
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    texts = [(q.prompt, q.demo) for q in task.make_questions("train", RECIPE["levels"])]
    # a few level-3 examples: level 3 starts within partial reach, level 4 out of reach
    texts += rng.sample([(q.prompt, q.demo) for q in task.make_questions("train", (3,))],
                        RECIPE["level3_examples"])
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, RECIPE["lr"], total_steps=RECIPE["steps"],
                                                pct_start=0.1)
    model.train()
    t0 = time.time()
    for step in range(RECIPE["steps"]):
        batch = rng.sample(texts, RECIPE["batch_size"])
        ids, labels = _pack(tok, batch)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(),
                     labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == RECIPE["steps"] - 1:
            log(f"[base model] step {step + 1}/{RECIPE['steps']} loss {loss.item():.3f} "
                f"({time.time() - t0:.0f}s)")
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "DONE").write_text(json.dumps(RECIPE))
    if out.exists():  # a half-written earlier attempt
        import shutil
        shutil.rmtree(out)
    tmp.rename(out)
    return str(out)


def _pack(tok, pairs):
    """Right-padded prompt+response+EOS with labels only on the response."""
    rows, labels = [], []
    for prompt, response in pairs:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(p + r)
        labels.append([-100] * len(p) + r)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, :len(r)] = torch.tensor(r)
        lab[i, :len(l)] = torch.tensor(l)
    return ids, lab


def default_cache() -> Path:
    """Where runs look for the base model: $RELIFT_CACHE, else ~/.cache/relift_ray."""
    return Path(os.environ.get("RELIFT_CACHE") or Path.home() / ".cache" / "relift_ray")


if __name__ == "__main__":
    print(build_base_model(sys.argv[1] if len(sys.argv) > 1 else default_cache()))
