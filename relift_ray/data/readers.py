"""Training and test questions: readers for data files and named data sources.

``load_questions(spec, fmt, split)`` returns ``Question`` records. ``spec`` is a named data
source (``toy``, see relift_ray.data.registry) or ``py:module:function`` (called with the
split), a file (``.jsonl``, ``.json`` holding a list of objects, or ``.parquet``), or a
Hugging Face dataset ``hf://owner/name[@revision][/file-glob]`` (downloaded into the HF
cache; needs network access the first time). A bad row raises ``DataError`` naming the file,
the row (1-based) and the field.

Formats (``auto`` tells them apart by the first row's fields):
  luffy   the LUFFY/ReLIFT (verl) parquet rows: prompt = chat messages, target = the
          demonstration, reward_model.ground_truth, extra_info.index, data_source
  gsm8k   question, answer ("reasoning #### N"): the reasoning is the demonstration
  math    problem, solution (with \\boxed{}): the boxed content is the answer (or ``answer``)
  jsonl   plain rows: prompt, answer, optional id, demo, source, level; the field names are
          configurable (``data.prompt_field`` ...)

Prompts are rendered for the model by ``relift_ray.data.prompts``. Imports no Ray.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from relift_ray.core.scoring import last_boxed
from relift_ray.data.registry import data_source
from relift_ray.errors import DataError
from relift_ray.records import Fields, Question

FORMATS = ("auto", "jsonl", "gsm8k", "math", "luffy", "parquet")  # parquet = luffy


def load_questions(spec: str, fmt: str = "auto", split: str = "train",
                   fields: Fields = Fields()) -> list[Question]:
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
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file (.jsonl, .json or .parquet)")
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
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of objects")
        for i, row in enumerate(data, 1):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {i}: expected a JSON object")
            yield i, row
        return
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: row {i}: not UTF-8 text (byte {e.start} of the "
                                f"line)") from None
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
    """``hf://owner/name[@revision][/glob]``: the dataset's data files that the glob matches,
    at ``revision`` (a commit id, branch or tag; the head without one), from the HF cache or
    downloaded into it. Reads .parquet, .jsonl and .json files. Without a glob, the files of
    its train split as the hub names splits (``train.parquet``, ``data/train-00000-of-00004
    .parquet``, ``train/...``; one format, parquet first), else its one data file; a dataset
    holding several files and no train split must be given a glob (reading them all would
    mix splits or repeat rows)."""
    parts = spec[len("hf://"):].strip("/").split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise DataError(f"{spec}: a hub dataset is hf://owner/name[@revision] or "
                        f"hf://owner/name[@revision]/<file glob>")
    name, _, revision = parts[1].partition("@")
    repo = f"{parts[0]}/{name}"
    if revision.startswith("refs"):
        raise DataError(f"{spec}: give the revision as a commit id, branch or tag without '/' "
                        f"(refs/... would be read as the file glob)")
    pattern = parts[2] if len(parts) == 3 else None
    from huggingface_hub import snapshot_download
    try:
        local = Path(snapshot_download(repo, repo_type="dataset", revision=revision or None,
                                       allow_patterns=pattern))
    except Exception as e:
        raise DataError(f"{spec}: could not get the dataset {repo}"
                        f"{' at ' + revision if revision else ''} from the Hugging Face hub "
                        f"({type(e).__name__}: {e})"[:500]) from None
    files = sorted(p for p in local.rglob("*")
                   if p.suffix in (".parquet", ".jsonl", ".json") and p.is_file()
                   and (pattern is None or p.match(pattern) or
                        p.relative_to(local).match(pattern)))
    if not files:
        raise DataError(f"{spec}: no .parquet/.jsonl/.json files"
                        f"{' match ' + pattern if pattern else ''} in dataset {repo}")
    if pattern is None and len(files) > 1:
        files = _train_split(files, local)
    if pattern is None and len(files) > 1:  # reading them all would mix splits or repeat rows
        names = [p.relative_to(local).as_posix() for p in files]
        raise DataError(f"{spec}: dataset {repo} holds {len(files)} data files "
                        f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); name "
                        f"the one(s) to read: hf://{repo}{'@' + revision if revision else ''}"
                        f"/<file or glob>")
    return files


def _train_split(files: list[Path], root: Path) -> list[Path]:
    """The train split's files among a dataset's, by the hub's split names, in one format
    (parquet before jsonl before json); all of them when no file is named as a split."""
    def is_train(p: Path) -> bool:
        parts = p.relative_to(root).parts
        return "train" in parts[:-1] or re.split(r"[^A-Za-z0-9]+", p.stem)[0] == "train"
    train = [p for p in files if is_train(p)]
    for suffix in (".parquet", ".jsonl", ".json"):
        if any(p.suffix == suffix for p in train):
            return [p for p in train if p.suffix == suffix]
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
    """Ground truths stored as numbers: 27.0 -> "27", 0.5 -> "0.5"; a list of answers (a
    multi-part answer) joined by commas, as the verifier reads a tuple: [1, 2] -> "1, 2"."""
    if isinstance(value, (list, tuple)):
        return ", ".join(answer_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _plain(path, row_no, row, fields: Fields) -> Question:
    level = _field(path, row_no, row, "level", int, required=False)
    answer = row.get(fields.answer)
    if isinstance(answer, list) and answer:  # a multi-part answer
        row = {**row, fields.answer: answer_text(answer)}
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
    for name in ("reward_model", "extra_info"):
        if row.get(name) is not None and not isinstance(row[name], dict):
            raise DataError(f"{path}: row {row_no}: field '{name}' must be a mapping, got "
                            f"{row[name]!r}"[:300])
    truth = (row.get("reward_model") or {}).get("ground_truth")
    if isinstance(truth, list):  # a multi-part answer: its parts joined
        truth = answer_text(truth) if truth else None
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


