"""GPU layouts: the placement groups built for 1 and 2 nodes of 8 GPUs, each colocated
learner on its engine's GPU, and (on a local Ray cluster with declared GPUs) the real
placement groups, engines and Ray Train workers pairing up."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relift_ray.config import load_config
from relift_ray.errors import ConfigError
from relift_ray.rollout.placement import cuda_index, learner_gpu, plan, simulate
from relift_ray.runtime.cluster import new_token, token_env

GPU = ["generator.backend=vllm", "cluster.use_gpu=true"]


def cfg_of(*extra):
    return load_config(overrides=GPU + list(extra))


def colocated(n):
    return cfg_of("generator.colocate=true", "generator.weight_sync=ipc",
                  f"cluster.num_learners={n}", f"cluster.num_generators={n}",
                  "cluster.generator_cpus=4")


@pytest.mark.parametrize("nodes", [[8], [8, 8]])
def test_colocated_layout_puts_each_learner_on_its_engines_gpu(nodes):
    n = sum(nodes)
    layout = plan(colocated(n))
    assert layout.kind == "colocated" and layout.strategy == "PACK"
    assert layout.groups == [[{"GPU": 1, "CPU": 4}] * n]  # one bundle per GPU
    assert layout.engine_bundle == [(0, i) for i in range(n)] and layout.gpus == n
    (placed,) = simulate(layout, nodes)
    assert sorted(placed) == [(k, g) for k, size in enumerate(nodes) for g in range(size)]
    # the engines report (node, GPU); the learners land one per engine on each node (the
    # label selectors) and take the local_rank-th engine's GPU of their node
    engines = [(f"node{k}", str(g)) for k, g in placed]
    pinned = [(f"node{k}", learner_gpu(engines, f"node{k}", local))
              for k, size in enumerate(nodes) for local in range(size)]
    assert sorted(pinned) == sorted(engines)  # every GPU: one learner, one engine
    with pytest.raises(RuntimeError, match="no colocated engine there"):
        learner_gpu(engines, "node0", 8)


def test_colocated_layout_needs_one_engine_per_learner():
    with pytest.raises(ConfigError, match="num_generators \\(4\\) must equal"):
        cfg_of("generator.colocate=true", "generator.weight_sync=ipc",
               "cluster.num_learners=8", "cluster.num_generators=4")


@pytest.mark.parametrize("tp, nodes, engines", [(1, [8, 8], 8), (2, [8], 4), (4, [8, 8], 4)])
def test_separate_layout_gives_each_engine_its_own_gpus_on_one_node(tp, nodes, engines):
    layout = plan(cfg_of("generator.weight_sync=nccl", f"cluster.num_generators={engines}",
                         f"generator.tensor_parallel_size={tp}", "cluster.generator_cpus=2"))
    assert layout.kind == "separate" and layout.strategy == "STRICT_PACK"
    assert len(layout.groups) == engines and layout.gpus == tp * engines
    assert all(g == [{"GPU": 1, "CPU": 2}] + [{"GPU": 1, "CPU": 0}] * (tp - 1)
               for g in layout.groups)
    # tensor parallel engines leave their GPUs to vLLM's workers in the group
    assert layout.engine_gpus == (1 if tp == 1 else 0)
    placed = simulate(layout, nodes)
    assert all(len({k for k, _ in grp}) == 1 for grp in placed)  # one node per engine
    used = [(k, g) for grp in placed for k, g in grp]
    assert len(set(used)) == len(used)


def test_layouts_that_do_not_fit_and_runs_without_vllm():
    with pytest.raises(ValueError, match="do not fit"):
        simulate(plan(colocated(16)), [8])
    with pytest.raises(ValueError, match="fits on no node"):
        simulate(plan(cfg_of("generator.weight_sync=nccl",
                             "generator.tensor_parallel_size=8")), [4, 4])
    assert plan(load_config(overrides=[])) is None  # transformers on CPU: Ray places it


def test_cuda_index_follows_the_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert cuda_index("6") == 2
    with pytest.raises(RuntimeError, match="not visible"):
        cuda_index("1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cuda_index("3") == 3


SCRIPT = textwrap.dedent('''
    import json, os, sys
    import ray
    from relift_ray.config import load_config
    from relift_ray.rollout.placement import (create_groups, engine_options,
                                              engine_placement, learner_gpu, plan)
    from relift_ray.runtime.topology import learner_resources
    from relift_ray.rollout.placement import learner_label_selectors
    out = sys.argv[1]
    env = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    # a one-node cluster that declares 2 GPUs: Ray hands out GPU ids as on a real node
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False,
             runtime_env={"env_vars": env})
    cfg = load_config(overrides=["generator.backend=vllm", "cluster.use_gpu=true",
                                 "generator.colocate=true", "generator.weight_sync=ipc",
                                 "cluster.num_learners=2", "cluster.num_generators=2",
                                 "cluster.generator_cpus=0.25", "cluster.learner_cpus=0.5"])
    layout = plan(cfg)
    groups = create_groups(layout, "t", timeout_s=60)

    class Engine:
        def placement(self):
            return engine_placement()

    engines = [ray.remote(Engine).options(num_cpus=0.25, **engine_options(layout, groups, i))
               .remote() for i in range(2)]
    where = [tuple(p) for p in ray.get([e.placement.remote() for e in engines])]
    # learners: CPUs only (the GPUs are the engines' bundles), sent to their engines' nodes
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config):
        import ray.train
        ctx = ray.train.get_context()
        node = ray.get_runtime_context().get_node_id()
        gpu = learner_gpu(config["engines"], node, ctx.get_local_rank())
        with open(os.path.join(config["out"], f"learner{ctx.get_world_rank()}.json"), "w") as f:
            json.dump({"node": node, "gpu": gpu, "ray_gpus": ray.get_gpu_ids()}, f)

    TorchTrainer(loop, train_loop_config={"engines": where, "out": out},
                 scaling_config=ScalingConfig(
                     num_workers=2, use_gpu=False,
                     resources_per_worker=learner_resources(cfg, pinned=True),
                     label_selector=learner_label_selectors(where)),
                 run_config=RunConfig(name="placement", storage_path=out)).fit()
    json.dump({"engines": where, "free_gpus": ray.available_resources().get("GPU", 0)},
              open(os.path.join(out, "engines.json"), "w"))
''')


@pytest.mark.e2e
def test_placement_groups_pair_engines_and_learners_on_a_cluster_with_gpus(tmp_path):
    env = dict(os.environ, RAY_ADDRESS="", **token_env(new_token(tmp_path / "auth")))
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "engines.json").read_text())
    engines = sorted(map(tuple, info["engines"]))
    assert sorted(g for _, g in engines) == ["0", "1"]  # each engine its own GPU
    learners = [json.loads((tmp_path / f"learner{i}.json").read_text()) for i in range(2)]
    assert sorted((x["node"], x["gpu"]) for x in learners) == engines
    assert all(x["ray_gpus"] == [] for x in learners)  # the GPUs stay the bundles'
