"""A corpus of answer variants for the released reward: built from the gold answers of
MATH-500 and GSM8K in the shared data (read from there, never stored here), each response as
the released trainer scores it (the text after "</think>"). Only the items' ids and the released
verdicts are stored (tests/data/released_verdicts.jsonl, made by scripts/released_verdicts.py
with math-verify 0.6.0). Standard library only: the script runs it in a venv holding only the
released pins."""
from __future__ import annotations

import json
import re
from pathlib import Path

THINK = "Let me work through this carefully.\n</think>\n"


def golds(shared: Path, n_math: int = 300, n_gsm8k: int = 200) -> list[tuple[str, str]]:
    """(id, gold answer) of the first MATH-500 and GSM8K test questions."""
    out = []
    with open(shared / "eval/math500/test.jsonl") as f:
        for i, line in zip(range(n_math), f):
            out.append((f"math500/{i}", json.loads(line)["answer"].strip()))
    with open(shared / "eval/gsm8k/test.jsonl") as f:
        for i, line in zip(range(n_gsm8k), f):
            answer = json.loads(line)["answer"].split("####")[-1].strip().replace(",", "")
            out.append((f"gsm8k/{i}", answer))
    return out


def variants(gold: str, other: str) -> dict[str, str]:
    """kind -> response, for one gold answer and another question's (a wrong answer)."""
    v = {
        "boxed": f"{THINK}The answer is \\boxed{{{gold}}}.",
        "final_answer_math": f"{THINK}The final answer is $\\boxed{{{gold}}}$.",
        "wrong": f"{THINK}\\boxed{{{other}}}",
        "self_corrected": f"{THINK}First \\boxed{{{other}}}, but wait, correcting that, "
                          f"\\boxed{{{gold}}}.",
        "corrected_wrong": f"{THINK}First \\boxed{{{gold}}}, but wait, correcting that, "
                           f"\\boxed{{{other}}}.",
        "adjacent_boxes": f"{THINK}\\boxed{{{other}}}\\boxed{{{gold}}}",
        "comma_boxes": f"{THINK}\\boxed{{{gold}}}, \\boxed{{{other}}}",
        "and_boxes": f"{THINK}So \\boxed{{{gold}}} and \\boxed{{{gold}}}",
        "percent": f"{THINK}\\boxed{{{gold}\\%}}",
        "bare": f"{THINK}{gold}",
        "answer_is": f"{THINK}The answer is {gold}.",
        "display": f"{THINK}$$ {gold} $$",
        "no_think_end": f"\\boxed{{{gold}}}",
        "second_think_end": f"draft</think>\\boxed{{{other}}}</think>\\boxed{{{gold}}}",
        "text_units": f"{THINK}\\boxed{{{gold}\\text{{ units}}}}",
        "empty_box": f"{THINK}\\boxed{{}} so \\boxed{{{gold}}}",
    }
    if re.fullmatch(r"-?\d+", gold):
        v["decimal"] = f"{THINK}\\boxed{{{gold}.0}}"
        v["dollars"] = f"{THINK}\\boxed{{\\${gold}}}"
        v["leading_zero"] = f"{THINK}\\boxed{{0{gold}}}"
        v["percent_of_hundredth"] = f"{THINK}\\boxed{{{int(gold) * 100}\\%}}"
    return v


def corpus(shared: Path) -> list[tuple[str, str, str]]:
    """(item id, response, gold) for every variant of every gold."""
    gs = golds(shared)
    items = []
    for (qid, gold), (_, other) in zip(gs, gs[1:] + gs[:1]):
        if other == gold:
            other = gold + "1"
        for kind, response in variants(gold, other).items():
            items.append((f"{qid}/{kind}", response, gold))
    return items
