"""The question table as pictures: how questions moved between buckets, which ones the SFT
phases held, which stay unsolved.

``draw(rows, path)`` reads the rows of ``questions.csv`` (``Scheduler.question_rows``) and
draws three panels:

- left: one line per question (y), its samplings over the steps (x), each a dot coloured by
  the pass rate of its N rollouts; questions grouped by the bucket of their first sampling
  (the policy's view of them when first seen; a fresh run's first samplings are the base
  model's) and ordered by that step; the steps of SFT phases that held a question marked
  with a black tick on its line;
- middle: the share of each bucket among the questions sampled at each step (all questions);
- right: the bucket transitions, first sampling -> last, one bar per first bucket, stacked by
  the last bucket; the hatched part of the Hardest bar is the questions that improved after
  an SFT phase held them. A run shorter than one pass over its questions samples each once
  and has no transitions; the panel says so.

Large runs (tens of thousands of questions) show an even sample of each bucket, at most
``max_questions`` lines in all, every question held by an SFT phase first; the transitions are
counted over all questions. ``transitions(rows)`` gives those counts as data.
"""
from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from pathlib import Path

from relift_ray.core.questions import BUCKETS, bucket_of

COLORS = {"easy": "#2ca02c", "medium": "#bcbd22", "hard": "#ff7f0e", "hardest": "#d62728"}


def history(row: dict) -> list[tuple[int, float]]:
    """[(step, pass rate)] of a row's ``pass_rate_history`` ("s:p" or "s:p@v" tokens)."""
    out = []
    for tok in str(row.get("pass_rate_history") or "").split():
        step, _, rest = tok.partition(":")
        out.append((int(step), float(rest.split("@")[0])))
    return out


def sft_steps(row: dict) -> list[int]:
    return [int(x) for x in str(row.get("sft_steps") or "").split()]


def transitions(rows: list[dict]) -> dict:
    """Counts of first -> last bucket over the questions sampled at least twice; how many
    Hardest questions left Hardest, to which bucket, and how many of them after an SFT phase
    that held them; and how many questions were sampled only once."""
    moves: Counter = Counter()
    hardest_to: Counter = Counter()
    after_sft: Counter = Counter()
    once = 0
    for r in rows:
        h = history(r)
        if len(h) < 2:
            once += len(h)
            continue
        first, last = bucket_of(h[0][1]), bucket_of(h[-1][1])
        moves[f"{first}->{last}"] += 1
        if first == "hardest" and last != "hardest":
            hardest_to[last] += 1
            held = sft_steps(r)
            # held by an SFT phase before the sampling that left Hardest
            left = next(s for s, p in h if p > 0)
            if held and min(held) < left:
                after_sft[last] += 1
    return {"moves": dict(sorted(moves.items())), "hardest_left": dict(hardest_to),
            "hardest_left_after_sft": dict(after_sft), "sampled_once": once,
            "sampled_twice_or_more": sum(moves.values())}


def _sample(rows: list[dict], max_questions: int) -> list[dict]:
    """At most ``max_questions`` rows: SFT-held questions first, then an even share of each
    first bucket; deterministic (ordered by a hash of the id)."""
    if len(rows) <= max_questions:
        return rows
    key = lambda r: zlib.crc32(str(r["id"]).encode())  # noqa: E731
    held = sorted((r for r in rows if sft_steps(r)), key=key)[:max_questions // 2]
    rest = [r for r in rows if not sft_steps(r)]
    by = defaultdict(list)
    for r in sorted(rest, key=key):
        by[bucket_of(history(r)[0][1])].append(r)
    room = max_questions - len(held)
    per = max(1, room // max(len(by), 1))
    return held + [r for b in BUCKETS for r in by[b][:per]]


def draw(rows: list[dict], path: str | Path, title: str = "", max_questions: int = 400
         ) -> Path:
    """questions.png: the samplings of each question and the bucket transitions."""
    # matplotlib: only to draw
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # once the backend is chosen

    path = Path(path)
    rows = [r for r in rows if history(r)]
    fig, (ax, mx, bx) = plt.subplots(1, 3, figsize=(17, 7),
                                     gridspec_kw={"width_ratios": [3, 1.4, 1.2]})
    _samplings(fig, ax, rows, _sample(rows, max_questions), title)
    _bucket_shares(mx, rows)
    _transitions(bx, transitions(rows))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _samplings(fig, ax, rows: list[dict], shown: list[dict], title: str) -> None:
    """Left: one line per question, a dot per sampling coloured by its pass rate, grouped by
    the bucket of the first sampling; SFT phases that held a question as black ticks."""
    groups = defaultdict(list)
    for r in shown:
        groups[bucket_of(history(r)[0][1])].append(r)
    y, ticks = 0, []
    xs, ys, cs, sx, sy = [], [], [], [], []
    for b in BUCKETS:
        qs = sorted(groups.get(b, []), key=lambda r: (history(r)[0][0], str(r["id"])))
        if not qs:
            continue
        start = y
        for r in qs:
            for s, p in history(r):
                xs.append(s), ys.append(y), cs.append(p)
            for s in sft_steps(r):
                sx.append(s), sy.append(y)
            y += 1
        ticks.append(((start + y - 1) / 2, f"{b}\n({len(qs)})"))
        ax.axhline(y - 0.5, color="grey", lw=0.5)
    points = ax.scatter(xs, ys, c=cs, cmap="RdYlGn", vmin=0, vmax=1, s=9, marker="s",
                        linewidths=0)
    if sx:
        ax.scatter(sx, sy, marker="|", color="black", s=14, linewidths=0.8,
                   label="SFT phase held it")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yticks([t for t, _ in ticks], [name for _, name in ticks], fontsize=8)
    ax.set_ylim(y - 0.5, -0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("questions, by bucket when first sampled")
    more = f" ({len(shown)} of {len(rows)} shown)" if len(shown) < len(rows) else ""
    ax.set_title(f"{title + ': ' if title else ''}pass rate of each sampling{more}",
                 fontsize=10)
    fig.colorbar(points, ax=ax, fraction=0.03, pad=0.01, label="pass rate")


def _bucket_shares(mx, rows: list[dict]) -> None:
    """Middle: the share of each bucket among the questions sampled at each step."""
    per_step = defaultdict(Counter)
    for r in rows:
        for st, p in history(r):
            per_step[st][bucket_of(p)] += 1
    steps = sorted(per_step)
    shares = {b: [per_step[st][b] / max(sum(per_step[st].values()), 1) for st in steps]
              for b in BUCKETS}
    mx.stackplot(steps, *[shares[b] for b in BUCKETS], labels=BUCKETS,
                 colors=[COLORS[b] for b in BUCKETS], alpha=0.85)
    mx.set_xlim(min(steps, default=0), max(steps, default=1))
    mx.set_ylim(0, 1)
    mx.set_xlabel("step")
    mx.set_title("buckets of the questions sampled, per step", fontsize=9)
    mx.legend(loc="lower left", fontsize=8)


def _transitions(bx, t: dict) -> None:
    """Right: first -> last bucket, stacked by the last; hatched: left Hardest after SFT."""
    bottoms = [0] * len(BUCKETS)
    for last in BUCKETS:
        heights = [t["moves"].get(f"{first}->{last}", 0) for first in BUCKETS]
        bx.bar(BUCKETS, heights, bottom=bottoms, color=COLORS[last], label=f"-> {last}")
        bottoms = [a + b for a, b in zip(bottoms, heights)]
    fixed = sum(t["hardest_left_after_sft"].values())
    if fixed:  # over the bars of the questions that left Hardest (stacked from 0)
        bx.bar(["hardest"], [fixed], bottom=[0], fill=False, hatch="///",
               edgecolor="black", label="left Hardest after SFT held it")
    bx.set_title(f"first -> last bucket\n({t['sampled_twice_or_more']} questions sampled "
                 f"twice or more; {t['sampled_once']} once)", fontsize=9)
    if not t["sampled_twice_or_more"]:
        bx.text(0.5, 0.5, "every question was sampled once:\nno transitions yet (a run of\n"
                "more than one pass over its\nquestions has them)", ha="center",
                va="center", transform=bx.transAxes, fontsize=9)
        bx.set_yticks([])
    bx.set_xlabel("bucket when first sampled")
    if t["sampled_twice_or_more"]:
        bx.legend(fontsize=8)
