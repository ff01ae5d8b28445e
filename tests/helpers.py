"""In-process stand-ins used by the tests: scripted generators and reward workers, a slow
scoring function for the reward-timeout test."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from relift_ray.records import Completion, Reward


class ScriptedGenerator:
    """Answers "ok" or "no" per rollout, as a script {question id: [1, 0, ...]} says."""

    def __init__(self, script: dict, default: int = 0):
        self.script, self.default = script, default
        self.weight_version = 0
        self.calls = []

    def get_version(self):
        return self.weight_version

    def load_weights(self, version, state_dict):
        self.weight_version = version
        return version

    def generate(self, questions, params):
        self.calls.append(([q.id for q in questions], params))
        out = []
        for q in questions:
            rewards = self.script.get(q.id, [self.default] * params.n)
            out.append([Completion(q.id, "ok" if rewards[j] else "no", (1, 2), (3, 1),
                                   self.weight_version) for j in range(params.n)])
        return out


class ScriptedRewarder:
    def score(self, pairs):
        return [Reward(1.0 if text == "ok" else 0.0) for text, _ in pairs]


def slow_reward(response, truth, extraction):
    """Hangs on answers containing HANG (a pathological answer), else exact match."""
    if "HANG" in response:
        time.sleep(60)
    if "SLOW" in response:  # slow but within a 1 s limit
        time.sleep(0.4)
        response = response.replace("SLOW", "")
    return (1.0 if response.strip() == truth else 0.0), "ok"


def dying_reward(response, truth, extraction):
    """Kills its own process on DIE_ALWAYS, and on DIE_ONCE the first time (a marker file at
    the path ``truth``); else 1 for answers containing "ok"."""
    import signal
    if "DIE_ALWAYS" in response:
        os.kill(os.getpid(), signal.SIGKILL)
    if "DIE_ONCE" in response and not Path(truth).exists():
        Path(truth).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return (1.0 if "ok" in response else 0.0), "ok"


def hanging_gold_check(response, truth, extraction):
    """The fetch's gold check, except that an answer containing HANG never returns."""
    from relift_ray.core.scoring import verified_reward
    if "HANG" in response:
        time.sleep(60)
    return verified_reward(response, truth, extraction)


# The public math sets live outside the repository (never copied in): ../shared/data beside the
# checkout, as on the developers' machines and in CI, or wherever RELIFT_SHARED_DATA points.
SHARED = Path(os.environ.get("RELIFT_SHARED_DATA")
              or Path(__file__).resolve().parent.parent.parent / "shared" / "data")
NO_SHARED = (f"the public data sets are kept outside the repo and {SHARED} is not beside this "
             "checkout (the developers' machines have it there; set RELIFT_SHARED_DATA to run "
             "this test elsewhere)")
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason=NO_SHARED)


# ``relift data fetch`` offline: fake hub and GitHub repositories with the real ones' file
# layouts (folder and file names as the repositories hold them), made from the shared data.
# dataset id -> {path in the repository: (shared file, rows kept)}. Parquet paths are written as
# parquet from the shared rows, so these files are not the hub's bytes: a test that uses them
# drops the code's sha256 pin for the hub sets (the GitHub files are the real bytes).
OB = "OlympiadBench/{0}/{0}.parquet"
FAKE_HUB = {
    "HuggingFaceH4/MATH-500": {"test.jsonl": ("eval/math500/test.jsonl", None)},
    "HuggingFaceH4/aime_2024": {"data/train-00000-of-00001.parquet":
                                ("eval/aime24/test.jsonl", None)},
    "math-ai/aime25": {"test.jsonl": ("eval/aime25/test.jsonl", None)},
    "AI-MO/aimo-validation-amc": {"data/train-00000-of-00001.parquet":
                                  ("eval/amc22_23/amc.json", None)},
    "math-ai/amc23": {"test.jsonl": ("eval/amc23/test.jsonl", None)},
    # every config in its own folder; the text-only competition maths one has 674 problems
    "Hothan/OlympiadBench": {OB.format("OE_TO_maths_en_COMP"):
                             ("eval/olympiadbench/test.jsonl", 674),
                             OB.format("OE_MM_maths_en_COMP"): ("eval/olympiadbench/test.jsonl", 9),
                             OB.format("OE_TO_physics_en_COMP"):
                             ("eval/olympiadbench/test.jsonl", 9)},
    "openai/gsm8k": {"main/test-00000-of-00001.parquet": ("eval/gsm8k/test.jsonl", None),
                     "main/train-00000-of-00001.parquet": ("eval/gsm8k/test.jsonl", 50),
                     "socratic/test-00000-of-00001.parquet": ("eval/gsm8k/test.jsonl", None)},
}
FAKE_GITHUB = {("TheRoadQaQ/ReLIFT", "dataset/valid.parquet"): "eval/bundles/relift_valid.parquet",
               ("ElliottYan/LUFFY", "data/valid.parquet"): "eval/bundles/luffy_valid.parquet",
               ("TheRoadQaQ/ReLIFT", "dataset/valid.mmlu_pro.parquet"): None}  # made up


def fake_mmlu_pro(dest: Path, n: int = 40) -> None:
    """A stand-in for ReLIFT's valid.mmlu_pro.parquet (not in the shared data): its verl
    columns, ten options, the ground truth a letter."""
    import pandas as pd
    letters = "ABCDEFGHIJ"
    rows = [{"data_source": "mmlu_pro", "ability": "knowledge",
             "prompt": [{"role": "system", "content": "Think in <think> tags."},
                        {"role": "user", "content": f"Question {i}: which option? " + " ".join(
                            f"({c}) {i * 10 + j}" for j, c in enumerate(letters))}],
             "reward_model": {"ground_truth": letters[i * 7 % 10], "style": "rule"},
             "extra_info": {"index": i, "split": "test"}} for i in range(n)]
    pd.DataFrame(rows).to_parquet(dest, index=False)
FAKE_HEAD = "f" * 40  # what "main" resolves to on the fake hub


def shared_rows(src: str) -> list:
    from relift_ray.data.readers import iter_rows
    return [row for _, row in iter_rows(SHARED / src)]


def fake_hub(tmp: Path, calls: list, head: str = FAKE_HEAD, changed: dict | None = None):
    """(snapshot, get) stand-ins for ``hub_snapshot`` and ``url_get``. A snapshot holds only
    the files ``patterns`` match, in ``.../<commit>/``; ``changed`` {dataset id: rows kept}
    makes that repository's files at its head (not at other commits) hold fewer rows."""
    import fnmatch

    import pandas as pd

    def snapshot(repo, revision, patterns):
        calls.append((repo, revision, tuple(patterns)))
        commit = head if revision == "main" else revision
        root = tmp / "hub" / repo.replace("/", "--") / commit
        for path, (src, keep) in FAKE_HUB[repo].items():
            if not any(fnmatch.fnmatch(path, p) for p in patterns):
                continue
            if changed and repo in changed and commit == head:
                keep = changed[repo]
            dest = root / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path.endswith(".parquet"):
                rows = shared_rows(src)[:keep]
                pd.DataFrame(rows).to_parquet(dest, index=False)
            elif keep is None:
                shutil.copy(SHARED / src, dest)
            else:
                dest.write_text("".join(line for line in (SHARED / src).read_text()
                                        .splitlines(keepends=True)[:keep]))
        return root

    def get(url, dest):
        calls.append((url, None, ()))
        prefix = "https://raw.githubusercontent.com/"
        assert url.startswith(prefix), url
        owner, name, commit, path = url[len(prefix):].split("/", 3)
        assert len(commit) == 40, f"{url}: not a pinned commit"
        src = FAKE_GITHUB[(f"{owner}/{name}", path)]
        if src is None:
            fake_mmlu_pro(dest)
        else:
            shutil.copy(SHARED / src, dest)
    return snapshot, get


def unpin_hub_hashes(mp) -> None:
    """The fake hub's parquet files are not the hub's bytes: drop the code's sha256 pins of the
    hub sets (the first fetch records the fake's, as it would a source with no pin)."""
    import dataclasses

    from relift_ray.data import fetch as F
    for name, src in F.SOURCES.items():
        if src.kind == F.HUB:
            mp.setitem(F.SOURCES, name, dataclasses.replace(src, sha256=""))


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started in a session of its own (``start_new_session=True``) and
    everything it started, by its process group: SIGTERM, then SIGKILL after 60 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def bare_env() -> dict:
    """This process's environment without Ray's auth settings or a cluster address: as a
    user's shell, for processes that start or join a cluster of their own."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}


def sampler_agreement(gen, model, questions, device: str = "cuda") -> tuple[dict, list]:
    """A generator samples (2 per question, temperature 1, seed 3); ``model`` scores the same
    tokens: how far the sampler's log-probs are from the model's (``logprob_mismatch``), and
    the completions."""
    # torch and the learner's forward: the GPU tests' own, on the device they name
    import torch

    from relift_ray.core.algo import logprob_mismatch
    from relift_ray.learner.forward import forward_logprobs, to_tensors
    from relift_ray.records import Sample, SamplingParams
    groups = gen.generate(questions, SamplingParams(n=2, temperature=1.0, max_new_tokens=40,
                                                    seed=3))
    comps = [c for g in groups for c in g]
    samples = [Sample(c.prompt_ids, c.response_ids, 0.0, behavior_logprobs=c.logprobs)
               for c in comps]
    t = to_tensors(samples, 0, device)
    with torch.no_grad():
        lp, _ = forward_logprobs(model, t)
    return logprob_mismatch(lp.float(), t["blp"], t["mask"]), comps
