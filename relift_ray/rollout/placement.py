"""Where the GPUs go: placement groups for the vLLM engines and the learners beside them.

Two layouts, chosen by ``generator.colocate``:

- **colocated** (the hybrid engine): one placement group with one bundle per GPU,
  ``{"GPU": 1, "CPU": generator_cpus}``. Engine i runs in bundle i and holds its GPU; learner
  worker i trains on the same GPU. Ray Train makes its own placement group for its workers and
  cannot be handed ours, so each learner worker asks Ray for CPUs only, is sent to the node of
  its bundle (a label selector on Ray's ``ray.io/node-id`` label), and selects the bundle's
  GPU itself (``pin_learner_gpu``), the one its engine reported. An engine and its learner
  therefore share a GPU on one node or many, and an engine Ray restarts comes back in the
  same bundle, on the same GPU.
- **separate** (engines on GPUs of their own, weights over NCCL or the object store): one
  placement group per engine with ``tensor_parallel_size`` bundles of one GPU on one node
  (STRICT_PACK); the engine's actor sits in its first bundle and vLLM's tensor-parallel
  workers in the group (vLLM uses the placement group it runs in). The learners take whole
  GPUs through Ray Train as usual, from the GPUs the engines left.

``plan`` computes the bundles from the config alone; ``simulate`` places them on nodes the
way Ray's PACK strategy fills them (tests check layouts for 1 and 2 nodes of 8 GPUs with it).
Imports no Ray at module level.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

NODE_LABEL = "ray.io/node-id"  # Ray's built-in label: the node's id


@dataclass
class Layout:
    kind: str  # colocated | separate
    groups: list[list[dict]]  # the placement groups' bundles
    strategy: str  # PACK (colocated: bundles may span nodes) | STRICT_PACK (one engine's GPUs)
    # engine i -> (group, bundle) it runs in
    engine_bundle: list[tuple[int, int]] = field(default_factory=list)
    engine_gpus: float = 1.0  # the GPU each engine's actor asks for inside its bundle

    @property
    def gpus(self) -> int:
        return int(sum(b.get("GPU", 0) for g in self.groups for b in g))


def plan(cfg) -> Layout | None:
    """The placement groups of this run's vLLM engines (None without vLLM on GPUs)."""
    g, c = cfg.generator, cfg.cluster
    if g.backend != "vllm" or not c.use_gpu:
        return None
    if g.colocate:
        bundles = [{"GPU": 1, "CPU": c.generator_cpus} for _ in range(c.num_generators)]
        return Layout("colocated", [bundles], "PACK",
                      [(0, i) for i in range(c.num_generators)])
    tp = g.tensor_parallel_size
    groups = [[{"GPU": 1, "CPU": c.generator_cpus if j == 0 else 0} for j in range(tp)]
              for _ in range(c.num_generators)]
    # tensor parallel: the engine's actor asks for no GPU, vLLM's workers take the bundles
    return Layout("separate", groups, "STRICT_PACK",
                  [(i, 0) for i in range(c.num_generators)], engine_gpus=1 if tp == 1 else 0)


def simulate(layout: Layout, nodes: list[int], used: list[int] | None = None
             ) -> list[list[tuple[int, int]]]:
    """Where Ray would put each bundle on nodes with ``nodes[k]`` GPUs (``used``: GPUs
    already taken): [(node, gpu)] per group, PACK filling the nodes in order and STRICT_PACK
    keeping each group on one node. Raises ValueError when the groups do not fit."""
    free = [list(range(used[k] if used else 0, n)) for k, n in enumerate(nodes)]
    out = []
    for group in layout.groups:
        need = [int(b.get("GPU", 0)) for b in group]
        if layout.strategy == "STRICT_PACK":
            k = next((k for k, f in enumerate(free) if len(f) >= sum(need)), None)
            if k is None:
                raise ValueError(f"a group of {sum(need)} GPUs fits on no node ({nodes})")
            out.append([(k, free[k].pop(0)) for _ in need])
            continue
        placed = []
        for _ in need:
            k = next((k for k, f in enumerate(free) if f), None)
            if k is None:
                raise ValueError(f"{layout.gpus} GPUs do not fit on nodes of {nodes} GPUs")
            placed.append((k, free[k].pop(0)))
        out.append(placed)
    return out


def engine_placement() -> tuple[str, str]:
    """In an engine's actor: (node id, Ray GPU id) of the GPU Ray gave it."""
    ids = [str(x) for x in ray.get_gpu_ids()]
    return ray.get_runtime_context().get_node_id(), ids[0] if ids else ""


def learner_gpu(engines: list[tuple[str, str]], node: str, local_rank: int) -> str:
    """The GPU of a colocated learner worker: the ``local_rank``-th engine (in engine order)
    on the worker's node. ``engines``: (node id, GPU id) of each engine, as they reported."""
    mine = [gpu for n, gpu in engines if n == node]
    if local_rank >= len(mine):
        raise RuntimeError(f"learner with local rank {local_rank} on node {node[:12]} has no "
                           f"colocated engine there (engines on this node: {len(mine)}); "
                           f"Ray Train placed the learners unlike their engines")
    return mine[local_rank]


def cuda_index(gpu: str) -> int:
    """The CUDA device index of Ray GPU id ``gpu`` in this process: its position in
    CUDA_VISIBLE_DEVICES when that is set, else the id itself."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if v.strip()]
    if visible:
        if gpu not in visible:
            raise RuntimeError(f"GPU {gpu} is not visible to this learner "
                               f"(CUDA_VISIBLE_DEVICES={','.join(visible)})")
        return visible.index(gpu)
    return int(gpu)


def pin_learner_gpu(engines: list[tuple[str, str]]) -> int:
    """In a colocated learner worker: select the GPU of this worker's engine; returns its
    CUDA index."""
    # Ray Train and torch: on a learner worker only
    import ray.train
    import torch

    ctx = ray.train.get_context()
    gpu = learner_gpu(engines, ray.get_runtime_context().get_node_id(), ctx.get_local_rank())
    index = cuda_index(gpu)
    torch.cuda.set_device(index)
    # DeepSpeed places the engine on cuda:LOCAL_RANK (Ray Train's local rank): make it this
    # GPU, which is the local rank only when the node's engines got GPUs in rank order
    os.environ["LOCAL_RANK"] = str(index)
    return index


def create_groups(layout: Layout, name: str, timeout_s: float = 600.0) -> list:
    """The layout's placement groups, once Ray has reserved them all; a clear error naming
    what is missing when the cluster cannot hold them."""

    groups = [placement_group(b, strategy=layout.strategy, name=f"{name}-gpus-{i}")
              for i, b in enumerate(layout.groups)]
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups),
                        timeout=timeout_s)
    if len(ready) < len(groups):
        for g in groups:
            remove_placement_group(g)
        have = ray.cluster_resources().get("GPU", 0)
        raise RuntimeError(
            f"the {layout.kind} layout needs {layout.gpus} GPUs in {len(groups)} placement "
            f"group(s) ({layout.strategy}); the cluster has {have:g} GPUs and Ray could not "
            f"reserve them in {timeout_s:g} s (cluster.num_generators, "
            f"generator.tensor_parallel_size, cluster.num_learners)")
    return groups


def engine_options(layout: Layout, groups: list, i: int) -> dict:
    """Ray actor options placing engine ``i`` in its bundle."""

    g, b = layout.engine_bundle[i]
    return {"num_gpus": layout.engine_gpus, "scheduling_strategy":
            PlacementGroupSchedulingStrategy(groups[g], placement_group_bundle_index=b,
                                             placement_group_capture_child_tasks=True)}


def learner_label_selectors(engines: list[tuple[str, str]]) -> list[dict]:
    """One label selector per learner worker: the node of the engine it shares a GPU with."""
    return [{NODE_LABEL: node} for node, _ in engines]
