"""Training and test questions: the toy task, and readers for data files.

``load_questions(spec, fmt, split)`` returns ``Question`` records. A bad row raises
``DataError`` naming the file, the row (1-based) and the field.

Formats:
  jsonl   one object per line: prompt, answer, optional id, demo, source, level
  gsm8k   question, answer ("reasoning #### N"): the reasoning is the demonstration
  math    problem, solution (with \\boxed{}): the boxed content is the answer
"""
from __future__ import annotations

import json
from pathlib import Path

from relift_ray.records import Question
from relift_ray.rewards import last_boxed


class DataError(ValueError):
    """A data row is malformed; the message names the file, row and field."""


def load_questions(spec: str, fmt: str = "auto", split: str = "train") -> list[Question]:
    if spec == "toy":
        from relift_ray.toy.task import make_questions
        return make_questions(split)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: data file does not exist")
    if fmt == "auto":
        fmt = "parquet" if path.suffix == ".parquet" else _sniff(path)
    reader = {"jsonl": _plain, "gsm8k": _gsm8k, "math": _math}.get(fmt)
    if reader is None:
        raise DataError(f"{spec}: format {fmt!r} is not readable here (jsonl, gsm8k, math)")
    out = []
    for row_no, row in _rows(path):
        out.append(reader(path, row_no, row))
    return out


def _rows(path: Path):
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


def _sniff(path: Path) -> str:
    for _, row in _rows(path):
        if "question" in row and "answer" in row and "####" in str(row["answer"]):
            return "gsm8k"
        if "problem" in row and "solution" in row:
            return "math"
        return "jsonl"
    raise DataError(f"{path}: no rows")


def _field(path, row_no, row, name, kind=str, required=True):
    if name not in row or row[name] is None:
        if required:
            raise DataError(f"{path}: row {row_no}: field '{name}' is missing")
        return None
    value = row[name]
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind) or (kind is str and required and not value.strip()):
        raise DataError(f"{path}: row {row_no}: field '{name}' must be a non-empty {kind.__name__},"
                        f" got {value!r}"[:300])
    return value


def _plain(path, row_no, row) -> Question:
    level = _field(path, row_no, row, "level", int, required=False)
    return Question(id=str(row.get("id", f"{path.stem}-{row_no}")),
                    prompt=_field(path, row_no, row, "prompt"),
                    answer=_field(path, row_no, row, "answer"),
                    demo=_field(path, row_no, row, "demo", required=False),
                    source=str(row.get("source", path.stem)), level=level or 0)


def _gsm8k(path, row_no, row) -> Question:
    text = _field(path, row_no, row, "answer")
    if "####" not in text:
        raise DataError(f"{path}: row {row_no}: field 'answer' has no '#### <answer>'")
    reasoning, final = text.rsplit("####", 1)
    final = final.strip().replace(",", "")
    return Question(id=f"gsm8k-{row_no}", prompt=_field(path, row_no, row, "question"),
                    answer=final, demo=f"{reasoning.strip()}\nThe answer is \\boxed{{{final}}}.",
                    source="gsm8k")


def _math(path, row_no, row) -> Question:
    solution = _field(path, row_no, row, "solution")
    answer = row.get("answer") or last_boxed(solution)
    if not answer:
        raise DataError(f"{path}: row {row_no}: field 'solution' has no \\boxed{{}} answer")
    level = str(row.get("level", ""))
    return Question(id=str(row.get("unique_id", f"{path.stem}-{row_no}")),
                    prompt=_field(path, row_no, row, "problem"), answer=str(answer),
                    demo=solution, source="math",
                    level=int(level[-1]) if level[-1:].isdigit() else 0)
