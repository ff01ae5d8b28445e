"""The scheduler's decisions on scripted rewards, and its state surviving a restart."""
import json

import pytest
from helpers import ScriptedGenerator, ScriptedRewarder

from relift_ray.config import load_config
from relift_ray.core.questions import HardBuffer, Sampler, bucket_of
from relift_ray.data.toy.tokenizer import build_tokenizer
from relift_ray.records import Question
from relift_ray.scheduler.scheduler import Scheduler

TOK = build_tokenizer()


def questions(k=8, without_demo=()):
    return [Question(id=f"q{i}", prompt=f"Q:{i}+1\n", answer=str(i + 1),
                     demo=None if i in without_demo else f"{i}+1={i + 1} \\boxed{{{i + 1}}}",
                     level=1) for i in range(k)]


def make(script, qs=None, **over):
    o = {"algo.batch_size": 4, "algo.n_samples": 4, "algo.buffer_size": 3,
         "cluster.num_learners": 1, "algo.minibatches": 1, **over}
    cfg = load_config(overrides=[f"{k}={v}" for k, v in o.items()])
    gen = ScriptedGenerator(script)
    return Scheduler(cfg, qs or questions(), TOK, [gen], [ScriptedRewarder()]), gen


def step(s, gen, k):
    b = s.next_batch(k)
    gen.weight_version = k  # the learner would publish version k after this step
    return b


def test_buckets_scaled_to_n():
    assert [bucket_of(p / 8) for p in range(9)] == \
        ["hardest", "hard", "hard", "medium", "medium", "medium", "easy", "easy", "easy"]


def test_hardest_enter_buffer_newest_first_and_trigger_at_m():
    # the first 4 sampled questions: three all-wrong (hardest), one solved once (hard)
    s, gen = make({})
    order = [s.questions[i].id for i in s.sampler.order]
    for qid in order[:4]:
        gen.script[qid] = [0, 0, 0, 0]  # hardest
    gen.script[order[1]] = [1, 0, 0, 0]  # one of them is only hard
    b1 = step(s, gen, 1)
    hardest1 = [order[0], order[2], order[3]]
    assert b1.stats.bucket_hardest == 3 and b1.stats.bucket_hard == 1
    # buffer reached M=3 in this step: the SFT batch holds exactly those 3, newest first
    assert [x.question_id for x in b1.sft] == hardest1
    assert len(s.buffer) == 0 and s.counters["sft_steps"] == 1
    # the SFT sample is prompt -> demonstration + EOS
    q = s.by_id[hardest1[0]]
    assert list(b1.sft[0].response_ids) == TOK(q.demo, add_special_tokens=False)["input_ids"] + \
        [TOK.eos_token_id]
    assert b1.rl and all(x.advantage == 0 for x in b1.rl if x.question_id in hardest1)


def test_leftovers_kept_and_newest_taken():
    s, gen = make({}, **{"algo.buffer_size": 5})
    gen.default = 0  # everything is hardest
    b1 = step(s, gen, 1)
    assert not b1.sft and len(s.buffer) == 4
    first = list(s.buffer.ids)
    b2 = step(s, gen, 2)
    newest = [s.questions[i].id for i in s.sampler.order[4:8]]
    # 8 waiting: the 5 newest go (the 4 of step 2, then the newest of step 1), 3 stay
    assert [x.question_id for x in b2.sft] == newest + first[:1]
    assert s.buffer.ids == first[1:]


def test_no_demonstration_twice_in_one_sft_batch():
    buf = HardBuffer()
    buf.push(["a", "b"])
    buf.push(["c", "a"])  # "a" hardest again before it was used: moves to the front
    assert buf.ids == ["c", "a", "b"]
    assert buf.take_newest(3) == ["c", "a", "b"]


def test_questions_without_demonstration_are_counted_not_buffered():
    qs = questions(4, without_demo=(0, 1))
    s, gen = make({}, qs=qs, **{"algo.buffer_size": 4})
    step(s, gen, 1)
    assert s.counters["fed_without_demo"] == 2
    assert sorted(s.buffer.ids) == ["q2", "q3"]


def test_rl_advantages_are_reward_minus_group_mean():
    s, gen = make({})
    for q in s.questions:
        gen.script[q.id] = [1, 1, 1, 0]
    b = step(s, gen, 1)
    assert [x.advantage for x in b.rl[:4]] == [0.25, 0.25, 0.25, -0.75]
    assert b.stats.reward_mean == 0.75 and b.stats.bucket_easy == 4


def test_rl_mode_has_no_buffer():
    s, gen = make({}, **{"algo.mode": "rl"})
    b = step(s, gen, 1)
    assert not b.sft and len(s.buffer) == 0


def test_sft_mode_uses_all_demonstrations_without_generating():
    s, gen = make({}, **{"algo.mode": "sft", "algo.sft_batch_size": 4})
    b1, b2 = step(s, gen, 1), step(s, gen, 2)
    ids = [x.question_id for x in b1.sft + b2.sft]
    assert sorted(ids) == sorted(q.id for q in s.questions) and not b1.rl
    assert gen.calls == []


def test_records_track_pass_rates_buffering_and_solved_after_sft():
    s, gen = make({}, **{"algo.batch_size": 8, "algo.buffer_size": 8})
    gen.default = 0
    step(s, gen, 1)  # all 8 hardest -> buffered -> fine-tuned at step 1
    gen.default = 1
    step(s, gen, 2)  # next epoch: all solved
    rec = s.table.records["q0"]
    assert rec.history == [(1, 0.0, 0), (2, 1.0, 1)] and rec.times_buffered == 1
    assert rec.sft_steps == [1] and rec.first_solved_step == 2 and rec.solved_after_sft is True
    row = {r["id"]: r for r in s.question_rows()}["q0"]
    assert row["pass_rate_history"] == "1:0 2:1" and row["solved_after_sft"] is True


def test_off_policy_samples_are_refused():
    s, gen = make({})
    gen.weight_version = 5
    with pytest.raises(RuntimeError, match="weight versions \\[5\\], expected 0"):
        s.next_batch(1)


def test_learner_out_of_sync_is_refused():
    s, gen = make({})
    with pytest.raises(RuntimeError, match="asked for step 3"):
        s.next_batch(3)


def test_shards_split_the_batch_across_learners():
    s, gen = make({})
    gen.default = 0
    full = s.produce(1)
    parts = [full.shard(r, 2) for r in range(2)]
    assert len(parts[0].rl) + len(parts[1].rl) == len(full.rl)
    assert set(parts[0].sft).isdisjoint(parts[1].sft)


def test_state_round_trip_continues_exactly():
    """Kill-and-resume at the scheduler level: a restored scheduler makes the same decisions."""
    script = {f"q{i}": [i % 2, 0, 0, 0] for i in range(8)}
    a, gen_a = make(dict(script), **{"algo.buffer_size": 5})
    for k in (1, 2, 3):
        step(a, gen_a, k)
    saved = json.loads(json.dumps(a.state_dict()))  # as it travels in a checkpoint
    tail_a = [step(a, gen_a, k) for k in (4, 5, 6)]

    b, gen_b = make(dict(script), **{"algo.buffer_size": 5})
    b.load_state_dict(saved)
    gen_b.weight_version = 3
    assert json.loads(json.dumps(b.state_dict())) == saved
    tail_b = [step(b, gen_b, k) for k in (4, 5, 6)]
    for x, y in zip(tail_a, tail_b):
        assert x.rl == y.rl and x.sft == y.sft
        assert {k: v for k, v in x.stats.as_dict().items()
                if "second" not in k and "per_s" not in k} == \
               {k: v for k, v in y.stats.as_dict().items()
                if "second" not in k and "per_s" not in k}
    assert a.state_dict() == b.state_dict()


def test_sampler_epochs_reshuffle_and_restore():
    s = Sampler(5, seed=3)
    first = s.take(7)
    assert sorted(first[:5]) == list(range(5)) and s.epoch == 1
    st = s.state_dict()
    nxt = s.take(6)
    t = Sampler(5, seed=99)
    t.load_state_dict(st)
    assert t.take(6) == nxt


# ------------------------------------------------------------ the paper's ablations and modes

def test_fixed_schedule_fine_tunes_every_k_steps_on_what_is_waiting():
    s, gen = make({}, **{"algo.sft_trigger": "every_k", "algo.sft_every": 2,
                         "algo.buffer_size": 16})
    gen.default = 0  # every question hardest: 4 enter the buffer per step
    b1, b2, b3 = step(s, gen, 1), step(s, gen, 2), step(s, gen, 3)
    assert not b1.sft and not b3.sft  # off-schedule steps never fine-tune, even with a buffer
    assert len(b2.sft) == 8 and len(s.buffer) == 4  # step 2: all 8 waiting (< M), newest first
    assert s.counters["sft_steps"] == 1


def test_sft_every_step_uses_at_most_m_newest():
    s, gen = make({}, **{"algo.sft_trigger": "every_step", "algo.buffer_size": 3})
    gen.default = 0
    b1 = step(s, gen, 1)
    assert len(b1.sft) == 3 and len(s.buffer) == 1  # 4 fed, M=3 taken, 1 left for the next
    gen.default = 1  # nothing hardest in step 2: the one left over still gets its SFT step
    b2 = step(s, gen, 2)
    assert len(b2.sft) == 1 and len(s.buffer) == 0
    b3 = step(s, gen, 3)
    assert not b3.sft  # an empty buffer: no SFT step


def test_non_hardest_feed_buffers_the_solved_questions():
    s, gen = make({}, **{"algo.buffer_feed": "non_hardest", "algo.buffer_size": 2})
    order = [s.questions[i].id for i in s.sampler.order]
    gen.script.update({order[0]: [0, 0, 0, 0], order[1]: [1, 0, 0, 0],
                       order[2]: [1, 1, 1, 1], order[3]: [0, 0, 0, 0]})
    b1 = step(s, gen, 1)
    assert sorted(x.question_id for x in b1.sft) == sorted([order[1], order[2]])
    assert s.table.get(order[0]).times_buffered == 0


def test_sft_then_rl_runs_offline_sft_first_then_rl_only():
    qs = questions(8, without_demo=(7,))
    s, gen = make({}, qs, **{"algo.mode": "sft_then_rl", "algo.sft_first_steps": 2,
                             "algo.sft_batch_size": 4, "train.steps": 5})
    gen.default = 0
    b1, b2 = step(s, gen, 1), step(s, gen, 2)
    assert not b1.rl and not b2.rl and len(b1.sft) == len(b2.sft) == 4
    # the first 7 cover every demonstration once (a shuffled pass), then the next pass starts
    assert sorted(x.question_id for x in (b1.sft + b2.sft)[:7]) == sorted(q.id for q in qs[:7])
    assert gen.calls == []  # offline: nothing generated
    b3 = step(s, gen, 3)
    assert len(b3.rl) == 16 and not b3.sft and len(s.buffer) == 0  # RL, no buffer after
    assert s.counters["sft_steps"] == 2 and s.demos_available == 7


def test_mixed_mode_puts_a_demo_of_every_question_of_the_step_into_the_rl_batch():
    # the paper's "RL w/ SFT loss": one demonstration per question of the batch, every step
    s, gen = make({}, questions(without_demo=(0,)), **{"algo.mode": "mixed"})
    order = [s.questions[i].id for i in s.sampler.order]
    gen.default = 1
    b1 = step(s, gen, 1)
    assert b1.sft_mixed and [x.question_id for x in b1.sft] == [q for q in order[:4]
                                                                if q != "q0"]
    assert s.counters["fed_without_demo"] == ("q0" in order[:4])


def test_mixed_mode_puts_this_steps_hardest_demos_into_the_rl_batch():
    s, gen = make({}, **{"algo.mode": "mixed", "algo.mixed_demos": "hardest"})
    order = [s.questions[i].id for i in s.sampler.order]
    gen.default = 1
    gen.script.update({order[1]: [0, 0, 0, 0], order[3]: [0, 0, 0, 0]})
    b1 = step(s, gen, 1)
    assert b1.sft_mixed and [x.question_id for x in b1.sft] == [order[1], order[3]]
    assert len(b1.rl) == 16 and len(s.buffer) == 0  # no buffer: same step, same loss
    assert b1.shard(0, 2).sft_mixed
    gen.default = 1
    gen.script.clear()
    assert not step(s, gen, 2).sft


def test_demonstrations_are_cut_as_released():
    # data.max_demo_tokens: the first tokens, the last kept place EOS (the released dataset
    # class's max_target_len); shorter ones keep all their tokens and get EOS after them
    long = "1+1=2 " * 40
    qs = [Question(id="long", prompt="Q:1+1\n", answer="2", demo=long, level=1),
          Question(id="short", prompt="Q:2+1\n", answer="3", demo="3", level=1)]
    s, gen = make({}, qs, **{"algo.mode": "sft", "algo.sft_batch_size": 2,
                             "data.max_demo_tokens": 16})
    by = {x.question_id: x for x in step(s, gen, 1).sft}
    full = TOK(long, add_special_tokens=False)["input_ids"]
    assert len(full) > 16
    assert by["long"].response_ids == tuple(full[:15]) + (TOK.eos_token_id,)
    assert by["short"].response_ids == tuple(TOK("3", add_special_tokens=False)["input_ids"]) \
        + (TOK.eos_token_id,)
    assert s.counters["demos_cut"] == 1


def test_state_round_trip_includes_the_offline_sampler():
    s, gen = make({}, **{"algo.mode": "sft_then_rl", "algo.sft_first_steps": 2,
                         "algo.sft_batch_size": 3, "train.steps": 4})
    step(s, gen, 1)
    saved = json.loads(json.dumps(s.state_dict()))
    b2 = step(s, gen, 2)
    t, tgen = make({}, **{"algo.mode": "sft_then_rl", "algo.sft_first_steps": 2,
                          "algo.sft_batch_size": 3, "train.steps": 4})
    t.load_state_dict(saved)
    tgen.weight_version = 1
    assert [x.question_id for x in t.next_batch(2).sft] == [x.question_id for x in b2.sft]


def test_sampler_logprobs_reach_the_rl_samples():
    class LogprobGenerator(ScriptedGenerator):
        def generate(self, questions, params):
            out = super().generate(questions, params)
            return [[Completion(c.question_id, c.text, c.prompt_ids, c.response_ids,
                                c.weight_version, logprobs=(-0.5, -0.25)) for c in group]
                    for group in out]

    from relift_ray.records import Completion
    s, gen = make({})
    gen.__class__ = LogprobGenerator
    b = step(s, gen, 1)
    assert all(x.behavior_logprobs == (-0.5, -0.25) for x in b.rl)


def test_state_is_plain_json():
    """The state is saved as JSON with each checkpoint: it must survive json unchanged."""
    script = {f"q{i}": [i % 2, 0, 0, 0] for i in range(8)}
    a, gen_a = make(dict(script), **{"algo.buffer_size": 5})
    for k in (1, 2, 3):
        step(a, gen_a, k)
    state = a.state_dict()
    assert json.loads(json.dumps(state)) == json.loads(json.dumps(state, sort_keys=True))
    b, _ = make(dict(script), **{"algo.buffer_size": 5})
    b.load_state_dict(json.loads(json.dumps(state)))
    assert json.dumps(b.state_dict()) == json.dumps(state)


# ------------------------------------------------------------ asynchronous rollouts

def async_step(s, gen, k):
    """One learner step against an asynchronous scheduler: take batch k, then publish
    version k as the learner's publisher does (wait for the batch sampled ahead, load, say)."""
    b = s.next_batch(k)
    if k >= 1 and s.lag:
        s.wait_generated(k + s.lag)
    gen.weight_version = k
    s.weights_published(k)
    return b


def test_async_batches_are_sampled_lag_versions_behind_and_ahead_of_the_learner():
    script = {f"q{i}": [i % 2, 0, 0, 0] for i in range(8)}
    s, gen = make(dict(script), **{"algo.max_staleness": 2, "train.steps": 7})
    s.weights_published(0)  # the learners publish their starting weights first
    batches = [async_step(s, gen, k) for k in range(1, 8)]
    # batch s comes from version max(0, s - 1 - 2)
    assert [b.weight_version for b in batches] == [0, 0, 0, 1, 2, 3, 4]
    assert all(b.stats.weight_version == b.weight_version for b in batches)
    # the generator was asked for batch s while the learner had finished step s - 3 at most
    assert len(gen.calls) == 7 and all(p.logprobs for _, p in gen.calls)
    # the question table keeps the version that sampled each pass rate
    hist = [h for r in s.table.records.values() for h in r.history]
    assert {(st, v) for st, _, v in hist} <= {(st, max(0, st - 3)) for st in range(1, 8)}
    rows = {r["id"]: r for r in s.question_rows()}
    assert any("@" in r["pass_rate_history"] for r in rows.values())
    s.close()


def test_async_scheduler_matches_the_on_policy_one_when_weights_do_not_matter():
    """Scripted rollouts do not depend on the weights, so lag 1 and lag 0 make the same
    batches: asynchrony changes when a batch is made, never what the scheduler decides."""
    script = {f"q{i}": [i % 2, 0, 0, 0] for i in range(8)}
    a, gen_a = make(dict(script), **{"algo.buffer_size": 5, "train.steps": 6})
    b, gen_b = make(dict(script), **{"algo.buffer_size": 5, "train.steps": 6,
                                     "algo.max_staleness": 1})
    b.weights_published(0)
    on = [step(a, gen_a, k) for k in range(1, 7)]
    off = [async_step(b, gen_b, k) for k in range(1, 7)]
    for x, y in zip(on, off):
        assert x.rl == y.rl and x.sft == y.sft
    b.close()


def test_async_state_keeps_the_batches_made_ahead_and_resumes_exactly():
    script = {f"q{i}": [i % 2, 0, 0, 0] for i in range(8)}
    over = {"algo.buffer_size": 5, "algo.max_staleness": 2, "train.steps": 8}
    a, gen_a = make(dict(script), **over)
    a.weights_published(0)
    for k in (1, 2, 3):
        async_step(a, gen_a, k)
    # the checkpoint of step 3: batches 4 and 5 (versions 1 and 2, which a resumed run no
    # longer has) are made and travel with the state, perhaps batch 6 too
    saved = json.loads(json.dumps(a.state_dict()))
    ahead = [r["step"] for r in saved["ready"]]
    assert {4, 5} <= set(ahead) <= {3, 4, 5, 6}
    tail_a = [async_step(a, gen_a, k) for k in range(4, 9)]

    b, gen_b = make(dict(script), **over)
    b.load_state_dict(saved)
    gen_b.weight_version = 3
    b.weights_published(3)  # the resumed learners publish their checkpoint's weights first
    tail_b = [async_step(b, gen_b, k) for k in range(4, 9)]
    for x, y in zip(tail_a, tail_b):
        assert (x.step, x.weight_version, x.rl, x.sft) == (y.step, y.weight_version, y.rl, y.sft)
    assert a.state_dict()["records"] == b.state_dict()["records"]
    a.close(), b.close()


def test_async_learner_out_of_sync_is_an_error():
    s, gen = make({}, **{"algo.max_staleness": 1, "train.steps": 5})
    s.weights_published(0)
    async_step(s, gen, 1)
    with pytest.raises(RuntimeError, match="learner asked for step 6, scheduler makes batch"):
        s.next_batch(6)  # batches 2 and 3 may be made, 4 needs version 2: never 6
    s.close()


def test_drop_last_keeps_every_batch_within_one_pass():
    s = Sampler(10, seed=3, drop_last=True)
    first = s.take(4) + s.take(4)
    assert sorted(first) == sorted(s.order[:8]) and s.epoch == 0
    third = s.take(4)  # 2 left in the pass: dropped, the batch comes from the next pass
    assert s.epoch == 1 and third == s.order[:4]
    wrap = Sampler(10, seed=3)
    wrap.take(8)
    mixed = wrap.take(4)  # without drop_last the pass's last 2 open the next batch
    assert wrap.epoch == 1 and mixed[2:] == wrap.order[:2]


def test_epochs_give_the_steps_from_the_questions_kept():
    from relift_ray.config import load_config
    from relift_ray.core.questions import steps_of
    cfg = load_config(overrides=["train.epochs=3", "algo.batch_size=128"])
    # the released run: 45,7xx questions kept, 128 per step, drop_last, 3 epochs
    assert steps_of(cfg, 45714) == 3 * 357
    assert steps_of(load_config(overrides=["train.steps=7"]), 45714) == 7  # epochs=0: steps
    with pytest.raises(ValueError, match="no whole batch"):
        steps_of(cfg, 100)
    s, _ = make({}, **{"train.epochs": 2})  # 8 questions, 4 per step
    assert s.total_steps() == 4


def test_validation_averages_sources_and_remembers_the_best():
    # two sources of different sizes: each counts once in the average
    val = [Question(id=f"a{i}", prompt="x", answer="1", source="aime") for i in range(2)] + \
          [Question(id=f"m{i}", prompt="x", answer="1", source="math") for i in range(4)]
    s, gen = make({}, **{"tracking.eval_every": 2})
    s.val_questions = val
    gen.script = {"a0": [1], "a1": [0], "m0": [1], "m1": [1], "m2": [1], "m3": [1]}
    r1 = s.validate(2)
    assert r1["sources"] == {"aime": 0.5, "math": 1.0} and r1["score"] == 0.75
    assert r1["is_best"] and r1["best_score"] == 0.75
    # validation samples once per question at tracking.val_temperature
    params = gen.calls[-1][1]
    assert params.n == 1 and params.temperature == pytest.approx(0.6)
    gen.script["m0"] = [0]
    r2 = s.validate(4)
    assert r2["score"] == pytest.approx((0.5 + 0.75) / 2) and not r2["is_best"]
    assert r2["best_score"] == 0.75
    state = json.loads(json.dumps(s.state_dict()))
    assert state["validation"]["best"]["step"] == 2 and state["validation"]["last"]["step"] == 4
    s2, _ = make({})
    s2.load_state_dict(state)  # a resumed run compares with the same best
    assert s2.validation()["best"]["score"] == 0.75


def test_weights_taken_by_the_scheduler_reach_the_generators_before_they_sample(ray_local):
    """take_weights (the object-store publisher's one call): the scheduler keeps the
    reference, has each generator actor load it without waiting, and counts it published;
    the next batch is sampled with it, and a load that fails fails that step."""
    import ray

    from relift_ray.records import Completion

    class Gen:  # defined here: Ray's workers cannot import the tests' helpers module
        def __init__(self, bad=False):
            self.version, self.bad = 0, bad

        def get_version(self):
            return self.version

        def load_weights(self, version, state_dict):
            if self.bad:
                raise ValueError("size mismatch for lm_head.weight")
            assert state_dict == {"w": 1}
            self.version = version
            return version

        def generate(self, qs, params):
            return [[Completion(q.id, "ok", (1, 2), (3, 1), self.version)
                     for _ in range(params.n)] for q in qs]

    cfg = load_config(overrides=["algo.batch_size=4", "algo.n_samples=2",
                                 "cluster.num_learners=1", "algo.minibatches=1"])
    gens = [ray.remote(Gen).remote() for _ in range(2)]
    s = Scheduler(cfg, questions(), TOK, gens, [ScriptedRewarder()])
    assert s.next_batch(1).weight_version == 0
    ref = ray.put({"w": 1})
    s.take_weights(1, [ref])
    assert s.group.kept[0] == 1 and s._published == 1
    b2 = s.next_batch(2)  # sampled with version 1 (the scheduler checks every completion)
    assert b2.weight_version == 1 and s.group.pending_loads() == (None, [])
    assert ray.get([g.get_version.remote() for g in gens]) == [1, 1]

    s.group.generators = [ray.remote(Gen).remote(bad=True)]
    s.take_weights(2, [ref])
    with pytest.raises(RuntimeError, match="generator 0 failed to load weight version 2: "
                                           "ValueError: size mismatch"):
        s.next_batch(3)
