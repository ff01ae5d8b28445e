"""The in-process runner (the comparison job's runs) with asynchronous rollouts."""
from relift_ray.config import load_config


def _run(relift_cache, lag):
    from transformers import AutoTokenizer

    from relift_ray.data.load import load_data
    from relift_ray.jobs.in_process import run_in_process
    cfg = load_config("toy_relift", [
        "algo.batch_size=4", "algo.n_samples=4", "algo.buffer_size=2", "train.steps=4",
        "cluster.num_learners=1", f"algo.max_staleness={lag}", "data.max_test_questions=8",
        f"name=in-process-{lag}"])
    train, test, _ = load_data(cfg, AutoTokenizer.from_pretrained(relift_cache))
    return run_in_process(cfg, relift_cache, train, test, eval_every=2, log=lambda line: None)


def test_async_one_process_run_samples_behind_and_is_deterministic(relift_cache):
    a = _run(relift_cache, 1)
    assert [h["weight_version"] for h in a.history] == [0, 0, 1, 2]
    assert [h["staleness"] for h in a.history] == [0, 1, 1, 1]
    assert [p["step"] for p in a.curve] == [0, 2, 4]
    b = _run(relift_cache, 1)  # the producer thread changes when, never what
    assert [h["reward_mean"] for h in a.history] == [h["reward_mean"] for h in b.history]
    assert a.curve == b.curve


def test_greedy_profile_scores_lengths_and_entropy(relift_cache):
    """The comparison's test-response figures: the same greedy scores as question_scores; the
    length counts EOS; a budget below every answer cuts them all; the entropy is the policy's
    over its own response tokens, as a separate forward pass computes it."""
    import torch

    from relift_ray.data.toy.task import make_questions
    from relift_ray.jobs.in_process import greedy_profile
    from relift_ray.rollout.evaluate import question_scores
    from relift_ray.rollout.hf import HFGenerator
    from relift_ray.rollout.rewards import RewardWorker

    qs = make_questions("test")[::60]
    gen, rewarder = HFGenerator(relift_cache), RewardWorker("whole", 5.0)
    try:
        scores, stats = greedy_profile(gen, rewarder, qs, 48)
        assert scores == question_scores([gen], [rewarder], qs, max_new_tokens=48)
        assert stats["truncated"] == 0.0
        cut_scores, cut = greedy_profile(gen, rewarder, qs, 3)
        assert cut["truncated"] == 1.0 and cut["response_length"] == 3.0
        assert cut_scores == question_scores([gen], [rewarder], qs, max_new_tokens=3)
        # the same figures by hand, one question at a time
        tok, lengths, ent = gen.tokenizer, [], []
        for q in qs:
            p = tok(q.prompt, add_special_tokens=False)["input_ids"]
            out = gen.model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=48,
                                     pad_token_id=tok.pad_token_id,
                                     eos_token_id=tok.eos_token_id)[0, len(p):].tolist()
            r = out[:out.index(tok.eos_token_id) + 1]
            with torch.no_grad():
                logits = gen.model(torch.tensor([p + r])).logits[0, len(p) - 1:-1]
            logp = torch.log_softmax(logits.float(), -1)
            ent += (-(logp.exp() * logp).sum(-1)).tolist()
            lengths.append(len(r))
        assert stats["response_length"] == sum(lengths) / len(lengths)
        assert abs(stats["entropy"] - sum(ent) / len(ent)) < 1e-4
    finally:
        rewarder.close()
