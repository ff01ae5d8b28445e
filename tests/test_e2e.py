"""The whole system on a local Ray cluster: 2 learner workers under DeepSpeed ZeRO-2 (gloo),
a generator, reward workers and the scheduler, on the toy task. A few steps each.

- a run changes every parameter, samples each step with the newest weights, runs SFT phases
  and logs to MLflow;
- re-running a finished run with more steps resumes from its checkpoint and continues its
  MLflow run (killed actors: tests/test_recovery.py).
"""
import json
from pathlib import Path

import pytest
import torch

from relift_ray.config import load_config

pytestmark = pytest.mark.e2e


def small_cfg(out, name, *extra):
    return load_config("toy_relift", [
        f"output_dir={out}", f"name={name}", "algo.batch_size=8", "algo.n_samples=4",
        "algo.buffer_size=4", "train.steps=4", "train.checkpoint_every=2",
        "cluster.num_learners=2", "cluster.num_reward_workers=1", *extra])


def metric(cfg, run_id, key):
    from mlflow.tracking import MlflowClient
    hist = MlflowClient(cfg.mlflow_uri).get_metric_history(run_id, key)
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


def final_state(summary):
    return json.loads((Path(summary.checkpoint) / "scheduler_state.json").read_text())


@pytest.fixture(scope="module")
def first_run(ray_local, relift_cache, tmp_path_factory):
    from relift_ray.jobs.train import run
    out = tmp_path_factory.mktemp("e2e")
    cfg = small_cfg(out, "plain", "tracking.eval_every=2")
    return cfg, run(cfg), relift_cache


def _mlflow_run(cfg, s):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cfg.mlflow_uri)
    return client, client.get_run(s.run_id)


def test_every_parameter_changed(first_run):
    from safetensors.torch import load_file
    cfg, s, base_path = first_run
    base = load_file(Path(base_path) / "model.safetensors")
    final = load_file(Path(s.checkpoint) / "policy" / "model.safetensors")
    assert base.keys() == final.keys()
    unchanged = [k for k in base if torch.equal(base[k], final[k])]
    assert not unchanged, unchanged


def test_each_step_samples_with_the_weights_published_after_the_one_before(first_run):
    cfg, s, _ = first_run
    assert metric(cfg, s.run_id, "weight_version") == [0.0, 1.0, 2.0, 3.0]


def test_sft_phases_ran_on_the_hardest_questions_demonstrations(first_run):
    cfg, s, _ = first_run
    assert s.sft_steps >= 1 and s.demos_used_total >= 4
    assert max(metric(cfg, s.run_id, "sft_this_step")) == 1.0
    assert metric(cfg, s.run_id, "sft/sft_loss")


def test_mlflow_has_the_config_step_metrics_and_final_checkpoint(first_run):
    cfg, s, _ = first_run
    _, run = _mlflow_run(cfg, s)
    assert run.info.status == "FINISHED"
    assert run.data.params["algo.buffer_size"] == "4"
    assert run.data.tags["final_checkpoint"] == s.checkpoint
    assert run.data.tags["mlflow.note.content"].startswith("relift on toy (")
    for key in ("reward_mean", "bucket_hardest", "buffer_size", "demos_used_unique",
                "step_seconds", "gen_tokens_per_s", "weight_sync_seconds", "test_after/overall"):
        assert key in run.data.metrics, key


def test_the_question_table_and_its_pictures_are_written_and_logged(first_run):
    cfg, s, _ = first_run
    client, _ = _mlflow_run(cfg, s)
    arts = {a.path for a in client.list_artifacts(s.run_id)}
    assert {"config.yaml", "questions.csv", "questions.png", "question_transitions.json"} <= arts
    assert (Path(s.question_table).parent / "questions.png").stat().st_size > 10_000
    rows = Path(s.question_table).read_text().splitlines()
    assert rows[0].startswith("id,level,source,attempts") and len(rows) > 8


def test_validation_every_two_steps_keeps_the_best_policy(first_run):
    cfg, s, _ = first_run
    _, run = _mlflow_run(cfg, s)
    val = metric(cfg, s.run_id, "val/score")
    assert len(val) == 2 and metric(cfg, s.run_id, "val/toy") == val
    best = max(range(2), key=lambda i: (val[i], -i))  # the first of equal scores stays best
    assert s.val_best_step == 2 * (best + 1) and s.val_best_score == val[best]
    assert s.val_last_step == 4 and s.val_last_score == val[1]
    meta = json.loads((Path(s.best_policy).parent / "meta.json").read_text())
    assert meta["step"] == s.val_best_step and meta["score"] == val[best]
    assert (Path(s.best_policy) / "model.safetensors").exists()
    assert run.data.tags["best_step"] == str(s.val_best_step)
    assert run.data.tags["best_policy"] == s.best_policy


def test_final_and_best_policies_are_registered_mlflow_models(first_run):
    import mlflow

    from relift_ray.records import Question, SamplingParams
    from relift_ray.rollout.hf import HFGenerator
    cfg, s, _ = first_run
    client, _ = _mlflow_run(cfg, s)
    mlflow.set_tracking_uri(cfg.mlflow_uri)
    assert s.mlflow_models["final"] == "models:/plain@final"
    final_v = client.get_model_version_by_alias("plain", "final")
    best_v = client.get_model_version_by_alias("plain", "best")
    assert final_v.run_id == best_v.run_id == s.run_id and final_v.version != best_v.version
    prompt = "Q:27+5*2\n"
    want = HFGenerator(str(Path(s.checkpoint) / "policy")).generate(
        [Question(id="0", prompt=prompt, answer="")],
        SamplingParams(n=1, temperature=0.0, max_new_tokens=48))[0][0].text
    got = mlflow.pyfunc.load_model("models:/plain@final").predict([prompt])
    assert got == [want]


def test_rerun_resumes_from_checkpoint(first_run):
    from relift_ray.jobs.train import run
    cfg, plain, _ = first_run
    saved = final_state(plain)
    more = small_cfg(cfg.output_dir, "plain", "train.steps=6")
    s = run(more)
    # the same MLflow run goes on: steps 5 and 6 follow 1-4, the base is not evaluated again
    assert s.run_id == plain.run_id
    assert metric(more, s.run_id, "weight_version") == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(metric(more, s.run_id, "test_before/overall")) == 1
    assert s.before == plain.before
    state = final_state(s)
    assert state["counters"]["step"] == 6
    for qid, rec in saved["records"].items():  # the first 4 steps' records carried over
        assert state["records"][qid]["history"][:len(rec["history"])] == rec["history"]


@pytest.mark.parametrize("mode", ["rl", "sft"])
def test_rl_and_sft_modes_run(ray_local, tmp_path, mode):
    from relift_ray.jobs.train import run
    cfg = small_cfg(tmp_path, f"mode-{mode}", f"algo.mode={mode}", "train.steps=2",
                    "algo.sft_batch_size=6")
    s = run(cfg)
    if mode == "rl":  # no buffer, no SFT, every step sampled
        assert s.sft_steps == 0 and s.demos_used_total == 0
        assert metric(cfg, s.run_id, "weight_version") == [0.0, 1.0]
    else:  # offline SFT over all demonstrations: 6 per step, no generation
        assert s.sft_steps == 2 and s.demos_used_unique == 12
        assert not metric(cfg, s.run_id, "weight_version")
        assert metric(cfg, s.run_id, "sft/sft_loss")


def test_async_run_samples_one_version_behind_and_draws_its_timeline(ray_local, tmp_path):
    """algo.max_staleness=1: batch s comes from weights s-2 while the learners train step s-1;
    every sample carries its sampler's log-probs, the learner weights each token by the
    truncated ratio, and the timeline shows generation overlapping learning."""
    from mlflow.tracking import MlflowClient

    from relift_ray.jobs.train import run
    from relift_ray.tracking.timeline import overlap_seconds
    cfg = small_cfg(tmp_path, "async", "algo.max_staleness=1", "algo.is_correction=tis")
    s = run(cfg)
    assert metric(cfg, s.run_id, "weight_version") == [0.0, 0.0, 1.0, 2.0]
    assert metric(cfg, s.run_id, "staleness") == [0.0, 1.0, 1.0, 1.0]
    ratios = metric(cfg, s.run_id, "mismatch/prob_ratio_mean")
    weights = metric(cfg, s.run_id, "rl/is_weight_mean")
    assert len(ratios) == 4 and len(weights) == 4
    assert abs(ratios[0] - 1) < 1e-3  # step 1: the sampler held the learner's weights
    assert all(0 < w <= 2.0 for w in weights)  # truncated at algo.is_cap
    client = MlflowClient(cfg.mlflow_uri)
    arts = {a.path for a in client.list_artifacts(s.run_id)}
    assert {"timeline.png", "timeline.json"} <= arts
    events = json.loads(Path(client.download_artifacts(s.run_id, "timeline.json",
                                                       str(tmp_path))).read_text())
    assert {e["what"] for e in events} == {"generate", "reward", "train", "sync"}
    assert overlap_seconds(events) > 0
    rows = Path(s.question_table).read_text()
    assert "@" in rows  # pass rates sampled with an older version say which


def test_learner_group_has_no_ray_data_callback(tmp_path):
    """The learner group reads no Ray Dataset: the trainer drops Ray Train's Ray Data callback
    (one more actor and a round trip to every worker on the way to step 1) and keeps the
    others (backend setup, placement-group cleanup)."""
    from relift_ray.config import load_config
    from relift_ray.runtime.topology import Topology, learner_group

    cfg = load_config(overrides=[f"output_dir={tmp_path}"])
    trainer = learner_group(cfg, str(tmp_path), Topology([], [], None), "key", 0.0)
    names = {type(cb).__name__ for cb in trainer._create_default_callbacks()}
    assert "DatasetsCallback" not in names
    assert {"BackendSetupCallback", "PlacementGroupCleanerCallback"} <= names
