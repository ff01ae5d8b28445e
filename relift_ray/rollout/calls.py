"""Calling plain objects and Ray actors the same way, with deadlines.

The scheduler and evaluation hold lists of generators / reward workers that are Ray actor
handles in a job and plain objects in a unit test; ``call_all`` fans a method out over them
(in parallel for actors) and returns the results in order.

A call on an actor may carry a deadline (``within`` seconds, from the ``cluster.*_deadline_s``
fields). A call still running at its deadline is treated as the actor's death: the actor is
killed (``ray.kill``, which also ends a process stopped with SIGSTOP) and Ray restarts it,
with a console line naming the actor, the call and the step. The call then fails with
``RayActorError``, which the caller already handles as a death (a generator is revived and
samples its chunk again; the learner group restarts from its checkpoint), or, for an actor
whose calls Ray retries (reward workers: scoring is pure), its result comes from the
restarted actor.
"""
from __future__ import annotations

from relift_ray.records import Reward
from relift_ray.tracking.console import say

RESTART_S = 300  # a killed actor's restart (its start-up included), before a retry's deadline


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


def call_within(within: float | None, who: str, obj, method: str, *args, step=None):
    """``call`` with a deadline of ``within`` seconds on an actor (None: none); ``who`` and
    ``step`` name it in the warning when it runs out."""
    if not is_actor(obj):
        return getattr(obj, method)(*args)
    return get_or_kill(getattr(obj, method).remote(*args), obj, within, who, method, step)


def get_or_kill(ref, actor, within: float | None, who: str, method: str, step=None):
    """The result of ``ref`` (a call of ``method`` on ``actor``) within ``within`` seconds;
    past that, ``kill_late``."""
    # Ray only for actor handles: in-process runs and tests never import it
    import ray
    try:
        return ray.get(ref, timeout=within)
    except ray.exceptions.GetTimeoutError:
        return kill_late(ref, actor, within, who, method, step)


def kill_late(ref, actor, within: float, who: str, method: str, step=None):
    """``actor``'s call ``ref`` ran past its deadline of ``within`` seconds: the actor is
    treated as dead (killed; Ray restarts it), and the call's own end is returned or raised:
    ``RayActorError``, or the result of Ray's retry of the call on the restarted actor, given
    ``RESTART_S`` + ``within`` seconds more."""
    # Ray only for actor handles: in-process runs and tests never import it
    import ray
    at = f" at step {step}" if step is not None else ""
    kill_as_dead(actor, f"{who}: {method}{at}", within)
    try:
        return ray.get(ref, timeout=RESTART_S + within)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{who}: {method}{at} ran past its deadline of {within:g} s "
                           f"again on the restarted actor") from None


def kill_as_dead(actor, what: str, within: float) -> None:
    """``what`` (an actor's call) outlasted its deadline of ``within`` seconds: say so and
    kill the actor, which Ray restarts."""
    # Ray only for actor handles: in-process runs and tests never import it
    import ray
    say(f"[deadline] {what} still running after {within:g} s; treated as dead: killed, Ray "
        f"restarts it")
    ray.kill(actor, no_restart=False)


def tell(obj, method: str, *args) -> None:
    """One call on a plain object or a Ray actor, not waiting for it (a notice)."""
    if is_actor(obj):
        getattr(obj, method).remote(*args)
    else:
        getattr(obj, method)(*args)


def call_all(objs: list, method: str, args: list[tuple], within: float | None = None,
             who: str = "actor", step=None) -> list:
    """``method`` on each object with its arguments, in parallel for actors, each actor's
    call with a deadline of ``within`` seconds from now (``kill_late``); the warning names
    the actor as ``<who> <index>``."""
    if not (objs and is_actor(objs[0])):
        return [getattr(o, method)(*a) for o, a in zip(objs, args)]
    # Ray only for actor handles: in-process runs and tests never import it
    import ray
    refs = [getattr(o, method).remote(*a) for o, a in zip(objs, args)]
    if within is None:
        return ray.get(refs)
    _, late = ray.wait(refs, num_returns=len(refs), timeout=within)
    return [kill_late(ref, o, within, f"{who} {i}", method, step) if ref in late
            else ray.get(ref) for i, (ref, o) in enumerate(zip(refs, objs))]


def score_all(rewarders: list, pairs: list[tuple[str, str]], within: float | None = None,
              step=None) -> list[Reward]:
    """[(response, truth)] scored over the reward workers in equal slices, in order; each
    worker's slice within ``within`` seconds (``call_all``)."""
    size = -(-len(pairs) // len(rewarders))
    outs = call_all(rewarders, "score", [(pairs[i * size:(i + 1) * size],)
                                         for i in range(len(rewarders))],
                    within, "reward worker", step)
    return [x for out in outs for x in out]
