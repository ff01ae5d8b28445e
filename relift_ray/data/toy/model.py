"""The toy "base model": a tiny Llama built from a config and pretrained on the easy levels.

It is saved in the standard Hugging Face format (config, safetensors, tokenizer), so the rest
of the system loads it with ``from_pretrained`` exactly as it loads a real model.

The weights ship with the package, in ``relift_ray/data/toy/base_model/`` (about 2 MB, float32),
built once from ``RECIPE``. They ship, rather than being built on first use, because a build is
deterministic on one machine only: float results differ across CPUs (and torch versions), so
the same recipe and seed give a different model on another machine (level-3 accuracy 0.908 on
one, 0.868 on another), and a fresh clone would also pay minutes of pretraining.
``base_model_path()`` returns the shipped folder when its ``recipe.json`` was built from the
current ``RECIPE`` (same ``recipe_hash()``); after a change of the recipe it falls back to
building the model into ``<cache_dir>/toy_base-<hash of the recipe>`` (later runs reuse it).

Building and shipping are a job (``python -m relift_ray.jobs.toy_base --help``).
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

from relift_ray.data.registry import cache_dir
from relift_ray.data.toy import task

RECIPE = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
          "num_attention_heads": 4, "max_position_embeddings": 128,
          "steps": 1500, "batch_size": 64, "lr": 3e-3, "seed": 0, "levels": list(task.BASE_LEVELS),
          "version": 5, "level3_examples": 40}

SHIPPED = Path(__file__).resolve().parent / "base_model"  # the weights built from RECIPE
EVAL_MAX_NEW_TOKENS = 48  # the longest toy response (level 4, three steps) is ~35 tokens


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:10]


def shipped_recipe(folder: str | Path = SHIPPED) -> dict | None:
    """The shipped folder's recipe.json ({"recipe_hash", "recipe", ...}), or None if absent."""
    try:
        return json.loads((Path(folder) / "recipe.json").read_text())
    except (OSError, ValueError):
        return None


def base_model_path(log=print) -> str:
    """The toy base model's directory: the shipped weights when they were built from the current
    RECIPE (no building, no cache), else the model built from RECIPE into the relift cache
    (``relift_ray.data.registry.cache_dir``)."""
    meta = shipped_recipe()
    weights_there = (SHIPPED / "config.json").exists() and (SHIPPED / "model.safetensors").exists()
    if meta is not None and weights_there and meta.get("recipe_hash") == recipe_hash():
        return str(SHIPPED)
    if meta is None or not weights_there:
        log(f"[base model] no shipped weights in {SHIPPED}: building from the recipe instead")
    else:
        log(f"[base model] the shipped weights in {SHIPPED} are for another recipe (hash "
            f"{meta.get('recipe_hash')}, the current RECIPE's is {recipe_hash()}): building "
            f"from the current recipe instead (ship a rebuild with `python -m "
            f"relift_ray.jobs.toy_base --rebuild DIR --ship`)")
    return build_base_model(cache_dir(), log=log)


def build_base_model(cache_dir: str | Path, log=print, *, force: bool = False) -> str:
    """Return the directory of the toy base model pretrained from RECIPE under ``cache_dir``,
    building it if it is not cached there (or always, with ``force``)."""
    # torch and transformers: only to build the model, not to find it
    import torch

    from relift_ray.data.toy.tokenizer import build_tokenizer

    out = Path(cache_dir).expanduser().resolve() / f"toy_base-{recipe_hash()}"
    if not force and (out / "config.json").exists() and (out / "DONE").exists():
        return str(out)
    from transformers import LlamaConfig, LlamaForCausalLM  # only to build it

    log(f"[base model] pretraining the toy base model from the recipe ({RECIPE['steps']} "
        f"steps, a few minutes on 2 CPU cores) into {out}")
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
    if tmp.exists():  # a crashed earlier attempt
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "DONE").write_text(json.dumps(RECIPE))
    if out.exists():  # a half-written earlier attempt, or the build that force replaces
        shutil.rmtree(out)
    tmp.rename(out)
    return str(out)


def _pack(tok, pairs):
    """Right-padded prompt+response+EOS with labels only on the response."""
    # torch and transformers: only to build the model, not to find it
    import torch

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
