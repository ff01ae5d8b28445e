"""The math benchmarks of the paper's evaluation, read from a data folder.

The folder has the layout of the project's shared data (see its SOURCES.md): ``eval/math500``,
``eval/aime24``, ... A benchmark's questions carry the problem text only; the evaluation job
adds the prompt (system prompt, chat template) from the run's config, the same for every
benchmark. ``k`` is the paper's number of samples per question at temperature 0.6: avg@32 for
AIME and AMC, one sample for the larger sets. Imports no Ray.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from relift_ray.catalog import BENCHMARKS, NOT_FETCHED
from relift_ray.data.readers import answer_text, iter_rows, load_questions
from relift_ray.data.registry import cache_dir
from relift_ray.errors import DataError
from relift_ray.records import Question


def default_data_dir() -> Path:
    """$RELIFT_EVAL_DATA, else the shared data folder beside the checkout (../shared/data,
    the developers' machines), else the folder ``relift data fetch`` fills by default."""
    env = os.environ.get("RELIFT_EVAL_DATA") or os.environ.get("RELIFT_SHARED_DATA")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"  # beside the checkout
    if shared.exists():
        return shared
    return default_fetch_dir()


def benchmark_path(name: str, data_dir: str | Path = "", path: str | Path = "") -> Path:
    """Where benchmark ``name`` is read from: ``path`` (eval.files), else its place in
    ``data_dir`` (default: ``default_data_dir()``), else in the fetch folder."""
    if path:
        return Path(path)
    # the folder's, else what `relift data fetch` put in its own folder (a set the folder
    # lacks, e.g. MMLU-Pro beside ../shared/data)
    found = (Path(data_dir) if data_dir else default_data_dir()) / BENCHMARKS[name].path
    fetched = default_fetch_dir() / BENCHMARKS[name].path
    return fetched if not found.exists() and fetched.exists() else found


def load_benchmark(name: str, data_dir: str | Path = "", limit: int = 0,
                   path: str | Path = "") -> list[Question]:
    """A benchmark's questions (the first ``limit`` when > 0), each with its problem text as
    the prompt; the messages of a bundle are dropped so the run's prompt settings apply.
    ``path``: the benchmark's file itself (eval.files), instead of its place in data_dir."""
    if name not in BENCHMARKS:
        raise DataError(f"benchmark {name!r}: unknown (known: {', '.join(BENCHMARKS)})")
    b = BENCHMARKS[name]
    path = benchmark_path(name, data_dir, path)
    if not path.exists():
        if name in NOT_FETCHED:
            raise DataError(f"benchmark {name}: {path} does not exist (give it as "
                            f"eval.files.{name}=<file>)")
        raise DataError(how_to_get(name, path))
    if name == "olympiadbench" and path.as_posix().endswith(b.path):  # its own layout
        qs = _olympiad(path)
    else:
        qs = load_questions(str(path))
    if b.source:
        qs = [q for q in qs if q.source == b.source]
    qs = _dedupe(qs)
    qs = [dataclasses.replace(q, id=f"{name}/{q.id}", source=name, messages=()) for q in qs]
    return qs[:limit] if limit > 0 else qs


def _dedupe(qs: list[Question]) -> list[Question]:
    """Bundles repeat small sets (AIME 30 x 8) to average over samples; we sample k instead."""
    seen, out = set(), []
    for q in qs:
        key = (q.prompt, q.answer)
        if key not in seen:
            seen.add(key)
            out.append(q)
    return out


def _olympiad(path: Path) -> list[Question]:
    out = []
    for row_no, row in iter_rows(path):
        finals = row.get("final_answer")
        if not isinstance(finals, list) or not finals:
            raise DataError(f"{path}: row {row_no}: field 'final_answer' must be a non-empty list")
        # "$69$,$84$" -> "69,84": the dollars only delimit the LaTeX
        answer = ", ".join(answer_text(a).replace("$", "").strip() for a in finals)
        problem = row.get("question")
        if not isinstance(problem, str) or not problem.strip():
            raise DataError(f"{path}: row {row_no}: field 'question' is missing")
        if row.get("context"):
            problem = f"{row['context']}\n\n{problem}"
        out.append(Question(id=str(row.get("id", row_no)), prompt=problem, answer=answer,
                            source="olympiadbench"))
    return out


def default_fetch_dir() -> Path:
    return cache_dir() / "benchmarks"


def how_to_get(name: str, path: Path) -> str:
    return (f"benchmark {name}: {path} does not exist. Get the benchmarks once with "
            f"`relift data fetch` (from the hub into {default_fetch_dir()}; the job then runs "
            f"offline), or point eval.data_dir / RELIFT_EVAL_DATA at a folder with that "
            f"layout (docs/paper.md, \"Evaluation data\")")
