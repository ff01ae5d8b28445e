"""Tracking: MLflow (local file store by default) and Ray metrics for the dashboard.

``Tracker`` lives in the driver: it opens the run, logs the flattened config as params and the
resolved YAML, and at the end the evaluation, the per-question table and the final checkpoint.
``StepLogger`` lives in learner rank 0 (Ray Train V2 rejects MLflow callbacks): per-step
metrics to the same run, and the same key figures as ``ray.util.metrics`` gauges.
"""
from __future__ import annotations

import csv
import logging
import math
import tempfile
import time
from pathlib import Path

import ray
from ray.experimental import internal_kv
from ray.util.metrics import Gauge

from relift_ray.tracking import question_plots, timeline

# The step metrics also exported as Ray gauges (Prometheus: ray_relift_<name>{run="<name>"};
# monitoring/relift_grafana_dashboard.json draws them): metric key -> gauge name
RAY_GAUGES = {k: k.replace("/", "_") for k in (
    "reward_mean", "bucket_easy", "bucket_medium", "bucket_hard", "bucket_hardest",
    "buffer_size", "sft_steps", "sft_this_step", "demos_used_unique", "demos_used_total",
    "step_seconds", "gen_seconds", "reward_seconds", "train_seconds", "weight_sync_seconds",
    "gen_tokens_per_s", "reward_timeouts", "staleness", "val/score")}


def finite_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracker:
    """The driver's MLflow run. ``run_id`` of an earlier run (a resumed training run) continues
    that run instead of opening a new one, if the store still has it."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict | None = None,
                 artifact_root: str | None = None, run_id: str | None = None):
        # MLflow (~1.5 s of imports): only where a run logs
        import mlflow
        self.mlflow = mlflow
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its database set-up lines
        mlflow.set_tracking_uri(uri)  # never the implicit ./mlflow.db of the current folder
        if mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=artifact_root)
        mlflow.set_experiment(experiment)
        self.resumed = False
        if run_id:
            try:
                mlflow.MlflowClient(uri).get_run(run_id)
                self.resumed = True
            except Exception:  # gone from the store: a new run
                run_id = None
        self.run = (mlflow.start_run(run_id=run_id) if run_id
                    else mlflow.start_run(run_name=run_name, tags=tags or {}))
        self.run_id = self.run.info.run_id
        self.uri = uri

    def log_config(self, cfg) -> None:
        """Params and config.yaml. A resumed run keeps its params (MLflow never changes one);
        values that differ now are listed in the tag ``resumed_with`` and the new config is
        saved beside the first as config-resumed.yaml."""
        flat = {k: ("" if v is None else v) for k, v in cfg.flat().items()}
        if not self.resumed:
            self.mlflow.log_params(flat)
            self.mlflow.log_text(cfg.to_yaml(), "config.yaml")
            return
        logged = self.mlflow.MlflowClient(self.uri).get_run(self.run_id).data.params
        self.mlflow.log_params({k: v for k, v in flat.items() if k not in logged})
        changed = {k: v for k, v in flat.items() if k in logged and logged[k] != str(v)}
        if changed:
            self.mlflow.set_tag("resumed_with", " ".join(f"{k}={v}" for k, v in changed.items()))
        self.mlflow.log_text(cfg.to_yaml(), "config-resumed.yaml")

    def logged(self, prefix: str) -> dict:
        """The run's latest values of the metrics named ``prefix...``, without the prefix."""
        metrics = self.mlflow.MlflowClient(self.uri).get_run(self.run_id).data.metrics
        return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.mlflow.log_metrics(finite_metrics(metrics), step=step)

    def log_table(self, rows: list[dict], name: str) -> str:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            write_csv(rows, path)
            self.mlflow.log_artifact(str(path))
        return name

    def log_timeline(self, events: list[dict], title: str = "") -> None:
        """timeline.png (relift_ray.tracking.timeline) and the events as timeline.json."""
        if not events:
            return
        with tempfile.TemporaryDirectory() as d:
            self.mlflow.log_artifact(str(timeline.draw(events, Path(d) / "timeline.png", title)))
        self.mlflow.log_dict(events, "timeline.json")

    def log_policy(self, path: str | Path, name: str, registered: str, alias: str,
                   max_new_tokens: int = 512, tags: dict | None = None) -> str:
        """An HF policy folder as an MLflow model (transformers flavour, text generation,
        greedy by default; ``max_new_tokens`` and sampling settings overridable per call),
        registered as a version of ``registered`` with ``alias`` and ``tags`` (the base model,
        a LoRA run's adapter); returns its models:/ URI."""
        # MLflow (~1.5 s of imports): only where a run logs
        import mlflow
        import mlflow.transformers
        import torch
        import transformers
        from mlflow.models import infer_signature

        # not its notes on a local folder having no hub model card or licence (seen on a GPU
        # machine with a newer huggingface_hub): the policy is ours, not a hub model
        logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
        params = {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": 1.0,
                  "top_p": 1.0}
        info = mlflow.transformers.log_model(
            transformers_model=str(path), name=name, task="text-generation",
            registered_model_name=registered,
            signature=infer_signature(["Q: 1+1"], ["2"], params=params),
            model_config={"return_full_text": False, **params},
            # pinned here: inferring them imports packages (torchvision) we do not have
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"transformers=={transformers.__version__}"])
        client = self.mlflow.MlflowClient()
        client.set_registered_model_alias(registered, alias, info.registered_model_version)
        for key, value in (tags or {}).items():
            client.set_model_version_tag(registered, info.registered_model_version, key,
                                         str(value))
        return f"models:/{registered}@{alias}"

    def log_questions(self, rows: list[dict], folder: Path, title: str = "") -> dict:
        """The question table as pictures (relift_ray.tracking.question_plots): questions.png and
        question_transitions.json, written to ``folder`` and logged; returns the transitions."""
        import json

        moves = question_plots.transitions(rows)
        pic = question_plots.draw(rows, Path(folder) / "questions.png", title)
        (Path(folder) / "question_transitions.json").write_text(json.dumps(moves, indent=1))
        self.mlflow.log_artifact(str(pic))
        self.mlflow.log_dict(moves, "question_transitions.json")
        return moves

    def set_tags(self, tags: dict) -> None:
        self.mlflow.set_tags(tags)

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)


def share_run_id(key: str, run_id: str) -> None:
    """Leave the job's MLflow run id in Ray's key-value store (GCS), where ``StepLogger`` in a
    learner finds it: the learner group starts before the driver has opened the run (MLflow's
    import and store set-up would otherwise delay step 1), and the store outlives any actor's
    restart. ``key`` names the Ray job, so a re-run of the same name never reads an old id."""
    internal_kv._internal_kv_put(key, run_id, overwrite=True)


def shared_run_id(key: str, timeout: float = 600.0) -> str:
    """The run id ``share_run_id`` left under ``key``, waiting for it up to ``timeout``."""
    deadline = time.time() + timeout
    while True:
        value = internal_kv._internal_kv_get(key)
        if value:
            return value.decode()
        if time.time() > deadline:
            raise TimeoutError(f"no MLflow run id under {key!r} after {timeout:g} s")
        time.sleep(0.1)


def run_id_key(run_name: str) -> str:
    return f"relift/{ray.get_runtime_context().get_job_id()}/{run_name}/mlflow_run_id"


class StepLogger:
    """Per-step metrics to an MLflow run and to Ray gauges, written by a background thread so
    that MLflow's latency stays off the training step. ``close()`` waits for what is queued.
    ``run_id`` may be a function returning it (``shared_run_id``): the thread calls it before
    its first write, and the steps logged meanwhile keep their own times."""

    def __init__(self, uri: str, run_id, run_name: str = ""):
        import queue
        import threading

        self.uri, self.run_id = uri, run_id
        self.gauges, self.tags = {}, {"run": run_name or "relift"}
        try:
            self.gauges = {k: Gauge(f"relift_{name}", description=f"relift_ray {k}",
                                    tag_keys=("run",))
                           for k, name in RAY_GAUGES.items()}
        except Exception:  # not inside Ray: MLflow only
            pass
        self.queue: queue.Queue = queue.Queue()
        self.closing = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._drain, name="mlflow-step-logger",
                                       daemon=True)
        self.thread.start()

    def log(self, step: int, metrics: dict) -> None:
        clean = finite_metrics(metrics)
        for k, g in self.gauges.items():
            if k in clean:
                g.set(clean[k], tags=self.tags)
        self.queue.put((step, int(time.time() * 1000), clean))

    def set_tags(self, tags: dict) -> None:
        """Tags on the run (written with the next metrics)."""
        self.queue.put(("tags", {k: str(v) for k, v in tags.items()}))

    def _drain(self) -> None:
        import queue

        batch = [self.queue.get()]  # MLflow's import (~1 s of CPU) waits for the first step,
        # so that it does not slow that step down in a start-up that fills the cores
        if batch == [None]:  # closed before anything was logged
            return
        # MLflow: only where a run logs
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
        client = MlflowClient(self.uri)
        while True:
            # what is queued goes in one write, and at most one write a second: each write is
            # a database transaction, which would otherwise cost the learner a few % per step
            while True:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            items = [b for b in batch if b is not None and b[0] != "tags"]
            tags = {k: v for b in batch if b is not None and b[0] == "tags"
                    for k, v in b[1].items()}
            metrics = [Metric(k, v, now, step) for step, now, clean in items
                       for k, v in clean.items()]
            if callable(self.run_id):
                try:
                    self.run_id = self.run_id()
                except Exception as e:
                    self.run_id, self.error = None, e
            if self.run_id is not None:
                try:
                    for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
                        client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
                    for k, v in tags.items():
                        client.set_tag(self.run_id, k, v)
                except Exception as e:  # keep training; say so once, at close
                    self.error = self.error or e
            if stop:
                return
            self.closing.wait(1.0)
            batch = [self.queue.get()]

    def close(self) -> None:
        self.closing.set()
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            print(f"[tracking] some step metrics did not reach MLflow: {self.error}", flush=True)


def write_csv(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row)) if rows else ["id"]
    with path.open("w", newline="") as f:  # every row's columns (a missing cell is empty)
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)
