"""The one-process runner (the comparison job's runs) with asynchronous rollouts."""
from relift_ray.config import load_config


def _run(relift_cache, lag):
    from relift_ray.colocated import run_colocated
    from relift_ray.driver import load_data
    from transformers import AutoTokenizer
    cfg = load_config("jobs/configs/toy_relift.yaml", [
        "algo.batch_size=4", "algo.n_samples=4", "algo.buffer_size=2", "train.steps=4",
        "cluster.num_learners=1", f"algo.max_staleness={lag}", "data.max_test_questions=8",
        f"name=colocated-{lag}"])
    train, test, _ = load_data(cfg, AutoTokenizer.from_pretrained(relift_cache))
    return run_colocated(cfg, relift_cache, train, test, eval_every=2, log=lambda line: None)


def test_async_one_process_run_samples_behind_and_is_deterministic(relift_cache):
    a = _run(relift_cache, 1)
    assert [h["weight_version"] for h in a["history"]] == [0, 0, 1, 2]
    assert [h["staleness"] for h in a["history"]] == [0, 1, 1, 1]
    assert [p["step"] for p in a["curve"]] == [0, 2, 4]
    b = _run(relift_cache, 1)  # the producer thread changes when, never what
    assert [h["reward_mean"] for h in a["history"]] == [h["reward_mean"] for h in b["history"]]
    assert a["curve"] == b["curve"]
