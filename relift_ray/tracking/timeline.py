"""What ran when: a figure of one run's steps, from the actors' own timestamps.

The scheduler records when each batch's rollouts were sampled (lane "generators") and scored
("reward workers"); learner rank 0 records each step's update ("train") and weight
publication ("sync"). ``draw`` puts them on one time axis, one lane per kind of actor, each
bar labelled with its step: on-policy the lanes take turns; with ``algo.max_staleness`` > 0
generation of the next batches overlaps the learners' update. The driver logs the figure
(timeline.png) and the events (timeline.json) as MLflow artifacts.
"""
from __future__ import annotations

from pathlib import Path

LANES = ("generators", "reward workers")
COLORS = {"generate": "#4C72B0", "reward": "#DD8452", "train": "#55A868", "sync": "#C44E52"}


def overlap_seconds(events: list[dict]) -> float:
    """Seconds during which some generation ran while some learner update ran."""
    gen = sorted((e["start"], e["end"]) for e in events if e["what"] == "generate")
    train = sorted((e["start"], e["end"]) for e in events if e["what"] == "train")
    return sum(max(0.0, min(g1, t1) - max(g0, t0)) for g0, g1 in gen for t0, t1 in train)


def draw(events: list[dict], path: str | Path, title: str = "", max_steps: int = 40) -> Path:
    """The figure of ``events`` (the first ``max_steps`` steps, so the bars stay readable)."""
    # matplotlib: only to draw
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # once the backend is chosen

    first = min((e["step"] for e in events), default=0)
    shown = [e for e in events if e["step"] < first + max_steps]
    lanes = list(LANES) + sorted({e["lane"] for e in shown} - set(LANES))
    t0 = min((e["start"] for e in shown), default=0.0)
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.7 * len(lanes)))
    for e in shown:
        y = lanes.index(e["lane"])
        x, w = e["start"] - t0, max(e["end"] - e["start"], 1e-3)
        ax.broken_barh([(x, w)], (y - 0.35, 0.7), color=COLORS.get(e["what"], "grey"))
        if w > 0.02 * max(1e-9, max(x["end"] for x in shown) - t0):
            ax.text(x + w / 2, y, str(e["step"]), ha="center", va="center", fontsize=7,
                    color="white")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_xlabel("seconds since the first recorded step")
    ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, list(COLORS), loc="upper right", ncol=4, fontsize=8)
    ax.set_title(title or f"steps {first}-{first + max_steps - 1}: generation / learning "
                          f"overlap {overlap_seconds(shown):.1f} s")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
