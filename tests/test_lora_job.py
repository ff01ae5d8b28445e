"""A LoRA ReLIFT job on a local Ray cluster (the toy, 2 learner workers under ZeRO-2): it
trains the adapters alone, syncs them alone, checkpoints them, resumes, registers the merged
model in MLflow with its base model, and serves from the run's checkpoint."""
import json
import urllib.request
from pathlib import Path

import pytest

from relift_ray.config import load_config

pytestmark = pytest.mark.e2e


def _cfg(out, *extra):
    return load_config("toy_relift", [
        f"output_dir={out}", "name=lora", "algo.batch_size=8", "algo.n_samples=4",
        "algo.buffer_size=4", "train.steps=4", "train.checkpoint_every=2",
        "cluster.num_learners=2", "cluster.num_reward_workers=1", "model.lora.rank=8",
        "algo.lr=1e-3", "algo.sft_lr=5e-3", *extra])


def _metric(cfg, run_id, key):
    from mlflow.tracking import MlflowClient
    hist = MlflowClient(cfg.mlflow_uri).get_metric_history(run_id, key)
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


@pytest.fixture(scope="module")
def lora_run(ray_local, relift_cache, tmp_path_factory):
    from relift_ray.jobs.train import run
    out = tmp_path_factory.mktemp("lora-job")
    cfg = _cfg(out)
    return cfg, run(cfg), relift_cache


def test_the_run_trains_and_syncs_the_adapters_alone(lora_run):
    from relift_ray.data.lora import is_adapter, read_adapter
    cfg, s, base = lora_run
    assert s.sft_steps >= 1  # RL and SFT updates both went through the adapters
    policy = Path(s.checkpoint) / "policy"
    assert is_adapter(policy) and not (policy / "model.safetensors").exists()
    adapter = read_adapter(policy)
    assert adapter.config["r"] == 8
    assert any(v.abs().sum() > 0 for k, v in adapter.tensors.items() if ".lora_B." in k)
    full = sum(f.stat().st_size for f in Path(base).glob("*.safetensors"))
    sent = _metric(cfg, s.run_id, "weight_sync_bytes")
    assert len(sent) == 4 and set(sent) == {adapter.nbytes} and adapter.nbytes < full / 3
    assert _metric(cfg, s.run_id, "weight_version") == [0.0, 1.0, 2.0, 3.0]


def test_the_registered_model_is_the_merged_policy_and_names_its_base(lora_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    from relift_ray.data.registry import resolve_model
    from relift_ray.records import Question, SamplingParams
    from relift_ray.rollout.hf import HFGenerator
    cfg, s, _ = lora_run
    client = MlflowClient(cfg.mlflow_uri)
    v = client.get_model_version_by_alias("lora", "final")
    assert v.tags["base_model"] == "toy" and v.tags["lora_rank"] == "8"
    assert v.tags["lora_adapter"] == str(Path(s.checkpoint) / "policy")
    prompt = "Q:27+5*2\n"
    want = HFGenerator(resolve_model(s.checkpoint)).generate(
        [Question(id="0", prompt=prompt, answer="")],
        SamplingParams(n=1, temperature=0.0, max_new_tokens=48))[0][0].text
    mlflow.set_tracking_uri(cfg.mlflow_uri)
    assert mlflow.pyfunc.load_model("models:/lora@final").predict([prompt]) == [want]


def test_serving_the_lora_run(lora_run):
    from ray import serve

    from relift_ray.background import free_port
    from relift_ray.data.registry import resolve_model
    from relift_ray.jobs.serve import start
    from relift_ray.records import Question, SamplingParams
    from relift_ray.rollout.hf import HFGenerator
    cfg, s, _ = lora_run
    run_folder = Path(cfg.storage_path) / cfg.name  # Ray Train's folder of the run
    url = start(str(run_folder), port=free_port("127.0.0.1"), name="lora", num_cpus=0.25,
                batch_size=1)
    try:
        body = json.dumps({"model": "lora", "prompt": "Q:12+7\n", "max_tokens": 24,
                           "temperature": 0}).encode()
        req = urllib.request.Request(f"{url}/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            text = json.loads(r.read())["choices"][0]["text"]
    finally:
        serve.shutdown()
    want = HFGenerator(resolve_model(s.checkpoint)).generate(
        [Question(id="0", prompt="Q:12+7\n", answer="")],
        SamplingParams(n=1, temperature=0.0, max_new_tokens=24))[0][0].text
    assert text == want


def test_rerun_resumes_the_lora_run(lora_run):
    from relift_ray.jobs.train import run
    cfg, first, _ = lora_run
    more = _cfg(cfg.output_dir, "train.steps=6")
    s = run(more)
    assert s.run_id == first.run_id
    assert _metric(more, s.run_id, "weight_version") == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    state = json.loads((Path(s.checkpoint) / "scheduler_state.json").read_text())
    assert state["counters"]["step"] == 6
    from relift_ray.errors import ConfigError
    with pytest.raises(ConfigError, match="LoRA r=8.*this run is a full fine-tune"):
        run(_cfg(cfg.output_dir, "train.steps=8", "model.lora.rank=0"))


def test_the_evaluation_job_takes_the_lora_checkpoint(lora_run, tmp_path):
    from relift_ray.data.registry import resolve_model
    from relift_ray.data.toy import task
    from relift_ray.jobs.evaluate import run
    from relift_ray.records import Question, SamplingParams
    from relift_ray.rollout.hf import HFGenerator
    _, s, base = lora_run
    questions = task.make_questions("test")[::18][:40]
    data = tmp_path / "toy_test.jsonl"
    data.write_text("".join(json.dumps({"id": q.id, "prompt": q.prompt, "answer": q.answer,
                                        "level": q.level}) + "\n" for q in questions))
    cfg = load_config("toy", [f"eval.model={s.checkpoint}", "eval.benchmarks=[gsm8k]",
                              f"eval.files.gsm8k={data}", "eval.temperature=0",
                              "eval.k.gsm8k=1", f"output_dir={tmp_path / 'eval'}"])
    res = run(cfg)
    merged = resolve_model(s.checkpoint)
    assert res.model == merged
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.algo.max_new_tokens)
    qs = [Question(id=q.id, prompt=q.prompt, answer=q.answer) for q in questions]
    want = [g[0].text for g in HFGenerator(merged).generate(qs, params)]
    by_id = {r["id"]: r["response_0"] for r in res.rows}
    assert [by_id[f"gsm8k/{q.id}"] for q in questions] == want
    assert want != [g[0].text for g in HFGenerator(base).generate(qs, params)]
