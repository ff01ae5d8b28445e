"""LoRA adapters (``model.lora``): PEFT's model around the learner's, the adapters as a weight
sync sends them, their folder format, and a LoRA checkpoint turned back into one model.

    peft_model = wrap(model, cfg.model.lora, model_path)  # only the adapters train
    adapter_weights(peft_model)     # AdapterWeights: what an adapter sync sends
    merged_state_dict(peft_model)   # HF names, adapters merged in: what a merged sync sends
    generator_model = apply_adapter(generator_model, weights)   # a generator's side
    write_adapter(folder, weights, base_spec, base_path, dtype)  # a checkpoint's policy/
    merged_model(folder, base_path, out)   # base + adapter -> an HF folder of the merged
                                           # model (relift_ray.data.registry.resolve_model)

An adapter folder is PEFT's own (``adapter_config.json``, ``adapter_model.safetensors``), so
``PeftModel.from_pretrained`` and vLLM's LoRA loader read it as they are, plus
``relift_base.json``: the base model as the run's config named it (``model.path``) and the
folder it resolved to, so it can be found again on another machine.

torch, peft and safetensors are imported inside the functions: this module is imported by
the config's users too, which need none of them.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from relift_ray.errors import ConfigError
from relift_ray.records import AdapterWeights

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
BASE_FILE = "relift_base.json"
_LORA_KEY = re.compile(r"\.lora_[A-Za-z_]+\.")  # lora_A, lora_B, lora_embedding_A, ...


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).exists()


def peft_config(settings: dict):
    """PEFT's LoraConfig from ``AdapterWeights.config`` (or ``lora_settings``)."""
    # peft: only LoRA runs need it
    from peft import LoraConfig
    return LoraConfig(task_type="CAUSAL_LM", **settings)


def lora_settings(lora) -> dict:
    """PEFT's settings for a ``model.lora`` config section."""
    targets = lora.target_modules
    return {"r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
            "target_modules": "all-linear" if list(targets) == ["all-linear"] else list(targets)}


def _adaptable(model) -> dict:
    """{name: module} of the layers an adapter may go on: the linear layers but the output
    head (whose adapters a merged sync could not express, and that tied embeddings share)."""
    # torch: with the model, which exists already
    import torch
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n: m for n, m in model.named_modules()
            if (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
            and m is not head}


def check_targets(model, target_modules: list, model_path: str) -> None:
    """``ConfigError`` naming ``model.lora.target_modules`` when a name matches no module of
    the model, or a module that is not a linear layer or is the output head (PEFT matches a
    name against the end of each module's dotted name)."""
    if list(target_modules) == ["all-linear"]:
        return
    ok = _adaptable(model)
    linear = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in ok}))
    for t in target_modules:
        hits = [n for n, _ in model.named_modules() if n == t or n.endswith("." + t)]
        if not hits:
            raise ConfigError(f"model.lora.target_modules: {t!r} is no module of {model_path} "
                              f"(its linear layers: {linear}; or all-linear)")
        bad = [n for n in hits if n not in ok]
        if bad:
            raise ConfigError(f"model.lora.target_modules: {t!r} matches {bad[0]}, which is "
                              f"not a linear layer of the body of {model_path} (adapters go on "
                              f"its linear layers: {linear}; or all-linear)")


def check_targets_of(model_path: str, target_modules: list) -> None:
    """``check_targets`` on the model of ``model_path`` built without its weights (the
    driver's check before any worker starts)."""
    # torch, transformers: the model's skeleton, on the meta device (no memory, no weights)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    check_targets(model, target_modules, model_path)


def wrap(model, lora, model_path: str):
    """PEFT's model around ``model`` with the adapters of ``lora`` (model.lora): every base
    weight frozen, the adapters trainable (A random, B zero: the policy starts as the base)."""
    # peft: only LoRA runs need it
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    check_targets(model, lora.target_modules, model_path)
    peft_model = get_peft_model(model, peft_config(lora_settings(lora)))
    c = peft_model.peft_config[peft_model.active_adapter]
    if list(lora.target_modules) == ["all-linear"] and isinstance(c.target_modules, set):
        # PEFT resolved all-linear to every module's full name; the last names (q_proj, ...)
        # say the same in a tenth of the text, and are what vLLM's LoRA loader reads, when
        # they select exactly the adapted modules
        short = {t.rsplit(".", 1)[-1] for t in c.target_modules}
        adapted = {n for n, m in peft_model.get_base_model().named_modules()
                   if isinstance(m, LoraLayer)}
        named = {n for n, _ in peft_model.get_base_model().named_modules()
                 if n.rsplit(".", 1)[-1] in short}
        if named == adapted:
            c.target_modules = short
    return peft_model


def _resolved_settings(peft_model) -> dict:
    return _settings_of(peft_model.peft_config[peft_model.active_adapter])


def _settings_of(c) -> dict:
    """``AdapterWeights.config`` of PEFT's LoraConfig ``c`` (target names sorted: PEFT keeps
    them in a set)."""
    targets = c.target_modules
    if isinstance(targets, (set, list, tuple)):
        targets = sorted(targets)
    return {"r": c.r, "lora_alpha": c.lora_alpha, "lora_dropout": c.lora_dropout,
            "target_modules": targets}


def adapter_weights(peft_model) -> AdapterWeights:
    """CPU copies of the adapters, by PEFT's names, with their settings."""
    # peft: only LoRA runs need it
    from peft import get_peft_model_state_dict
    # (no embedding layers are adapted: PEFT's "auto" would ask the hub about the base)
    sd = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    return AdapterWeights(_resolved_settings(peft_model),
                          {k: v.detach().to("cpu", copy=True) for k, v in sd.items()})


def merged_state_dict(peft_model) -> dict:
    """The base model's state dict (its own HF names) with each adapter's delta added to the
    weight it adapts: what the merged model holds, computed without touching the learner's
    weights (merging in place and back would drift them in low precision). The delta and
    the sum are fp32, rounded once to the weight's dtype, as PEFT's merge of an fp32 copy."""
    # peft: only LoRA runs need it
    from peft.tuners.lora import LoraLayer
    base = peft_model.get_base_model()
    deltas = {}
    for name, mod in base.named_modules():
        if isinstance(mod, LoraLayer):
            for a in (a for a in mod.active_adapters if a in mod.lora_A):
                d = mod.lora_B[a].weight.float() @ mod.lora_A[a].weight.float() * mod.scaling[a]
                d = d.T if mod.fan_in_fan_out else d
                deltas[f"{name}.weight"] = deltas.get(f"{name}.weight", 0) + d
    out = {}
    for key, value in base.state_dict().items():
        if _LORA_KEY.search(key):
            continue
        key = key.replace(".base_layer.", ".")
        value = value.detach()
        if key in deltas:
            value = (value.float() + deltas[key]).to(value.dtype)
        out[key] = value.to("cpu", copy=True)
    return out


def apply_adapter(model, weights: AdapterWeights):
    """``model`` (a plain HF model, or the PEFT model an earlier call returned) with the
    adapters of ``weights`` loaded; returns the PEFT model, in eval mode."""
    # peft: only LoRA runs need it
    from peft import PeftModel, get_peft_model, set_peft_model_state_dict
    if isinstance(model, PeftModel) and _resolved_settings(model) != weights.config:
        model = model.unload()  # other settings: adapters of the new shape on the plain model
    if not isinstance(model, PeftModel):
        # the adapters in the model's own dtype, as the learner's
        model = get_peft_model(model, peft_config(weights.config), autocast_adapter_dtype=False)
    result = set_peft_model_state_dict(model, weights.tensors)
    missing = [k for k in result.missing_keys if _LORA_KEY.search(k)]
    if result.unexpected_keys or missing:
        raise ValueError(f"adapter does not fit the model: unexpected "
                         f"{result.unexpected_keys[:3]}, missing {missing[:3]}")
    return model.eval()


def write_adapter(folder: str | Path, weights: AdapterWeights, base_spec: str,
                  base_path: str, dtype: str) -> Path:
    """PEFT's adapter folder (``PeftModel.from_pretrained`` and vLLM read it) plus
    ``relift_base.json`` naming the base model and the dtype the run held it in."""
    # safetensors: only LoRA runs write adapters
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if Path(base_path).exists():  # a local folder: absolute, whatever the working directory
        base_path = str(Path(base_path).resolve())
    c = peft_config(weights.config)
    c.base_model_name_or_path = base_path
    c.save_pretrained(str(folder))
    save_file({k: v.contiguous() for k, v in weights.tensors.items()}, folder / ADAPTER_FILE)
    (folder / BASE_FILE).write_text(json.dumps({"model.path": base_spec, "path": base_path,
                                                "dtype": dtype}, indent=1))
    return folder


def read_adapter(folder: str | Path) -> AdapterWeights:
    # peft, safetensors: only LoRA runs read adapters
    from peft import LoraConfig
    from safetensors.torch import load_file
    return AdapterWeights(_settings_of(LoraConfig.from_pretrained(str(folder))),
                          load_file(Path(folder) / ADAPTER_FILE))


def base_of(folder: str | Path) -> dict:
    """The base model an adapter folder was trained on: {"model.path": as the run's config
    named it, "path": the folder it resolved to there, "dtype": the run's model.dtype}."""
    folder = Path(folder)
    f = folder / BASE_FILE
    if f.exists():
        return json.loads(f.read_text())
    path = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not path:
        raise FileNotFoundError(f"{folder}: an adapter that names no base model (no {BASE_FILE}"
                                f", no base_model_name_or_path in {ADAPTER_CONFIG})")
    return {"model.path": path, "path": path, "dtype": ""}


def merged_model(adapter_dir: str | Path, base_path: str, out: str | Path) -> Path:
    """Write the base model of ``base_path`` with the adapter of ``adapter_dir`` merged in, as
    an HF folder with the adapter's tokenizer (or the base's), at ``out``; complete or absent
    (written beside, then renamed). The base is read in the dtype the run trained it in and
    merged in fp32, so the result is the learner's own merged policy, bit for bit."""
    # torch, transformers, peft: only when a LoRA checkpoint is loaded as one model
    import tempfile

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out, adapter_dir = Path(out), Path(adapter_dir)
    dtype = getattr(torch, base_of(adapter_dir).get("dtype") or "float32")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype).float()
    # PEFT's own reading of the folder: every setting of an adapter trained elsewhere too
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().to(dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    merged.save_pretrained(tmp)
    tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base_path
    AutoTokenizer.from_pretrained(tok_src).save_pretrained(tmp)
    try:
        tmp.rename(out)  # the first complete copy stays: another process may be reading it
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def base_fingerprint(path: str) -> str:
    """What identifies a base model's weights cheaply: its config and the names and sizes of
    its weight files (a hub id stands for itself)."""
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    h = hashlib.sha256((folder / "config.json").read_bytes()
                       if (folder / "config.json").exists() else b"")
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def merged_cache_key(adapter_dir: str | Path, base_path: str) -> str:
    """Names the merged model of this adapter on this base: a hash of the adapter's files and
    the base folder."""
    h = hashlib.sha256(str(Path(base_path).resolve()).encode())
    for name in (ADAPTER_CONFIG, ADAPTER_FILE):
        h.update((Path(adapter_dir) / name).read_bytes())
    return h.hexdigest()[:16]
