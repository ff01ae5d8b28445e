"""Starting or joining Ray: ``init_ray(cfg)`` starts a local cluster of the job's own, with
token authentication, unless ``cluster.address`` (or ``RAY_ADDRESS``, which ``ray job submit``
sets for its drivers) names one to join; it says which. ``dashboard_line()`` says where the
dashboard is and whether it answers.

A local cluster gets a token of its own (``new_token``): 32 random bytes in hex, in a file
of mode 0600 inside a folder of mode 0700, named to every Ray process through
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH``. Ray's gRPC servers listen on every
interface whatever the node's address, so the token, not the address, is what keeps a
local cluster to its owner; the dashboard and job server listen on 127.0.0.1 only."""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import ray

from relift_ray.config import RunConfig

TOKEN_FILE = "auth_token"


def init_ray(cfg: RunConfig) -> None:
    """Join the cluster at ``cluster.address`` ("auto": ``RAY_ADDRESS`` when set, as under
    ``ray job submit``), or start a local one on this machine ("local", or "auto" without
    ``RAY_ADDRESS``). A cluster merely running on this machine is never joined unnamed: it
    may be another job's, which stops it when that job ends."""

    if ray.is_initialized():
        return
    address = cfg.cluster.address
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "") or "local"
    global DASHBOARD_URL, CLUSTER_LINE
    if address == "local":
        # More logical CPUs than cores so fractional actors and two learner workers all fit
        # on a 2-core machine. One node has nothing to be preempted by: Ray Train's
        # preemption watcher (an actor polling the node drain state, ~1 s of a 2-core
        # start-up) stays off. Ray's processes inherit this environment from the driver's,
        # so the job needs no runtime_env: with one (even only env_vars) the Python workers
        # Ray starts ahead of time, which have none, cannot serve its actors, and each actor
        # waits for a worker process of its own.
        os.environ.pop("RAY_ADDRESS", None)
        auth = secure_local_env()
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        c = cfg.cluster
        extra = {"_metrics_export_port": c.metrics_export_port} if c.metrics_export_port else {}
        ctx = ray.init(num_cpus=c.num_cpus, include_dashboard=c.dashboard,
                       dashboard_host="127.0.0.1", dashboard_port=c.dashboard_port,
                       log_to_driver=c.ray_logs, **extra)
        CLUSTER_LINE = (f"[driver] Ray: a local cluster of this job's own at "
                        f"{ctx.address_info.get('gcs_address', '?')}, {auth}")
    else:
        ctx = ray.init(address=address, log_to_driver=cfg.cluster.ray_logs)
        CLUSTER_LINE = (f"[driver] Ray: joined the cluster at "
                        f"{ctx.address_info.get('gcs_address', address)} "
                        f"(cluster.address={cfg.cluster.address}"
                        + (f", RAY_ADDRESS={address}" if cfg.cluster.address == "auto" else "")
                        + ")")
    print(CLUSTER_LINE, flush=True)
    DASHBOARD_URL = f"http://{ctx.dashboard_url}" if getattr(ctx, "dashboard_url", "") else ""


DASHBOARD_URL = ""  # the Ray dashboard of the cluster init_ray joined or started ("" = none)
CLUSTER_LINE = ""   # which cluster init_ray started or joined, as said on the console
_OWN_TOKEN: Path | None = None  # the token of the last local cluster this process started


def secure_local_env() -> str:
    """Token authentication for the local cluster about to start, unless the environment
    already chose (``RAY_AUTH_MODE``, or a token of the user's: ``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_TOKEN_PATH``). Returns the console's words for it."""
    global _OWN_TOKEN
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return ("token auth OFF (RAY_AUTH_MODE=disabled in the environment): whoever reaches "
                "this machine's Ray ports can run code as you")
    theirs = os.environ.get("RAY_AUTH_TOKEN_PATH", "") not in ("", str(_OWN_TOKEN))
    if os.environ.get("RAY_AUTH_TOKEN") or theirs:
        use_token(None)
        return ("token auth (the token of RAY_AUTH_TOKEN"
                + ("" if os.environ.get("RAY_AUTH_TOKEN") else
                   f"_PATH: {os.environ['RAY_AUTH_TOKEN_PATH']}") + ")")
    path = _OWN_TOKEN = new_token()  # a new one for each local cluster
    atexit.register(shutil.rmtree, path.parent, True)  # after Ray's own exit handler
    use_token(path)
    return f"token auth (a new token in {path}, mode 0600; gone when the job ends)"


def new_token(folder: str | Path | None = None, name: str = TOKEN_FILE) -> Path:
    """A new random token in ``folder``/``name`` (default: a new private temporary folder),
    readable by its owner alone; returns the file."""
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="relift-ray-auth-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return path


def token_env(path: str | Path) -> dict:
    """The environment a Ray process or client needs to use the token in ``path``."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def use_token(path: str | Path | None) -> None:
    """Token auth for this process and the Ray processes it starts: with ``path``, that
    token. Ray caches its mode and token per process; both are read again here, so a
    process can start one local cluster after another, each with its own token."""
    os.environ.update(token_env(path) if path else {"RAY_AUTH_MODE": "token"})
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # only where Ray has auth
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # a Ray without token auth: nothing cached
        pass


def auth_headers() -> dict:
    """The Authorization header of this process's Ray token, if it uses one."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "")
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / TOKEN_FILE
        try:
            token = Path(path).read_text().strip()
        except OSError:
            return {}
    return {"Authorization": f"Bearer {token}"}


def user_token(path: str | Path | None = None) -> Path:
    """``relift token``: the token file ``ray start`` and ``ray job submit`` read by default
    (~/.ray/auth_token), made if missing, and its mode made 0600 either way."""
    path = Path(path) if path else Path.home() / ".ray" / TOKEN_FILE
    if not path.exists() or not path.read_text().strip():
        new_token(path.parent, path.name)
    os.chmod(path, 0o600)
    return path


def dashboard_line() -> str:
    """The console line naming the Ray dashboard and whether it answers."""
    if not DASHBOARD_URL:
        return "[driver] Ray dashboard: off (cluster.dashboard=false)"
    import urllib.request
    where = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    note = f" (it asks for the token: {where})" if auth_headers() and where else ""
    try:
        req = urllib.request.Request(f"{DASHBOARD_URL}/api/version", headers=auth_headers())
        urllib.request.urlopen(req, timeout=5).read()
        return f"[driver] Ray dashboard: {DASHBOARD_URL}{note}"
    except Exception as e:
        return f"[driver] Ray dashboard: {DASHBOARD_URL} does not answer yet ({e})"
