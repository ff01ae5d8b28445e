"""Starting or joining Ray: ``init_ray(cfg)`` joins the cluster ``cluster.address`` names
or starts a local one (its dashboard on 127.0.0.1), and ``dashboard_line()`` says where the
dashboard is and whether it answers. Every job and ``relift serve`` start Ray here."""
from __future__ import annotations

import os

import ray

from relift_ray.config import RunConfig


def init_ray(cfg: RunConfig) -> None:
    """Join the cluster at ``cluster.address`` ("auto": a running one if there is one), or
    start a local one on this machine."""

    if ray.is_initialized():
        return
    if cfg.cluster.address == "local" or (cfg.cluster.address == "auto"
                                          and not _cluster_running()):
        # A local cluster of our own: no token auth (RAY_AUTH_MODE), and more logical CPUs than
        # cores so fractional actors and two learner workers all fit on a 2-core machine. One
        # node has nothing to be preempted by: Ray Train's preemption watcher (an actor polling
        # the node drain state, ~1 s of a 2-core start-up) stays off. Ray's processes inherit
        # this environment from the driver's, so the job needs no runtime_env: with one (even
        # only env_vars) the Python workers Ray starts ahead of time, which have none, cannot
        # serve its actors, and each actor waits for a worker process of its own.
        for k, v in {"RAY_AUTH_MODE": "disabled",
                     "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}.items():
            os.environ.setdefault(k, v)
        c = cfg.cluster
        extra = {"_metrics_export_port": c.metrics_export_port} if c.metrics_export_port else {}
        ctx = ray.init(num_cpus=c.num_cpus, include_dashboard=c.dashboard,
                       dashboard_host="127.0.0.1", dashboard_port=c.dashboard_port,
                       log_to_driver=c.ray_logs, **extra)
    else:
        ctx = ray.init(address=cfg.cluster.address, log_to_driver=cfg.cluster.ray_logs)
    global DASHBOARD_URL
    DASHBOARD_URL = f"http://{ctx.dashboard_url}" if getattr(ctx, "dashboard_url", "") else ""


DASHBOARD_URL = ""  # the Ray dashboard of the cluster init_ray joined or started ("" = none)


def dashboard_line() -> str:
    """The console line naming the Ray dashboard and whether it answers."""
    if not DASHBOARD_URL:
        return "[driver] Ray dashboard: off (cluster.dashboard=false)"
    import urllib.request
    try:
        urllib.request.urlopen(f"{DASHBOARD_URL}/api/version", timeout=5).read()
        return f"[driver] Ray dashboard: {DASHBOARD_URL}"
    except Exception as e:
        return f"[driver] Ray dashboard: {DASHBOARD_URL} does not answer yet ({e})"


def _cluster_running() -> bool:
    if os.environ.get("RAY_ADDRESS"):
        return True
    try:
        from ray._private.services import find_gcs_addresses  # read-only probe
        return bool(find_gcs_addresses())
    except Exception:
        return False
