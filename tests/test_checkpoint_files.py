"""The checkpoint folders' own safety, without a learner: the best policy swapped in one
rename (a crash leaves the old best or the new, never none), the run folder's lock."""
import json

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
