"""Monitoring: the Grafana board in the repository is the one the code builds, and every
metric it draws is exported under that name by a short run (read from the Prometheus
endpoint of the run's Ray node); the run prints a Ray dashboard URL that answers."""
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from relift_ray.background import free_ports
from relift_ray.tracking.monitoring import DASHBOARD_FILE, board_metric_names, grafana_dashboard
from relift_ray.tracking.tracker import RAY_GAUGES

ROOT = Path(__file__).resolve().parent.parent


def test_board_in_the_repository_is_the_generated_one():
    assert json.loads(DASHBOARD_FILE.read_text()) == grafana_dashboard(), \
        "run: python -m relift_ray.tracking.monitoring"
    names = board_metric_names(grafana_dashboard())
    assert names == {f"ray_relift_{n}" for n in RAY_GAUGES.values()}
    board = grafana_dashboard()
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "SessionName",
                                                                  "Run"}



@pytest.mark.e2e
def test_every_board_metric_is_exported_and_the_dashboard_answers(tmp_path, relift_cache):
    port, dash = free_ports(2, "127.0.0.1")
    env = dict(os.environ, RAY_metrics_report_interval_ms="500", RAY_ADDRESS="")
    cmd = [sys.executable, str(ROOT / "jobs/train.py"), f"output_dir={tmp_path}",
           "name=metrics", "cluster.address=local", f"cluster.metrics_export_port={port}",
           f"cluster.dashboard_port={dash}", "train.steps=6", "train.checkpoint_every=6",
           "tracking.eval_every=2", "algo.batch_size=8", "algo.n_samples=4",
           "algo.buffer_size=4", "data.max_test_questions=16"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=ROOT)
    seen: dict[str, str] = {}
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
            for line in text.decode().splitlines():
                m = re.match(r"(ray_relift_\w+)\{([^}]*)\}", line)
                if m:
                    seen[m.group(1)] = m.group(2)
        except Exception:
            pass
        time.sleep(0.5)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:]
    missing = board_metric_names(grafana_dashboard()) - set(seen)
    assert not missing, f"board names not exported: {sorted(missing)}; seen {sorted(seen)}"
    assert 'run="metrics"' in seen["ray_relift_reward_mean"]
    # the job printed the dashboard's URL, after checking that it answers (with the token)
    assert f"[driver] Ray dashboard: http://127.0.0.1:{dash} (it asks for the token: " in out, \
        out[:2000]
