"""jobs/train.py under `ray job submit` against a `ray start --head` cluster with token auth
that this test starts (and stops, by process id: only what it started)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import stop_group

from relift_ray.background import free_ports
from relift_ray.runtime.cluster import new_token

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")



@pytest.fixture
def ray_head(tmp_path, relift_cache, ray_token):
    env = dict(os.environ)  # RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH: the session's token
    gcs, dash, agent, grpc, metrics, runtime = free_ports(6, "127.0.0.1")
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        # Every port its own: another Ray instance on this machine (the session's local cluster
        # of the other tests) already holds the defaults, e.g. the dashboard agent's 52365,
        # and a head whose agent cannot bind answers every submit with "No available agent".
        # The six drawn together, so that no two are the same port.
        [RAY, "start", "--head", "--block", "--num-cpus=8", f"--port={gcs}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime}",
         f"--temp-dir={temp}"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: we stop exactly what we started
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            r = subprocess.run([RAY, "job", "list", "--address", address], env=env,
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            time.sleep(2)
        else:
            pytest.fail("ray head did not come up:\n" + (tmp_path / "head.log").read_text())
        yield address, env, temp
    finally:
        stop_group(head)
        shutil.rmtree(temp, ignore_errors=True)


def agent_logs(temp):
    """The tail of the head's dashboard-agent logs, to say why no agent answered."""
    text = ""
    for log in sorted(Path(temp).glob("session_latest/logs/dashboard_agent*")):
        text += f"\n--- {log.name}\n" + log.read_text(errors="replace")[-3000:]
    return text


def test_default_job_succeeds_under_ray_job_submit(ray_head, tmp_path):
    address, env, temp = ray_head
    out = tmp_path / "runs"
    runtime_env = {"env_vars": {"RELIFT_CACHE": os.environ["RELIFT_CACHE"]}}
    cmd = [RAY, "job", "submit", "--address", address, "--no-wait",
           "--submission-id", "relift-test-job", "--runtime-env-json", json.dumps(runtime_env),
           "--", sys.executable, str(ROOT / "jobs" / "train.py"), f"output_dir={out}",
           "train.steps=3", "algo.batch_size=8", "algo.buffer_size=4", "name=submitted"]
    for _ in range(30):  # the dashboard answers before its job agent is up: retry that case
        submit = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if submit.returncode == 0 or "No available agent" not in submit.stderr + submit.stdout:
            break
        time.sleep(4)
    assert submit.returncode == 0, submit.stderr + submit.stdout + agent_logs(temp)
    # without the token, or with another, the job server refuses: nothing is listed or run
    wrong = new_token(tmp_path / "wrong")
    bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    for bad in ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)},
                {"RAY_AUTH_MODE": "disabled"}):
        r = subprocess.run([RAY, "job", "list", "--address", address], env={**bare, **bad},
                           capture_output=True, text=True)
        assert r.returncode != 0 and "relift-test-job" not in r.stdout, r.stdout + r.stderr
    from ray.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(address)
    deadline = time.time() + 600
    while client.get_job_status("relift-test-job") not in {
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
        time.sleep(3)
    status, logs = client.get_job_status("relift-test-job"), client.get_job_logs("relift-test-job")
    assert status == JobStatus.SUCCEEDED, f"{status}\n{logs[-5000:]}"
    assert "test accuracy" in logs and "SFT steps" in logs
    # the job's own lines reach the job logs; Ray Train's chatter stays in Ray's log files
    assert "[step 3/3]" in logs and "[learner] step 1 done" in logs
    assert "PlacementGroupCleaner" not in logs and "Reporting training result" not in logs

    from mlflow.tracking import MlflowClient
    mlflow = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (exp,) = [e for e in mlflow.search_experiments() if e.name == "relift_ray"]
    (run,) = mlflow.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "submitted"
    assert len(mlflow.get_metric_history(run.info.run_id, "reward_mean")) == 3
