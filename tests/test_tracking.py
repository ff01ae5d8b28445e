"""The learner's MLflow step logger: batched background writes, a run id that comes later."""
import time

import pytest


def test_step_logger_writes_every_step_once_the_run_id_arrives(tmp_path):
    import mlflow

    from relift_ray.tracking.tracker import StepLogger
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("t")
    run_id = client.create_run(exp).info.run_id
    asked = []

    def later():  # the driver opens its run after the learners start: the id comes late
        asked.append(time.time())
        return run_id

    log = StepLogger(uri, later)
    for step in range(1, 6):
        log.log(step, {"reward_mean": step / 10, "step_seconds": 0.5, "bad": float("nan")})
    log.close()
    assert len(asked) == 1  # resolved once, by the writing thread
    hist = client.get_metric_history(run_id, "reward_mean")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == \
        [(s, pytest.approx(s / 10)) for s in range(1, 6)]
    assert len(client.get_metric_history(run_id, "step_seconds")) == 5


def test_step_logger_survives_a_run_id_that_never_comes(tmp_path, capsys):
    from relift_ray.tracking.tracker import StepLogger

    def missing():
        raise TimeoutError("no MLflow run id under 'k' after 0 s")

    log = StepLogger(f"sqlite:///{tmp_path}/mlflow.db", missing)
    log.log(1, {"reward_mean": 0.5})
    log.log(2, {"reward_mean": 0.6})
    log.close()  # returns: training never waits on MLflow
    assert "did not reach MLflow: no MLflow run id" in capsys.readouterr().out


def test_write_csv_takes_every_rows_columns(tmp_path):
    import csv

    from relift_ray.tracking.tracker import write_csv
    write_csv([{"a": 1}, {"a": 2, "b": 3}], tmp_path / "t.csv")
    with open(tmp_path / "t.csv") as f:
        assert list(csv.DictReader(f)) == [{"a": "1", "b": ""}, {"a": "2", "b": "3"}]


def test_the_drivers_lines_reach_each_jobs_console_in_turn(ray_local, capsys):
    """A process that runs one job after another (the tests, the chaos script): the driver's
    own lines go to the job running now, not to the console of a job that has ended."""
    from relift_ray.tracking.console import Console, say
    for job in ("first", "second"):
        console = Console.start()
        say(f"[driver] a line of the {job} job")
        console.stop()
    printed = capsys.readouterr().out
    assert "[driver] a line of the first job" in printed
    assert "[driver] a line of the second job" in printed
