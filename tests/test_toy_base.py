"""The toy base model ships with the package (relift_ray/data/toy/base_model/), built from RECIPE.

Fast tier: ``base_model_path()`` returns the shipped folder without building anything, and it
loads with transformers like any HF model. Slow tier: a rebuild from the recipe is
*equivalent* to the shipped model (same architecture and tokenizer, close per-level accuracy);
it is not bit-identical across machines, because float results differ across CPUs, which is
why the weights ship at all.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relift_ray.data.toy import model as base
from relift_ray.data.toy.tokenizer import build_tokenizer
from relift_ray.jobs import toy_base

ROOT = Path(__file__).resolve().parent.parent


def _no_build(*args, **kwargs):
    raise AssertionError("base_model_path() built the model although the shipped one fits")


def test_base_model_path_is_the_shipped_folder(monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setattr(base, "build_base_model", _no_build)
    logs = []
    path = base.base_model_path(log=logs.append)
    assert Path(path) == base.SHIPPED and logs == []

    meta = json.loads((Path(path) / "recipe.json").read_text())
    assert meta["recipe_hash"] == base.recipe_hash()
    assert meta["recipe"] == base.RECIPE
    # small enough to ship: float32, about 2 MB
    size = sum(f.stat().st_size for f in Path(path).iterdir())
    assert size < 5e6, f"the shipped base model is {size / 1e6:.1f} MB"

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.get_vocab() == build_tokenizer().get_vocab()
    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
            cfg.num_attention_heads, cfg.vocab_size) == (
        base.RECIPE["hidden_size"], base.RECIPE["intermediate_size"],
        base.RECIPE["num_hidden_layers"], base.RECIPE["num_attention_heads"], len(tok))
    # the weights are trained ones: greedy answers to a few level-1 test questions are right
    from relift_ray.data.toy.task import make_questions
    qs = make_questions("test", (1,))[:8]
    enc = tok([q.prompt for q in qs], return_tensors="pt", padding=True,
              add_special_tokens=False)
    out = model.generate(**enc, do_sample=False, max_new_tokens=24,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    right = sum(t.strip().endswith(f"\\boxed{{{q.answer}}}") for q, t in zip(qs, texts))
    assert right >= 7, list(zip([q.prompt for q in qs], texts))


def test_base_model_path_builds_when_the_recipe_changed(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(base, "RECIPE", {**base.RECIPE, "steps": base.RECIPE["steps"] + 1})
    monkeypatch.setattr(base, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(base, "build_base_model",
                        lambda cache, log=print: calls.append(cache) or "built")
    logs = []
    assert base.base_model_path(log=logs.append) == "built"
    assert calls == [tmp_path]
    assert any("another recipe" in line for line in logs), logs


def test_shipped_weights_are_packaged_and_not_ignored():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "base_model/*" in pyproject["tool"]["setuptools"]["package-data"]["relift_ray.data.toy"]
    files = [p for p in base.SHIPPED.iterdir()]
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "recipe.json"} <= names
    # the tests run from a git checkout (CI clones one): git is there
    ignored = subprocess.run(["git", "check-ignore", *map(str, files)], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.returncode == 1 and not ignored.stdout, f"git ignores: {ignored.stdout}"


def test_cli_prints_the_shipped_folder():
    out = subprocess.run([sys.executable, "-m", "relift_ray.jobs.toy_base"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(base.SHIPPED)


@pytest.mark.slow
def test_rebuild_from_the_recipe_is_equivalent_to_the_shipped_model(tmp_path):
    """Rebuild from RECIPE (85 s on 2 idle cores, much longer on busy ones) and compare.

    Not bit-identical on another machine (float results differ across CPUs, and 1,500 steps
    of training carry a difference far), so the check is the properties the toy relies on.
    Greedy accuracy on the toy test split (186/217/152/159 questions for levels 1-4):
      - levels 1 and 2 (pretrained on) are learned: >= 0.95 for both (measured 1.0 on every
        machine so far);
      - level 3 (40 examples only) is within partial reach, where RL has a signal: between
        0.5 and 1 (exclusive). It is the level that moves between machines: the shipped model
        measured 0.908 where it was built, a rebuild 0.868 on a second machine and 0.618 on a
        third (2026-12-06, the same recipe, seed and versions);
      - level 4 (an operation never seen) stays out of the base model's reach: <= 0.10 for
        both (measured 0.019 and 0.0); RL alone has no signal there by design.
    On the machine that built the shipped weights the rebuild is identical (same accuracy).
    """
    t0 = time.time()
    rebuilt = Path(base.build_base_model(tmp_path))
    build_s = time.time() - t0
    shipped = base.SHIPPED

    def config(folder):
        cfg = json.loads((folder / "config.json").read_text())
        cfg.pop("transformers_version", None)
        return cfg

    assert config(rebuilt) == config(shipped)
    assert (json.loads((rebuilt / "tokenizer.json").read_text())["model"]["vocab"]
            == json.loads((shipped / "tokenizer.json").read_text())["model"]["vocab"])
    from safetensors import safe_open
    with safe_open(rebuilt / "model.safetensors", "pt") as a, \
            safe_open(shipped / "model.safetensors", "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert a.get_slice(k).get_shape() == b.get_slice(k).get_shape(), k

    acc_shipped = toy_base.level_accuracy(shipped)
    acc_rebuilt = toy_base.level_accuracy(rebuilt)
    print(f"\nrebuild took {build_s:.0f}s; greedy test accuracy shipped {acc_shipped}, "
          f"rebuilt {acc_rebuilt}")
    for acc in (acc_shipped, acc_rebuilt):
        assert acc["level_1"] >= 0.95 and acc["level_2"] >= 0.95, acc
        assert 0.5 <= acc["level_3"] < 1.0, acc
        assert acc["level_4"] <= 0.10, acc
