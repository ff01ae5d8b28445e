"""cluster.yaml is a valid Ray cluster launcher config (checked offline against Ray's schema),
and its own start commands make a token-authenticated cluster (slow: two nodes here)."""
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from helpers import bare_env, stop_group

from relift_ray.background import free_ports
from relift_ray.runtime.cluster import user_token

ROOT = Path(__file__).resolve().parent.parent


def test_cluster_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert any("relift_ray" in c for c in config["setup_commands"])


def start_commands(config: dict, kind: str) -> list[str]:
    """The yaml's start commands of a node kind, without `ray stop` (on this machine it would
    stop every Ray of the user's, not only this test's)."""
    return [" ".join(c.split()) for c in config[f"{kind}_start_ray_commands"]
            if c.strip() != "ray stop"]


def local_node(command: str, ports: dict, extra: str) -> str:
    """A yaml start command made to run beside other Ray clusters on one machine: its fixed
    ports swapped for free ones, the launcher's autoscaling config left out (`ray up` writes
    it), and `extra` flags (each node's CPUs, temp folder, the head's other ports) added."""
    command = re.sub(r"--autoscaling-config=\S+", "", command)
    for fixed, free in ports.items():
        command = command.replace(fixed, free)
    return f"{command} --block {extra}"


@pytest.mark.slow
def test_cluster_yamls_start_commands_make_a_token_cluster_that_refuses_others(tmp_path):
    """The yaml's own head and worker commands as a two-node cluster on loopback: the token
    of the user's ~/.ray/auth_token (file_mounts copies it to every node) lets the worker
    join and `ray job submit` run the toy job on both nodes; another token is refused."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert "~/.ray/auth_token" in config["file_mounts"]
    (head_cmd,), (worker_cmd,) = start_commands(config, "head"), start_commands(config, "worker")
    assert "RAY_AUTH_MODE=token" in head_cmd and "RAY_AUTH_MODE=token" in worker_cmd
    assert "0.0.0.0" not in head_cmd

    home = tmp_path / "home"  # the nodes' home, as file_mounts leaves it: the token inside
    user_token(home / ".ray" / "auth_token")
    bin_dir = str(Path(sys.executable).parent)
    env = bare_env()
    env.update(HOME=str(home), PATH=f"{bin_dir}:{env['PATH']}", RAY_HEAD_IP="127.0.0.1")
    gcs, om1, om2, dash, agent, agent_grpc, metrics, runtime, client, w_agent, w_grpc, \
        w_metrics, w_runtime = free_ports(13, "127.0.0.1")
    ports = {"--port=6379": f"--port={gcs}", ":6379": f":{gcs}"}
    temp = tempfile.mkdtemp(prefix="ry", dir="/tmp")  # Ray's socket paths must stay short
    head = local_node(head_cmd, {**ports, "-port=8076": f"-port={om1}"},
                      f"--num-cpus=1 --node-ip-address=127.0.0.1 --temp-dir={temp} "
                      f"--dashboard-port={dash} --dashboard-agent-listen-port={agent} "
                      f"--dashboard-agent-grpc-port={agent_grpc} "
                      f"--metrics-export-port={metrics} --runtime-env-agent-port={runtime} "
                      f"--ray-client-server-port={client}")
    worker = local_node(worker_cmd, {**ports, "-port=8076": f"-port={om2}"},
                        f"--num-cpus=8 --node-ip-address=127.0.0.1 "
                        f"--dashboard-agent-listen-port={w_agent} "
                        f"--dashboard-agent-grpc-port={w_grpc} "
                        f"--metrics-export-port={w_metrics} --runtime-env-agent-port={w_runtime}")
    started = []

    def node(command: str, name: str, node_env: dict) -> subprocess.Popen:
        p = subprocess.Popen(["bash", "-c", command], env=node_env, start_new_session=True,
                             stdout=open(tmp_path / f"{name}.log", "w"),
                             stderr=subprocess.STDOUT)
        started.append(p)
        return p

    address = f"http://127.0.0.1:{dash}"
    ray_cli = str(Path(bin_dir) / "ray")

    user = {**env, "RAY_AUTH_MODE": "token"}  # where `ray job submit` runs (the yaml says so)

    def ray(*args, cli_env=user, timeout=120):
        return subprocess.run([ray_cli, *args], env=cli_env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    def alive_nodes() -> int:
        r = ray("list", "nodes", "--address", address, "--format", "json")
        return sum(n["state"] == "ALIVE" for n in json.loads(r.stdout)) if r.returncode == 0 \
            else -1

    try:
        node(head, "head", env)
        deadline = time.time() + 180
        while ray("job", "list", "--address", address).returncode != 0:
            assert time.time() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(3)
        node(worker, "worker", env)
        while alive_nodes() != 2:
            assert time.time() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(3)

        # another token: neither a node nor a job gets in
        other = tmp_path / "other"
        user_token(other / ".ray" / "auth_token")
        intruder_env = {**user, "HOME": str(other)}
        r = ray("job", "submit", "--address", address, "--", "echo", "in", cli_env=intruder_env)
        assert r.returncode != 0, r.stdout + r.stderr
        assert ray("job", "list", "--address", address).stdout.count("raysubmit") == 0
        intruder = node(local_node(worker_cmd, {**ports, "-port=8076": f"-port={free_ports(1)[0]}"},
                                   "--num-cpus=1 --node-ip-address=127.0.0.1"),
                        "intruder", intruder_env)
        time.sleep(30)
        assert alive_nodes() == 2
        assert intruder.poll() is None or intruder.returncode != 0

        # with the token: the toy job runs, its actors on both nodes
        out = tmp_path / "runs"
        r = ray("job", "submit", "--address", address, "--submission-id", "yaml-toy", "--",
                sys.executable, str(ROOT / "jobs" / "train.py"), f"output_dir={out}",
                "train.steps=2", "algo.batch_size=8", "algo.buffer_size=4", "name=yaml",
                "data.max_test_questions=16", timeout=900)
        assert r.returncode == 0 and "Job 'yaml-toy' succeeded" in r.stdout, \
            (r.stdout + r.stderr)[-5000:]
        actors = json.loads(ray("list", "actors", "--address", address, "--format", "json",
                                "--detail", "--limit", "1000").stdout)
        nodes = {a["node_id"] for a in actors if a.get("node_id")}
        assert len(nodes) == 2, [(a["class_name"], a["node_id"]) for a in actors]
    finally:
        for p in reversed(started):
            stop_group(p)
        shutil.rmtree(temp, ignore_errors=True)
