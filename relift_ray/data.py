"""Training and test questions: readers for data files and data sources, and prompt building.

``load_questions(spec, fmt, split)`` returns ``Question`` records. ``spec`` is a named data
source (``toy``, see relift_ray.registry) or ``py:module:function`` (called with the split), a file
(``.jsonl``, ``.json`` holding a list of objects, or ``.parquet``), or a Hugging Face dataset
``hf://owner/name[/file-glob]`` (downloaded into the HF cache; needs network access the first
time). A bad row raises ``DataError`` naming the file, the row (1-based) and the field.

Formats (``auto`` tells them apart by the first row's fields):
  luffy   the LUFFY/ReLIFT (verl) parquet rows: prompt = chat messages, target = the
          demonstration, reward_model.ground_truth, extra_info.index, data_source
  gsm8k   question, answer ("reasoning #### N"): the reasoning is the demonstration
  math    problem, solution (with \\boxed{}): the boxed content is the answer (or ``answer``)
  jsonl   plain rows: prompt, answer, optional id, demo, source, level; the field names are
          configurable (``data.prompt_field`` ...)

``render_prompts(questions, tokenizer, data_cfg)`` turns each question into the text the
model sees (the tokenizer's chat template with the system prompt, or a plain template),
strips a leading ``<think>\\n`` from demonstrations when the prompt already ends with it (as
the released code does) and drops, counting them, questions whose prompt is too long.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from relift_ray.records import Question
from relift_ray.rewards import last_boxed

# The system prompt of the LUFFY and ReLIFT releases (their valid.parquet files carry it).
LUFFY_SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final "
    "solution. This involves analyzing, summarizing, exploring, reassessing, and refining your "
    "thought process through multiple iterations. Structure your response into two sections: "
    "Thought and Solution. In the Thought section, present your reasoning using the format: "
    "\"<think>\n {thoughts} </think>\n\". Each thought should include detailed analysis, "
    "brainstorming, verification, and refinement of ideas. After \"</think>\n,\" in the Solution "
    "section, provide the final, logical, and accurate answer, clearly derived from the "
    "exploration in the Thought section. If applicable, include the answer in \\boxed{} for "
    "closed-form results like multiple choices or mathematical solutions.")
SYSTEM_PROMPTS = {"luffy": LUFFY_SYSTEM_PROMPT, "none": ""}
THINK_PREFIX = "<think>\n"
FORMATS = ("auto", "jsonl", "gsm8k", "math", "luffy", "parquet")  # parquet = luffy


class DataError(ValueError):
    """A data row is malformed; the message names the file, row and field."""


@dataclasses.dataclass(frozen=True)
class Fields:
    """Field names of the plain jsonl format."""
    prompt: str = "prompt"
    answer: str = "answer"
    demo: str = "demo"
    id: str = "id"


def load_questions(spec: str, fmt: str = "auto", split: str = "train",
                   fields: Fields = Fields()) -> list[Question]:
    from relift_ray.registry import data_source
    make = data_source(spec)  # a named source (the toy task) or py:module:function
    if make is not None:
        return list(make(split))
    paths = hub_files(spec) if spec.startswith("hf://") else [Path(spec)]
    out: list[Question] = []
    for path in paths:
        out += _read_file(path, fmt, fields)
    return out


def _read_file(path: Path, fmt: str, fields: Fields) -> list[Question]:
    if not path.exists():
        raise DataError(f"{path}: data file does not exist")
    rows = list(iter_rows(path))
    if not rows:
        raise DataError(f"{path}: no rows")
    if fmt == "auto":
        fmt = sniff(rows[0][1], fields)
    if fmt == "parquet":
        fmt = "luffy"
    reader = {"jsonl": _plain, "gsm8k": _gsm8k, "math": _math, "luffy": _luffy}.get(fmt)
    if reader is None:
        raise DataError(f"{path}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    out, seen = [], set()
    for row_no, row in rows:
        q = reader(path, row_no, row, fields)
        if q.id in seen:  # ids key the per-question records: keep them unique
            q = dataclasses.replace(q, id=f"{q.id}#{row_no}")
        seen.add(q.id)
        out.append(q)
    return out


def iter_rows(path: Path):
    """(1-based row number, dict) for every row of a .jsonl, .json (a list) or .parquet file."""
    if path.suffix == ".parquet":
        import pandas as pd
        try:
            frame = pd.read_parquet(path)
        except Exception as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        for i, row in enumerate(frame.to_dict("records"), 1):
            yield i, {k: _plain_value(v) for k, v in row.items()}
        return
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of objects")
        for i, row in enumerate(data, 1):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {i}: expected a JSON object")
            yield i, row
        return
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {i}: expected a JSON object")
            yield i, row


def _plain_value(v):
    """numpy arrays and scalars from parquet -> lists and Python scalars (recursively)."""
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()
    if isinstance(v, dict):
        return {k: _plain_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain_value(x) for x in v]
    return v


def sniff(row: dict, fields: Fields = Fields()) -> str:
    if isinstance(row.get("prompt"), list) or "reward_model" in row:
        return "luffy"
    if "question" in row and "####" in str(row.get("answer", "")):
        return "gsm8k"
    if "problem" in row and ("solution" in row or "answer" in row):
        return "math"
    return "jsonl"


def hub_files(spec: str) -> list[Path]:
    """``hf://owner/name[/glob]``: the dataset's matching data files, from the HF cache or
    downloaded into it. Reads .parquet, .jsonl and .json files."""
    parts = spec[len("hf://"):].strip("/").split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise DataError(f"{spec}: a hub dataset is hf://owner/name or hf://owner/name/<file glob>")
    repo = "/".join(parts[:2])
    pattern = parts[2] if len(parts) == 3 else None
    from huggingface_hub import snapshot_download
    try:
        local = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=pattern))
    except Exception as e:
        raise DataError(f"{spec}: could not get the dataset {repo} from the Hugging Face hub "
                        f"({type(e).__name__}: {e})"[:500]) from None
    files = sorted(p for p in local.rglob("*")
                   if p.suffix in (".parquet", ".jsonl", ".json") and p.is_file()
                   and (pattern is None or p.match(pattern) or
                        p.relative_to(local).match(pattern)))
    if not files:
        raise DataError(f"{spec}: no .parquet/.jsonl/.json files"
                        f"{' match ' + pattern if pattern else ''} in dataset {repo}")
    return files


def _field(path, row_no, row, name, kind=str, required=True):
    if name not in row or row[name] is None:
        if required:
            raise DataError(f"{path}: row {row_no}: field '{name}' is missing")
        return None
    value = row[name]
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = answer_text(value)
    if not isinstance(value, kind) or (kind is str and required and not value.strip()):
        raise DataError(f"{path}: row {row_no}: field '{name}' must be a non-empty {kind.__name__},"
                        f" got {value!r}"[:300])
    return value


def answer_text(value) -> str:
    """Ground truths stored as numbers: 27.0 -> "27", 0.5 -> "0.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _plain(path, row_no, row, fields: Fields) -> Question:
    level = _field(path, row_no, row, "level", int, required=False)
    return Question(id=str(row.get(fields.id, f"{path.stem}-{row_no}")),
                    prompt=_field(path, row_no, row, fields.prompt),
                    answer=_field(path, row_no, row, fields.answer),
                    demo=_field(path, row_no, row, fields.demo, required=False),
                    source=str(row.get("source", path.stem)), level=level or 0)


def _gsm8k(path, row_no, row, fields: Fields) -> Question:
    text = _field(path, row_no, row, "answer")
    if "####" not in text:
        raise DataError(f"{path}: row {row_no}: field 'answer' has no '#### <answer>'")
    reasoning, final = text.rsplit("####", 1)
    final = final.strip().replace(",", "")
    return Question(id=f"gsm8k-{row_no}", prompt=_field(path, row_no, row, "question"),
                    answer=final, demo=f"{reasoning.strip()}\nThe answer is \\boxed{{{final}}}.",
                    source="gsm8k")


def _math(path, row_no, row, fields: Fields) -> Question:
    solution = _field(path, row_no, row, "solution", required="answer" not in row)
    answer = row.get("answer")
    answer = answer_text(answer) if answer is not None else last_boxed(solution or "")
    if not answer:
        raise DataError(f"{path}: row {row_no}: field 'solution' has no \\boxed{{}} answer")
    level = str(row.get("level", ""))
    return Question(id=str(row.get("unique_id", row.get("id", f"{path.stem}-{row_no}"))),
                    prompt=_field(path, row_no, row, "problem"), answer=answer,
                    demo=solution, source=str(row.get("source", "math")),
                    level=int(level[-1]) if level[-1:].isdigit() else 0)


def _luffy(path, row_no, row, fields: Fields) -> Question:
    messages = row.get("prompt")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{path}: row {row_no}: field 'prompt' must be a non-empty list of chat "
                        f"messages, got {messages!r}"[:300])
    chat = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise DataError(f"{path}: row {row_no}: field 'prompt' message {j} needs 'role' and "
                            f"'content', got {m!r}"[:300])
        chat.append((str(m["role"]), m["content"]))
    truth = (row.get("reward_model") or {}).get("ground_truth")
    if truth is None or (isinstance(truth, str) and not truth.strip()):
        raise DataError(f"{path}: row {row_no}: field 'reward_model.ground_truth' is missing")
    target = row.get("target")
    if isinstance(target, list):  # some releases store the demonstration as messages
        target = target[0].get("content") if target and isinstance(target[0], dict) else None
    if target is not None and not isinstance(target, str):
        raise DataError(f"{path}: row {row_no}: field 'target' must be text, got {target!r}"[:300])
    source = str(row.get("data_source", path.stem))
    index = (row.get("extra_info") or {}).get("index", row_no)
    user = [c for r, c in chat if r == "user"]
    return Question(id=f"{source}-{index}", prompt=user[-1] if user else chat[-1][1],
                    answer=answer_text(truth), demo=target or None, source=source,
                    messages=tuple(chat))


# ---------------------------------------------------------------- prompts

def system_prompt_text(name: str) -> str:
    return SYSTEM_PROMPTS.get(name, name)


def render_prompts(questions: list[Question], tokenizer, dcfg) -> tuple[list[Question], int]:
    """(questions with the model's prompt text, number dropped for a too-long prompt)."""
    template = dcfg.prompt_template
    if template == "auto":
        template = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError("data.prompt_template=chat: the tokenizer has no chat template (set "
                        "data.chat_template to a .jinja file, or data.prompt_template=plain)")
    system = system_prompt_text(dcfg.system_prompt)
    out, dropped = [], 0
    for q in questions:
        if template == "chat":
            if q.messages:  # rows that come as messages keep theirs (system prompt included)
                msgs = [{"role": r, "content": c} for r, c in q.messages]
            else:
                msgs = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": q.prompt}]
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        else:
            body = q.prompt
            if system and not q.messages:
                body = f"{system}\n\n{body}"
            elif q.messages:
                body = "\n\n".join(c for _, c in q.messages)
            text = dcfg.plain_template.replace("{prompt}", body)
        demo = q.demo
        if (demo and dcfg.strip_think_prefix and text.endswith(THINK_PREFIX)
                and demo.startswith(THINK_PREFIX)):
            demo = demo[len(THINK_PREFIX):]  # the prompt already opened the thought
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > dcfg.max_prompt_tokens:
            dropped += 1
            continue
        out.append(dataclasses.replace(q, prompt=text, demo=demo))
    return out, dropped


def prepare_tokenizer(tokenizer, cfg) -> None:
    """The run's tokenizer settings: ``data.chat_template`` and ``model.eos_token``."""
    load_chat_template(tokenizer, cfg.data.chat_template)
    if cfg.model.eos_token:
        if tokenizer.convert_tokens_to_ids(cfg.model.eos_token) in (None, tokenizer.unk_token_id):
            raise DataError(f"model.eos_token={cfg.model.eos_token!r}: not a token of this tokenizer")
        tokenizer.eos_token = cfg.model.eos_token


def load_chat_template(tokenizer, template: str) -> None:
    """``data.chat_template``: a .jinja file (or inline Jinja text) replacing the tokenizer's."""
    if not template:
        return
    path = Path(template)
    if path.suffix == ".jinja":
        if not path.exists():
            raise DataError(f"data.chat_template={template}: file does not exist")
        template = path.read_text()
    tokenizer.chat_template = template
