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
from dataclasses import dataclass
from pathlib import Path

from relift_ray.data import DataError, answer_text, iter_rows, load_questions
from relift_ray.records import Question


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str  # relative to the data folder
    k: int  # the paper's samples per question (avg@k)
    source: str = ""  # bundles: keep the rows of this data_source
    what: str = ""


BENCHMARKS = {b.name: b for b in [
    Benchmark("math500", "eval/math500/test.jsonl", 1, what="MATH-500"),
    Benchmark("aime24", "eval/aime24/test.jsonl", 32, what="AIME 2024"),
    Benchmark("aime25", "eval/aime25/test.jsonl", 32, what="AIME 2025"),
    Benchmark("amc", "eval/amc22_23/amc.json", 32, what="AMC 12 2022+2023 (the 83 of ReLIFT/LUFFY)"),
    Benchmark("amc23", "eval/amc23/test.jsonl", 32, what="AMC 2023 (40)"),
    Benchmark("minerva", "eval/bundles/luffy_valid.parquet", 1, source="minerva",
              what="Minerva math (LUFFY's extracted answers)"),
    Benchmark("olympiadbench", "eval/olympiadbench/test.jsonl", 1, what="OlympiadBench (675)"),
    Benchmark("gsm8k", "eval/gsm8k/test.jsonl", 1, what="GSM8K test"),
    # out of distribution (the paper's Table 3): multiple choice, the ground truth a letter
    # that math-verify compares with the boxed answer, as the released scripts score them.
    # Not in the shared data: give the files (eval.files.<name>=path, any format
    # relift_ray.data reads: LUFFY/verl parquet, jsonl) or put them at these paths.
    Benchmark("arc_c", "eval/ood/arc_c.parquet", 1, what="ARC-Challenge (out of distribution)"),
    Benchmark("gpqa_diamond", "eval/ood/gpqa_diamond.parquet", 1,
              what="GPQA-Diamond (out of distribution)"),
    Benchmark("mmlu_pro", "eval/ood/mmlu_pro.parquet", 1, what="MMLU-Pro (out of distribution)"),
]}
PAPER_BENCHMARKS = ["math500", "aime24", "aime25", "amc", "minerva", "olympiadbench", "gsm8k"]
PAPER_AVERAGE = ["aime24", "aime25", "amc", "math500", "minerva", "olympiadbench"]
OOD_BENCHMARKS = ["arc_c", "gpqa_diamond", "mmlu_pro"]


def default_data_dir() -> Path:
    """$RELIFT_EVAL_DATA, else the shared data folder beside the checkout (../shared/data,
    the developers' machines), else the folder ``relift data fetch`` fills by default."""
    env = os.environ.get("RELIFT_EVAL_DATA") or os.environ.get("RELIFT_SHARED_DATA")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if shared.exists():
        return shared
    from relift_ray.fetch import default_fetch_dir
    return default_fetch_dir()


def benchmark_path(name: str, data_dir: str | Path = "", path: str | Path = "") -> Path:
    """Where benchmark ``name`` is read from: ``path`` (eval.files), else its place in
    ``data_dir`` (default: ``default_data_dir()``)."""
    root = Path(data_dir) if data_dir else default_data_dir()
    return Path(path) if path else root / BENCHMARKS[name].path


def load_benchmark(name: str, data_dir: str | Path = "", limit: int = 0,
                   path: str | Path = "") -> list[Question]:
    """A benchmark's questions (the first ``limit`` when > 0), each with its problem text as
    the prompt; the messages of a bundle are dropped so the run's prompt settings apply.
    ``path``: the benchmark's file itself (eval.files), instead of its place in data_dir."""
    if name not in BENCHMARKS:
        raise DataError(f"benchmark {name!r}: unknown (known: {', '.join(BENCHMARKS)})")
    b = BENCHMARKS[name]
    root = Path(data_dir) if data_dir else default_data_dir()
    path = benchmark_path(name, data_dir, path)
    if not path.exists():
        if name in OOD_BENCHMARKS:
            raise DataError(f"benchmark {name}: {path} does not exist (give it as "
                            f"eval.files.{name}=<file>)")
        from relift_ray.fetch import how_to_get
        raise DataError(how_to_get(name, path))
    if name == "olympiadbench" and path == root / b.path:  # its own layout
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
