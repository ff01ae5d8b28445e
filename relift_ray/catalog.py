"""The benchmarks of the paper's evaluation: name, file in the data folder, samples per
question (avg@k). Plain data that the config validates against and the data layer reads
(relift_ray.data.benchmarks). Imports nothing of the package."""
from __future__ import annotations

from dataclasses import dataclass


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
    Benchmark("amc", "eval/amc22_23/amc.json", 32,
              what="AMC 12 2022+2023 (the 83 of ReLIFT/LUFFY)"),
    Benchmark("amc23", "eval/amc23/test.jsonl", 32, what="AMC 2023 (40)"),
    Benchmark("minerva", "eval/bundles/luffy_valid.parquet", 1, source="minerva",
              what="Minerva math (LUFFY's extracted answers)"),
    Benchmark("olympiadbench", "eval/olympiadbench/test.jsonl", 1, what="OlympiadBench (675)"),
    Benchmark("gsm8k", "eval/gsm8k/test.jsonl", 1, what="GSM8K test"),
    # out of distribution (the paper's Table 3): multiple choice, the ground truth a letter
    # that math-verify compares with the answer, as the released evaluation scores every set.
    # MMLU-Pro is fetched (ReLIFT's dataset/valid.mmlu_pro.parquet, the released evaluation's
    # input); the other two are not: give the files (eval.files.<name>=path, any format
    # relift_ray.data reads: LUFFY/verl parquet, jsonl) or put them at these paths.
    Benchmark("arc_c", "eval/ood/arc_c.parquet", 1, what="ARC-Challenge (out of distribution)"),
    Benchmark("gpqa_diamond", "eval/ood/gpqa_diamond.parquet", 1,
              what="GPQA-Diamond (out of distribution)"),
    Benchmark("mmlu_pro", "eval/ood/mmlu_pro.parquet", 1,
              what="MMLU-Pro (out of distribution; ReLIFT's valid.mmlu_pro.parquet)"),
]}


# The paper's "Overall" (52.6 for ReLIFT on Qwen2.5-Math-7B): the mean over five competition
# benchmarks and one out-of-distribution one, MMLU-Pro. Minerva and GSM8K are reported beside it.
PAPER_AVERAGE = ["aime24", "aime25", "amc", "math500", "olympiadbench", "mmlu_pro"]


PAPER_BENCHMARKS = PAPER_AVERAGE + ["minerva", "gsm8k"]


OOD_BENCHMARKS = ["arc_c", "gpqa_diamond", "mmlu_pro"]


# no source relift data fetch can read: the user gives the file
NOT_FETCHED = ["arc_c", "gpqa_diamond"]
