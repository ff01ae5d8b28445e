"""The typed records that cross actors: a batch's figures survive a checkpoint's JSON, and a
step's figures flatten to the names MLflow logs."""
import json

from relift_ray.records import BatchStats, Sample, StepMetrics, TrainBatch


def test_a_batch_and_its_figures_survive_json():
    stats = BatchStats(weight_version=3, reward_mean=0.25, bucket_easy=1, bucket_medium=0,
                       bucket_hard=1, bucket_hardest=2, buffer_size=4, sft_steps=1)
    batch = TrainBatch(step=4, rl=(Sample((1, 2), (3, 4), 0.5, "q"),), weight_version=3,
                       stats=stats)
    back = TrainBatch.from_dict(json.loads(json.dumps(batch.to_dict())))
    assert back == batch and back.stats.bucket_hardest == 2
    assert back.shard(0, 2).stats is back.stats


def test_an_offline_sft_step_has_no_rollout_figures():
    stats = BatchStats(sft_steps=2, demos_used_unique=16)
    assert "reward_mean" not in stats.as_dict() and "bucket_hardest" not in stats.as_dict()
    assert stats.as_dict()["sft_steps"] == 2
    assert BatchStats.from_dict({**stats.as_dict(), "unknown": 1}) == stats


def test_a_steps_figures_flatten_to_their_logged_names():
    m = StepMetrics(step=3, batch=BatchStats(reward_mean=0.5, buffer_size=2),
                    update={"rl/loss": 0.1, "learner_updates": 2}, batch_wait_seconds=0.2,
                    train_seconds=0.3, weight_sync_seconds=0.01, publish_wait_seconds=0.0,
                    staleness=0, sft_this_step=1)
    flat = m.flat()
    assert flat["reward_mean"] == 0.5 and flat["rl/loss"] == 0.1 and flat["sft_this_step"] == 1
    assert "step_seconds" not in flat and "checkpoint_seconds" not in flat  # not measured yet
    m.step_seconds, m.validation = 0.6, {"val/score": 0.75}
    assert m.flat()["step_seconds"] == 0.6 and m.flat()["val/score"] == 0.75


def test_free_ports_are_distinct_and_bindable():
    import socket

    from relift_ray.background import free_ports  # only this test needs it

    ports = free_ports(64, "127.0.0.1")
    assert len(set(ports)) == 64
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # released again once chosen


def test_the_run_summary_counts_the_scoring_faults(capsys):
    from relift_ray.config import load_config
    from relift_ray.jobs.train import print_summary
    from relift_ray.records import RunSummary
    s = RunSummary(run_id="r", before={}, after={"overall": 0.5}, sft_steps=1,
                   demos_used_unique=1, demos_used_total=1, demos_available=4,
                   reward_timeouts=2, checkpoint="", question_table="", wall_seconds=1.0,
                   reward_deaths=1, reward_memory=3, reward_killed=1)
    assert {"reward_deaths": 1, "reward_memory": 3, "reward_killed": 1}.items() <= \
        s.numbers().items()  # logged to MLflow with the other figures
    print_summary(load_config(None, []), s)
    assert ("scoring: 2 answers past the time limit, 3 past the memory limit, 1 that killed "
            "the scoring process; 1 scoring processes restarted after dying") in \
        capsys.readouterr().out
