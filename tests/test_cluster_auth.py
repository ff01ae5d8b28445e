"""A job's own local Ray cluster is its owner's alone: token auth with a token of its own
(mode 0600, gone when the job ends), refused without it over HTTP (the job server) and gRPC
(the GCS), the dashboard and job server on loopback, and a cluster already running on the
machine is not joined unless named."""
import json
import os
import queue
import stat
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from helpers import bare_env

from relift_ray.background import free_ports
from relift_ray.runtime.cluster import new_token, token_env, user_token

ROOT = Path(__file__).resolve().parent.parent

HOLD = textwrap.dedent('''
    import json, os, sys
    import relift_ray.runtime.cluster as C
    from relift_ray.config import load_config
    cfg = load_config(overrides=[f"cluster.address={sys.argv[1]}",
                                 f"cluster.dashboard_port={sys.argv[2]}"])
    C.init_ray(cfg)
    import ray
    print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "line": C.CLUSTER_LINE,
                      "token": os.environ.get("RAY_AUTH_TOKEN_PATH", ""),
                      "dashboard": C.DASHBOARD_URL}), flush=True)
    sys.stdin.read()  # the cluster lives until the test closes stdin
''')


def hold(address: str, port: int, env: dict):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, address, str(port)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            continue
        if line.startswith("{"):
            return proc, json.loads(line)
    proc.kill()
    pytest.fail("the cluster did not start in 180 s")


def stop(proc) -> None:
    proc.stdin.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def http(url: str, token: str | None = None, body: dict | None = None) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"}
                                             if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def connects(gcs: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", f"import ray; ray.init(address={gcs!r}); print('JOINED')"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


@pytest.mark.e2e
def test_a_jobs_local_cluster_takes_its_own_token_and_refuses_everyone_else(tmp_path):
    d1, d2 = free_ports(2, "127.0.0.1")
    env = bare_env()
    a, info = hold("local", d1, env)
    try:
        token_file = Path(info["token"])
        assert "token auth (a new token in" in info["line"], info["line"]
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        token = token_file.read_text().strip()
        assert len(token) == 64

        # the job server: nothing without the token, nothing with another
        jobs = f"{info['dashboard']}/api/jobs/"
        submit = {"entrypoint": f"touch {tmp_path / 'pwned'}"}
        assert http(jobs) == 401 and http(jobs, "0" * 64) == 403
        assert http(jobs, body=submit) == 401 and http(jobs, "0" * 64, body=submit) == 403
        assert http(jobs, token) == 200

        # the GCS: a driver without the token, or with another, is not let in
        wrong = new_token(tmp_path / "wrong")
        tries = [connects(info["gcs"], {**env, "RAY_AUTH_MODE": "disabled"}),
                 connects(info["gcs"], {**env, **token_env(wrong)}),
                 connects(info["gcs"], {**env, **token_env(token_file)})]
        outs = [p.communicate(timeout=180)[0] for p in tries]
        assert ["JOINED" in o for o in outs] == [False, False, True]
        assert not (tmp_path / "pwned").exists()

        # every port the cluster listens on: the dashboard and job server on loopback; what
        # listens beyond it is gRPC (the token guards it, as above) or Prometheus metrics
        procs = psutil.Process(a.pid).children(recursive=True)
        pids = {p.pid for p in procs}
        listening = [c.laddr for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids]
        dash_port = int(info["dashboard"].rsplit(":", 1)[1])
        assert [x.ip for x in listening if x.port == dash_port] == ["127.0.0.1"]
        for addr in listening:
            if addr.ip in ("127.0.0.1", "::1"):
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{addr.port}/api/jobs/",
                                            timeout=5) as r:
                    answer = r.read(200)
                assert answer.startswith(b"# HELP"), (addr, answer)  # metrics only
            except urllib.error.HTTPError as e:
                assert e.code in (401, 403), addr
            except Exception:  # not HTTP: a gRPC server
                pass

        # "auto" with no RAY_ADDRESS does not join the cluster above: it starts its own
        b, other = hold("auto", d2, env)
        stop(b)
        assert other["gcs"] != info["gcs"] and "of this job's own" in other["line"]
        assert other["token"] != info["token"]
    finally:
        stop(a)
    assert not token_file.parent.exists()  # the token goes with its cluster


@pytest.mark.unit
def test_relift_token_makes_the_users_token_file_private(tmp_path):
    path = tmp_path / ".ray" / "auth_token"
    assert user_token(path) == path and len(path.read_text()) == 64
    token = path.read_text()
    os.chmod(path, 0o644)  # e.g. written by `ray get-auth-token --generate` under umask 022
    assert user_token(path).read_text() == token  # kept, made private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = subprocess.run([str(Path(sys.executable).parent / "relift"), "token", "--path",
                          str(tmp_path / "t")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == str(tmp_path / "t")
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o600
