"""GPU-path pieces that run anywhere: importance-sampling correction, the log-prob mismatch
figures, the sampler's log-probs in the learner's tensors, the watchdog and the generator
calls that weight sync makes (the transfers themselves are in tests/gpu)."""
import math
import time

import pytest
import torch

from relift_ray.core.algo import logprob_mismatch, policy_loss, tis_weights
from relift_ray.learner.forward import to_tensors
from relift_ray.learner.weight_sync import (
    WeightSyncTimeout,
    bucket_bytes_for,
    named_weights,
    on_all,
    weights_nbytes,
    with_deadline,
)
from relift_ray.records import Sample


def test_tis_weights_are_the_truncated_ratio_and_one_on_padding():
    logp_old = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    behavior = torch.tensor([[-1.5, -1.0, -0.5, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = tis_weights(logp_old, behavior, mask, cap=1.5)
    # exp(0.5)=1.6487 -> capped at 1.5; exp(-1)=0.3679; exp(0)=1; padding -> 1
    assert w[0].tolist() == pytest.approx([1.5, math.exp(-1.0), 1.0, 1.0], rel=1e-6)


def test_policy_loss_multiplies_each_token_by_its_is_weight():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0]])
    adv = torch.tensor([2.0])
    mask = torch.ones(1, 2)
    ent = torch.zeros(1, 2)
    w = torch.tensor([[0.5, 2.0]])
    loss, m = policy_loss(logp, old, adv, mask, ent, kind="relift", l_max=4,
                          entropy_coef=0.0, is_weight=w)
    # ratio 1 everywhere: -(2 * (0.5 + 2.0)) / 4
    assert loss.item() == pytest.approx(-1.25)
    loss.backward()
    # d/dlogp of -(A * w * exp(logp - old)) / L = -A * w / L at ratio 1
    assert logp.grad[0].tolist() == pytest.approx([-0.25, -1.0])
    plain, _ = policy_loss(logp.detach(), old, adv, mask, ent, kind="relift", l_max=4,
                           entropy_coef=0.0)
    assert plain.item() == pytest.approx(-1.0)


def test_logprob_mismatch_figures():
    learner = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    sampler = torch.tensor([[-1.1, -2.0, -7.0], [-0.5, -0.2, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    m = logprob_mismatch(learner, sampler, mask)
    assert m["tokens"] == 5
    assert m["logprob_abs_diff_mean"] == pytest.approx((0.1 + 0.3) / 5)
    assert m["logprob_abs_diff_max"] == pytest.approx(0.3)
    assert m["prob_ratio_mean"] == pytest.approx((math.exp(0.1) + math.exp(-0.3) + 3) / 5)
    assert m["seq_log_ratio_abs_max"] == pytest.approx(0.3)


def test_sampler_logprobs_sit_where_the_mask_is():
    s = [Sample((5, 6, 7), (8, 9), 1.0, behavior_logprobs=(-0.1, -0.2)),
         Sample((5,), (8, 9, 10), -1.0, behavior_logprobs=(-0.3, -0.4, -0.5))]
    t = to_tensors(s, 0, "cpu")
    assert t["mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert t["blp"][0].tolist() == pytest.approx([0, 0, -0.1, -0.2])
    assert t["blp"][1].tolist() == pytest.approx([-0.3, -0.4, -0.5, 0])
    # no sampler log-probs (the transformers backend): no tensor, rather than zeros
    assert "blp" not in to_tensors([Sample((1,), (2,), 0.0)], 0, "cpu")


def test_watchdog_times_out_returns_and_reraises():
    t0 = time.perf_counter()
    with pytest.raises(WeightSyncTimeout, match=r"version 3 \(nccl\) did not finish in 0.2 s"):
        with_deadline(lambda: time.sleep(5), 0.2, "weight sync of version 3 (nccl)")
    assert time.perf_counter() - t0 < 2
    assert with_deadline(lambda: 42, 5, "x") == 42
    with pytest.raises(KeyError, match="boom"):
        with_deadline(lambda: {}["boom"], 5, "x")


def test_call_all_on_local_generators_and_ray_actors(ray_local):
    class _Gen:  # defined here so Ray ships the class by value to its workers
        def __init__(self):
            self.calls, self.version = [], 0

        def start_weight_update(self):
            self.calls.append("start")

        def set_version(self, v):
            self.version = v
            return v

    gens = [_Gen(), _Gen()]
    assert on_all(gens, "set_version", 4) == [4, 4]
    on_all(gens, "start_weight_update")
    assert [g.calls for g in gens] == [["start"], ["start"]]
    actors = [ray_local.remote(_Gen).options(num_cpus=0.01).remote() for _ in range(2)]
    assert on_all(actors, "set_version", 9) == [9, 9]
    for a in actors:
        ray_local.kill(a)


def test_buckets_fit_the_largest_tensor_and_sizes_count_every_parameter():
    m = torch.nn.Sequential(torch.nn.Embedding(1000, 300), torch.nn.Linear(300, 2))
    assert weights_nbytes(m) == (1000 * 300 + 300 * 2 + 2) * 4
    assert bucket_bytes_for(m, 1) == 1000 * 300 * 4  # 1.14 MiB embedding > 1 MiB bucket
    assert bucket_bytes_for(m, 4) == 4 * 2 ** 20
    names = [n for n, _ in named_weights(m)]
    assert names == ["0.weight", "1.weight", "1.bias"]


def test_colocated_learners_leave_the_generator_its_share_of_the_gpu():
    from relift_ray.config import load_config
    from relift_ray.runtime.topology import COLOCATED_GENERATOR_GPU, learner_resources
    gpu = ["generator.backend=vllm", "cluster.use_gpu=true", "cluster.learner_cpus=2"]
    assert learner_resources(load_config(overrides=gpu)) == {"CPU": 2, "GPU": 1}
    both = load_config(overrides=gpu + ["generator.colocate=true", "generator.weight_sync=ipc",
                                        "cluster.num_generators=2"])
    assert learner_resources(both)["GPU"] + COLOCATED_GENERATOR_GPU == pytest.approx(1.0)
    assert learner_resources(load_config(overrides=[])) == {"CPU": 0.5}


class _RecordingGen:
    """A generator that records the publisher's calls (sleep, wake-up, load) in order."""

    def __init__(self, log):
        self.log, self.version = log, 0

    def sleep(self, level):
        self.log.append(("sleep", level))

    def wake_up(self, tags):
        self.log.append(("wake_up", tuple(tags)))

    def load_weights(self, version, sd):
        self.log.append(("load", version, sorted(sd)))
        self.version = version
        return version


class _FakeLearner:
    def sync_weights(self):
        return {"w": torch.ones(2)}


def test_publisher_is_chosen_from_config_and_loads_in_process_generators():
    from relift_ray.config import load_config
    from relift_ray.learner.weight_sync import InProcessPublisher, make_publisher
    log = []
    pub = make_publisher(load_config(overrides=[]), [_RecordingGen(log), _RecordingGen(log)])
    assert isinstance(pub, InProcessPublisher)
    pub.after_generation()  # not colocated: the engines stay awake
    seconds = pub.publish(_FakeLearner(), 3)
    assert isinstance(seconds, float) and 0 < seconds < 60  # the sync's own time
    assert pub.waited < 0.1  # on-policy: nothing sampled ahead to wait for
    assert log == [("load", 3, ["w"]), ("load", 3, ["w"])]
    assert pub.sent_bytes == 8  # two fp32 values, to each generator
    assert [g.version for g in pub.generators] == [3, 3]


def test_colocated_engines_sleep_after_generation_and_wake_weights_first():
    from relift_ray.learner.weight_sync import InProcessPublisher
    log = []
    pub = InProcessPublisher([_RecordingGen(log)], colocate=True)
    pub.after_generation()
    assert log == [("sleep", 1)]  # asleep while the learners train
    pub.publish(_FakeLearner(), 1)
    assert log[1:] == [("wake_up", ("weights",)), ("load", 1, ["w"]), ("wake_up", ("kv_cache",))]


def test_publisher_refuses_a_generator_that_reports_another_version():
    from relift_ray.learner.weight_sync import InProcessPublisher

    class Stuck(_RecordingGen):
        def load_weights(self, version, sd):
            return 0

    with pytest.raises(RuntimeError, match=r"weight versions \[0\] after the sync, expected 2"):
        InProcessPublisher([Stuck([])]).publish(_FakeLearner(), 2)


def test_nccl_sync_finishes_the_update_when_the_transfer_fails(monkeypatch):
    """A broadcast that fails leaves no engine inside an open weight update (the next sync
    would block on it): finish_weight_update runs anyway, and the error reaches the step."""
    import sys
    import types

    from relift_ray.learner.weight_sync import NCCLWeightSync

    class Engine:
        @staticmethod
        def trainer_send_weights(named, args):
            next(iter(named))
            raise RuntimeError("NCCL error: remote process exited")

    fake = types.ModuleType("vllm.distributed.weight_transfer.nccl_engine")
    fake.NCCLWeightTransferEngine = Engine
    fake.NCCLTrainerSendWeightsArgs = lambda **kw: kw
    for name in ("vllm", "vllm.distributed", "vllm.distributed.weight_transfer"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)

    class Gen:
        def __init__(self):
            self.calls = []

        def __getattr__(self, method):
            return lambda *a: self.calls.append(method)

    gens = [Gen(), Gen()]
    sync = NCCLWeightSync(gens, "127.0.0.1", 1, timeout_s=30)
    with pytest.raises(RuntimeError, match="NCCL error"):
        sync.send(torch.nn.Linear(2, 2), version=3)
    for g in gens:
        assert g.calls == ["start_weight_update", "update_weights", "finish_weight_update"]
