"""Calling plain objects and Ray actors the same way.

The scheduler and evaluation hold lists of generators / reward workers that are Ray actor
handles in a job and plain objects in a unit test; ``call_all`` fans a method out over them
(in parallel for actors) and returns the results in order.
"""
from __future__ import annotations

from relift_ray.records import Reward


def is_actor(obj) -> bool:
    return type(obj).__name__ == "ActorHandle"


def in_actor() -> bool:
    """Whether this code runs inside a Ray actor."""
    import sys
    if "ray" not in sys.modules:
        return False
    # Ray only for actor handles: in-process runs and tests never import it
    import ray
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def actor_pid(actor) -> int:
    """The process id of a Ray actor."""
    import os

    # Ray only for actor handles: in-process runs and tests never import it
    import ray
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def call(obj, method: str, *args, **kwargs):
    """One call on a plain object or a Ray actor (waiting for the result)."""
    if is_actor(obj):
        # Ray only for actor handles: in-process runs and tests never import it
        import ray
        return ray.get(getattr(obj, method).remote(*args, **kwargs))
    return getattr(obj, method)(*args, **kwargs)


def tell(obj, method: str, *args) -> None:
    """One call on a plain object or a Ray actor, not waiting for it (a notice)."""
    if is_actor(obj):
        getattr(obj, method).remote(*args)
    else:
        getattr(obj, method)(*args)


def call_all(objs: list, method: str, args: list[tuple]) -> list:
    if objs and is_actor(objs[0]):
        # Ray only for actor handles: in-process runs and tests never import it
        import ray
        return ray.get([getattr(o, method).remote(*a) for o, a in zip(objs, args)])
    return [getattr(o, method)(*a) for o, a in zip(objs, args)]


def score_all(rewarders: list, pairs: list[tuple[str, str]]) -> list[Reward]:
    """[(response, truth)] scored over the reward workers in equal slices, in order."""
    size = -(-len(pairs) // len(rewarders))
    outs = call_all(rewarders, "score", [(pairs[i * size:(i + 1) * size],)
                                         for i in range(len(rewarders))])
    return [x for out in outs for x in out]
