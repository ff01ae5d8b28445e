"""The embedded default task: arithmetic with worked, step-by-step demonstrations.

Four difficulty levels. The base model is pretrained on levels 1-2 and a handful of level-3
examples: level 3 is within partial reach (RL can sharpen it), level 4 uses an operation the
base model never saw (multiplication, worked as repeated addition), so its pass rate starts at
0: RL alone has no signal there, the demonstrations in the hard buffer are what teach it.

    level 1  47+5       ->  47+5=52 \\boxed{52}
    level 2  7+5+3      ->  7+5=12,12+3=15 \\boxed{15}
    level 3  27+5+8     ->  27+5=32,32+8=40 \\boxed{40}
    level 4  27+5*2     ->  27+5=32,32+5=37 \\boxed{37}

Every problem of a level is either in the train split or the test split, fixed by a hash of its
text, so the test questions are never trained on.

A variant, ``toy-teacher`` (``make_teacher_questions``), has the same questions with a
teacher's demonstrations: the same steps, then a verification pass that undoes every step by
subtraction, as a long reasoning model checks its work (about twice as long, in a style and a
procedure the base model never saw; docs/preregistration_toy_claims.md says why):

    level 4  27+5*2     ->  27+5=32,32+5=37.37-5=32,32-5=27 \\boxed{37}
"""
from __future__ import annotations

import hashlib
import itertools

from relift_ray.records import Question

LEVELS = (1, 2, 3, 4)
BASE_LEVELS = (1, 2)  # what the base model is pretrained on
TEST_FRACTION = 0.2


DEMO_STYLES = ("base", "teacher")


def _problems(level: int):
    """Yield (expression, steps, answer) for every problem of a level; the steps are the base
    model's own procedure, "a+b=c" additions joined by commas."""
    digits = range(10)
    if level == 1:
        for a, b in itertools.product(range(90), digits):
            s = a + b
            yield f"{a}+{b}", f"{a}+{b}={s}", s
    elif level == 2:
        for a, b, c in itertools.product(digits, digits, digits):
            s1 = a + b
            yield f"{a}+{b}+{c}", f"{a}+{b}={s1},{s1}+{c}={s1 + c}", s1 + c
    elif level == 3:
        for a, b, c in itertools.product(range(10, 40), digits, (2, 5, 8)):
            s1 = a + b
            yield f"{a}+{b}+{c}", f"{a}+{b}={s1},{s1}+{c}={s1 + c}", s1 + c
    elif level == 4:
        for b, a, m in itertools.product(range(10, 60), range(3, 10), (2, 3)):
            partial, steps = b, []
            for _ in range(m):
                steps.append(f"{partial}+{a}={partial + a}")
                partial += a
            yield f"{b}+{a}*{m}", ",".join(steps), b + a * m
    else:
        raise ValueError(f"toy task has levels {LEVELS}, not {level}")


def prompt_of(expr: str) -> str:
    return f"Q:{expr}\n"


def response_of(steps: str, answer: int) -> str:
    return f"{steps} \\boxed{{{answer}}}"


def teacher_steps(steps: str) -> str:
    """The teacher's trace: the steps, ".", then each step undone by subtraction, last first:
    "27+5=32,32+5=37" -> "27+5=32,32+5=37.37-5=32,32-5=27"."""
    checks = []
    for step in reversed(steps.split(",")):
        lhs, total = step.split("=")
        first, added = lhs.rsplit("+", 1)
        checks.append(f"{total}-{added}={first}")
    return f"{steps}.{','.join(checks)}"


def _in_test(expr: str) -> bool:
    h = int(hashlib.sha256(expr.encode()).hexdigest()[:8], 16)
    return (h % 1000) / 1000 < TEST_FRACTION


def make_questions(split: str = "train", levels=LEVELS, demos: str = "base") -> list[Question]:
    """All questions of the given levels in one split ("train" or "test"), in a fixed order,
    with demonstrations in the base model's own style (``demos="base"``) or the teacher's."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}")
    if demos not in DEMO_STYLES:
        raise ValueError(f"demos must be one of {DEMO_STYLES}, not {demos!r}")
    out = []
    for level in levels:
        for expr, steps, ans in _problems(level):
            if _in_test(expr) == (split == "test"):
                trace = teacher_steps(steps) if demos == "teacher" else steps
                out.append(Question(id=f"toy-L{level}-{expr}", prompt=prompt_of(expr),
                                    answer=str(ans), demo=response_of(trace, ans),
                                    source="toy", level=level))
    return out


def make_teacher_questions(split: str = "train") -> list[Question]:
    """The ``toy-teacher`` data source: the toy questions with the teacher's demonstrations."""
    return make_questions(split, demos="teacher")
