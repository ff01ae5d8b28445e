"""The checkpoint folders' own safety, without a learner: the best policy swapped in one
rename (a crash leaves the old best or the new, never none), the run folder's lock."""
import json
import shutil
from pathlib import Path

import pytest

from relift_ray.learner import checkpoint as C


def fake_save_policy(calls):
    def save(learner, folder, rank, model_path):
        calls.append(folder.name)
        if learner == "crash":
            folder.mkdir(parents=True)
            (folder / "half.bin").write_text("x")
            raise OSError("disk full")
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_text(str(learner))
    return save


def test_the_best_policy_is_swapped_whole(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(C, "save_policy", fake_save_policy(calls))
    best = tmp_path / "best"
    val = {"score": 0.5, "sources": {}}
    C.save_best("v10", best, 10, 0, val, "m")
    assert best.is_symlink() and (best / "policy/model.safetensors").read_text() == "v10"
    assert json.loads((best / "meta.json").read_text())["step"] == 10
    C.save_best("v20", best, 20, 0, val, "m")
    assert (best / "policy/model.safetensors").read_text() == "v20"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "best-step20"]  # 10 gone
    # a crash while writing the next one: best is still step 20's, whole
    with pytest.raises(OSError, match="disk full"):
        C.save_best("crash", best, 30, 0, val, "m")
    assert (best / "policy/model.safetensors").read_text() == "v20"
    assert json.loads((best / "meta.json").read_text())["step"] == 20
    # the next save clears the half-written folder; the same step again gets its own folder
    C.save_best("v30", best, 30, 0, val, "m")
    C.save_best("v30b", best, 30, 0, val, "m")
    assert (best / "policy/model.safetensors").read_text() == "v30b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "best-step30-again"]


def test_a_best_folder_from_before_links_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "save_policy", fake_save_policy([]))
    best = tmp_path / "best"
    (best / "policy").mkdir(parents=True)
    C.save_best("v5", best, 5, 0, {"score": 1.0, "sources": {}}, "m")
    assert best.is_symlink() and (best / "policy/model.safetensors").read_text() == "v5"
    assert not (tmp_path / "best-step0-legacy").exists()  # removed as a replaced best


def test_a_workers_scratch_left_by_a_crash_is_cleared_for_its_rank_alone(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    run_a, run_b = tmp_path / "runs" / "a", tmp_path / "other" / "a"
    scratch = C.scratch_dir(run_a)
    assert scratch.parent == tmp_path and scratch != C.scratch_dir(run_b)  # per run folder
    for name in ("save-r0-s10", "ckpt-r0-read", "save-r1-s10", "save-r10-s10"):
        (scratch / name).mkdir(parents=True)
        (scratch / name / "x.pt").write_text("partial")
    assert C.clear_scratch(scratch, 0) == ["ckpt-r0-read", "save-r0-s10"]
    assert sorted(p.name for p in scratch.iterdir()) == ["save-r1-s10", "save-r10-s10"]
    assert C.clear_scratch(tmp_path / "nothing", 0) == []


def _rank_part(d, rank, files):
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    C.mark_complete(d, rank)


def test_a_checkpoint_is_complete_only_when_every_rank_marked_its_files(tmp_path):
    """The markers written last find what a crash mid-write, a full disk or a later change
    leave: a rank's part missing, a file missing, a file of another size."""
    # two ranks write their parts apart (Ray Train merges them into one folder)
    merged = tmp_path / "ckpt"
    _rank_part(tmp_path / "r0", 0, {"meta.json": '{"step": 4}', "deepspeed/a.pt": "aaaa"})
    _rank_part(tmp_path / "r1", 1, {"deepspeed/b.pt": "bbbbbb"})
    shutil.copytree(tmp_path / "r0", merged)
    assert C.checkpoint_problem(merged, 2) == \
        "rank 1's part is incomplete (complete-r1.json is missing)"
    shutil.copytree(tmp_path / "r1", merged, dirs_exist_ok=True)
    assert C.checkpoint_problem(merged, 2) == ""
    (merged / "deepspeed/b.pt").write_text("bbb")  # truncated
    assert C.checkpoint_problem(merged, 2) == \
        "deepspeed/b.pt (rank 1) has 3 bytes, 6 when saved"
    (merged / "deepspeed/b.pt").unlink()
    assert C.checkpoint_problem(merged, 2) == "deepspeed/b.pt (rank 1) is missing"
    # a checkpoint written before markers existed is taken as it is
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "meta.json").write_text('{"step": 2}')
    assert C.checkpoint_problem(legacy, 2) == ""


def test_the_newest_complete_checkpoint_sets_where_the_failure_budget_begins(tmp_path):
    from relift_ray.config import load_config
    from relift_ray.runtime.topology import newest_checkpoint_step
    cfg = load_config(overrides=[f"output_dir={tmp_path}", "name=r", "cluster.num_learners=1"])
    store = Path(cfg.storage_path) / "r"
    assert newest_checkpoint_step(cfg) == 0
    _rank_part(store / "checkpoint_2026-01-01_00-00-01.000000", 0, {"meta.json": '{"step": 2}'})
    _rank_part(store / "checkpoint_2026-01-01_00-00-02.000000", 0, {"meta.json": '{"step": 4}',
                                                                    "x.pt": "xx"})
    assert newest_checkpoint_step(cfg) == 4
    (store / "checkpoint_2026-01-01_00-00-02.000000" / "x.pt").write_text("x")
    assert newest_checkpoint_step(cfg) == 2  # the newest is incomplete
