"""The Grafana board of a run's Ray gauges, in the form of Ray's own dashboards.

The rank-0 learner sets one Ray gauge per step metric (``relift_ray.tracking.tracker.RAY_GAUGES``);
Prometheus scrapes them from every node's metrics endpoint as ``ray_relift_<name>`` with the
labels ``run`` (the run's name) and ``SessionName`` (the Ray session). ``grafana_dashboard()``
builds the board over exactly those names; the repository keeps it as
``monitoring/relift_grafana_dashboard.json`` (``python -m relift_ray.tracking.monitoring``
rewrites it)
and a test checks that every name it draws is exported during a short run.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD_FILE = (Path(__file__).resolve().parents[2] / "monitoring"
                  / "relift_grafana_dashboard.json")
PREFIX = "ray_relift_"

# (title, description, unit, [(gauge name, legend)], stacked)
PANELS = [
    ("Reward", "Mean reward of the step's rollouts.", "percentunit",
     [("reward_mean", "reward")], False),
    ("Questions by bucket", "The step's questions by pass rate: Easy >= 6/8, Medium 3-5/8, "
     "Hard 1-2/8, Hardest 0/8.", "short",
     [("bucket_easy", "easy"), ("bucket_medium", "medium"), ("bucket_hard", "hard"),
      ("bucket_hardest", "hardest")], True),
    ("Hard buffer and SFT phases", "Demonstrations waiting in the hard buffer; SFT steps so "
     "far; 1 on a step that ran an SFT phase.", "short",
     [("buffer_size", "buffer"), ("sft_steps", "SFT steps"), ("sft_this_step", "SFT this step")],
     False),
    ("Demonstrations used", "Distinct demonstrations fine-tuned on, and all uses.", "short",
     [("demos_used_unique", "unique"), ("demos_used_total", "total")], False),
    ("Step time", "Seconds of the step: generation, reward, learner update, weight sync; and "
     "the whole step's wall time.", "s",
     [("gen_seconds", "generation"), ("reward_seconds", "reward"),
      ("train_seconds", "learning"), ("weight_sync_seconds", "sync"),
      ("step_seconds", "step (wall)")], False),
    ("Generation tokens/s", "Sampled tokens per second of the step's generation.", "short",
     [("gen_tokens_per_s", "tokens/s")], False),
    ("Reward timeouts", "Answers whose scoring hit the hard time limit (per step).", "short",
     [("reward_timeouts", "timeouts")], False),
    ("Validation and staleness", "Validation score (tracking.eval_every) and how many weight "
     "versions behind the learners a batch was sampled (algo.max_staleness).", "short",
     [("val_score", "validation"), ("staleness", "staleness")], False),
]


def _variable(name: str, label: str, query: str, hide: int = 0) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": "${datasource}",
            "definition": query, "query": {"query": query, "refId": "StandardVariableQuery"},
            "refresh": 1, "hide": hide, "includeAll": True, "multi": True, "allValue": ".*",
            "sort": 2, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def _panel(i: int, title: str, description: str, unit: str, series: list, stacked: bool
           ) -> dict:
    targets = [{"exemplar": True, "interval": "", "refId": chr(ord("A") + j),
                "expr": f'{PREFIX}{name}{{run=~"$Run", SessionName=~"$SessionName"}}',
                "legendFormat": f"{legend} ({{{{run}}}})"}
               for j, (name, legend) in enumerate(series)]
    return {"id": i + 1, "title": title, "description": description, "type": "graph",
            "datasource": "${datasource}", "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2),
                                                       "y": 1 + 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "lines": True, "linewidth": 1, "fill": 1 if not stacked else 10,
            "stack": stacked, "nullPointMode": "connected", "points": False,
            "legend": {"show": True, "values": True, "current": True, "max": True,
                       "alignAsTable": True},
            "tooltip": {"shared": True, "sort": 0, "value_type": "individual"},
            "xaxis": {"mode": "time", "show": True},
            "yaxes": [{"format": unit, "logBase": 1, "min": "0", "show": True},
                      {"format": "short", "logBase": 1, "show": True}],
            "targets": targets}


def grafana_dashboard() -> dict:
    """The board: one row, a panel per group of gauges, filters by Ray session and run."""
    panels = [{"id": 100, "type": "row", "title": "relift_ray", "collapsed": False,
               "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}, "panels": []}]
    panels += [_panel(i, *p) for i, p in enumerate(PANELS)]
    return {
        "title": "relift_ray", "uid": "reliftRayDashboard", "version": 1, "schemaVersion": 27,
        "editable": True, "graphTooltip": 1, "refresh": "10s", "style": "dark",
        "time": {"from": "now-30m", "to": "now"}, "tags": ["relift_ray"],
        "annotations": {"list": []}, "panels": panels,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 2,
             "refresh": 1, "includeAll": False, "multi": False, "current": {"selected": False},
             "description": "The Prometheus that scrapes the Ray cluster."},
            _variable("SessionName", "Ray session",
                      f"label_values({PREFIX}reward_mean, SessionName)"),
            _variable("Run", "Run", f"label_values({PREFIX}reward_mean, run)")]},
    }


def board_metric_names(board: dict) -> set[str]:
    """Every ray_relift_* name the board's queries read."""
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(rf"{PREFIX}\w+", e)}


def write(path: Path = DASHBOARD_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(grafana_dashboard(), indent=1) + "\n")
    return path


if __name__ == "__main__":
    print(write())
