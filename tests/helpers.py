"""In-process stand-ins used by the tests: scripted generators and reward workers, a slow
scoring function for the reward-timeout test."""
import os
import shutil
import time
from pathlib import Path

import pytest

from relift_ray.data import fetch as _F
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


# The public math sets live outside the repository (never copied in): ../shared/data beside the
# checkout, as on the developers' machines and in CI, or wherever RELIFT_SHARED_DATA points.
SHARED = Path(os.environ.get("RELIFT_SHARED_DATA")
              or Path(__file__).resolve().parent.parent.parent / "shared" / "data")
NO_SHARED = (f"the public data sets are kept outside the repo and {SHARED} is not beside this "
             "checkout (the developers' machines have it there; set RELIFT_SHARED_DATA to run "
             "this test elsewhere)")
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason=NO_SHARED)


# ``relift data fetch`` offline: the shared data served as a fake hub and fake URLs
# dataset id -> (shared file, where the hub repository would hold it)
FAKE_HUB = {
    "HuggingFaceH4/MATH-500": ("eval/math500/test.jsonl", "test.jsonl"),
    "HuggingFaceH4/aime_2024": ("eval/aime24/test.jsonl", "data/train-00000.jsonl"),
    "math-ai/aime25": ("eval/aime25/test.jsonl", "test.jsonl"),
    "AI-MO/aimo-validation-amc": ("eval/amc22_23/amc.json", "train.json"),
    "math-ai/amc23": ("eval/amc23/test.jsonl", "test.jsonl"),
    "Hothan/OlympiadBench": ("eval/olympiadbench/test.jsonl",
                             "OE_TO_maths_en_COMP/train.jsonl"),
    "openai/gsm8k": ("eval/gsm8k/test.jsonl", "main/test.jsonl"),
}
FAKE_URLS = {_F.LUFFY_VALID: "eval/bundles/luffy_valid.parquet",
             _F.RELIFT_VALID: "eval/bundles/relift_valid.parquet"}


def fake_hub(tmp: Path, calls: list):
    def snapshot(repo, revision):
        calls.append((repo, revision))
        src, where = FAKE_HUB[repo]
        root = tmp / "hub" / repo.replace("/", "--")
        (root / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / src, root / where)
        (root / "README.md").write_text("card")
        return root

    def get(url, dest):
        calls.append((url, None))
        shutil.copy(SHARED / FAKE_URLS[url], dest)
    return snapshot, get
