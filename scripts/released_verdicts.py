"""The released reward's verdicts on the answer-variant corpus (tests/released_corpus.py),
written to tests/data/released_verdicts.jsonl for tests/test_rewards.py.

It must run where math-verify is the release's own pin, which the project cannot install beside
its newer one, so in a venv of its own:

    python -m venv /tmp/mv06
    /tmp/mv06/bin/pip install "math-verify[antlr4_9_3]==0.6.0" latex2sympy2_extended==1.0.9 \
        sympy==1.13.3
    /tmp/mv06/bin/python scripts/released_verdicts.py [--shared ../shared/data]

The scorer below is the released one as its code reads (TheRoadQaQ/ReLIFT @ eb95454,
relift/verl/verl/relift/math_verify_reward.py with the reward manager of main_ppo.py):
"<think>\\n" is put in front of the response; a response without both "<think>" and "</think>"
scores 0; the text after the first "</think>" (up to a second one) is parsed with
math-verify's defaults, the ground truth as "$truth$", and verified with its defaults (gold
first); any exception scores 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from released_corpus import corpus  # noqa: E402


def released_verdict(response: str, truth: str) -> int:
    from math_verify import parse, verify
    text = "<think>\n" + response
    if "<think>" not in text or "</think>" not in text:
        return 0
    try:
        pred = parse(text.split("</think>")[1])
        gold = parse("$" + truth + "$")
        return int(bool(verify(gold, pred)))
    except Exception:
        return 0


def main() -> int:
    import math_verify
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "tests/data/released_verdicts.jsonl"))
    args = ap.parse_args()
    version = getattr(math_verify, "__version__", None)
    from importlib.metadata import version as dist_version
    version = version or dist_version("math-verify")
    if version != "0.6.0":
        print(f"math-verify {version}: the released verdicts need 0.6.0 (see the docstring)",
              file=sys.stderr)
        return 2
    items = corpus(Path(args.shared))
    with open(args.out, "w") as f:
        f.write(json.dumps({"math_verify": version, "items": len(items)}) + "\n")
        for i, (item, response, gold) in enumerate(items):
            f.write(json.dumps({"id": item, "verdict": released_verdict(response, gold)}) + "\n")
            if i % 1000 == 0:
                print(f"{i}/{len(items)}", flush=True)
    print(f"{len(items)} verdicts in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
