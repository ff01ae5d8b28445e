"""`relift data fetch` offline: the shared data served as a fake hub (a stand-in for the
download functions mapping dataset ids and URLs to those files), the folder and manifest it
writes, the grader check on what it fetched, and the errors."""
import json

import pytest
from helpers import fake_hub, needs_shared

from relift_ray.data import fetch as F
from relift_ray.errors import DataError

SIZES = {"math500": 500, "aime24": 30, "aime25": 30, "amc": 83, "amc23": 40, "minerva": 272,
         "olympiadbench": 675, "gsm8k": 1319, "relift_valid": 1987}


@needs_shared
def test_fetch_writes_the_layout_and_a_manifest(fetched):
    root, manifest, lines, calls = fetched
    assert set(manifest) == set(F.SOURCES)
    for name, entry in manifest.items():
        assert entry["rows"] == SIZES[name], name
        assert (root / entry["file"]).stat().st_size == entry["bytes"]
        assert entry["check"]["golds_verified"] >= entry["rows"] - 2, name
        assert entry["check"]["others_rejected"] >= 0.95 * entry["check"]["others_tried"]
    assert json.loads((root / "manifest.json").read_text()) == manifest
    # hub sets are read at their pinned revision; the exact paper sets come from their repos
    assert ("openai/gsm8k", "main") in calls and (F.RELIFT_VALID, None) in calls
    assert any(line.startswith("[fetch] gsm8k: 1319 questions") for line in lines)
    # the evaluation job reads the folder as it reads the shared data
    from relift_ray.data.benchmarks import load_benchmark
    assert [q.answer for q in load_benchmark("amc", root, limit=3)] == ["142", "144", "81"]
    assert load_benchmark("minerva", root)[0].source == "minerva"


@needs_shared
def test_a_hub_set_without_the_expected_column_names_it(tmp_path, monkeypatch):
    snapshot, get = fake_hub(tmp_path, [])
    monkeypatch.setattr(F, "hub_snapshot", snapshot)
    monkeypatch.setitem(F.SOURCES, "gsm8k", F.Source(
        F.HUB, "openai/gsm8k", "test", "main", revision="e53f048",
        columns={"question": "question", "answer": "final"}))
    with pytest.raises(DataError, match=r"openai/gsm8k \(revision e53f048\) split 'test' has "
                                        r"no column 'final' \(columns: answer, question\)"):
        F.fetch(["gsm8k"], tmp_path / "out", log=lambda line: None)
    with pytest.raises(DataError, match="unknown benchmark 'gsm9k'"):
        F.fetch(["gsm9k"], tmp_path / "out")


def test_no_network_and_no_copy_stops_before_any_model_loads(tmp_path, monkeypatch):
    from relift_ray.config import load_config
    from relift_ray.data import benchmarks
    from relift_ray.jobs import evaluate as eval_job

    def offline(repo, revision):
        raise ConnectionError("no network")
    monkeypatch.setattr(F, "hub_snapshot", offline)
    monkeypatch.setenv("RELIFT_CACHE", str(tmp_path / "cache"))
    for var in ("RELIFT_EVAL_DATA", "RELIFT_SHARED_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(benchmarks, "default_data_dir", benchmarks.default_fetch_dir)  # no ../shared

    def no_model(spec):
        raise AssertionError("the model was resolved before the data was checked")
    monkeypatch.setattr(eval_job, "resolve_model", no_model)
    cfg = load_config(None, ["eval.benchmarks=[gsm8k,math500]", f"output_dir={tmp_path}"])
    with pytest.raises(DataError) as e:
        eval_job.run(cfg)
    msg = str(e.value)
    assert "relift data fetch" in msg and "eval.data_dir / RELIFT_EVAL_DATA" in msg
    assert "could not get openai/gsm8k (revision main)" in msg and "\n" not in msg


@needs_shared
def test_the_cli_fetches_into_the_folder_given(tmp_path, monkeypatch, capsys):
    from relift_ray.cli import main
    snapshot, get = fake_hub(tmp_path, [])
    monkeypatch.setattr(F, "hub_snapshot", snapshot)
    monkeypatch.setattr(F, "url_get", get)
    assert main(["data", "fetch", "--benchmarks", "aime24,minerva", "--to",
                 str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "[fetch] aime24: 30 questions" in out and "[fetch] minerva: 272 questions" in out
    assert json.loads((tmp_path / "b/manifest.json").read_text()).keys() == {"aime24",
                                                                              "minerva"}
    assert main(["data", "fetch", "--benchmarks", "nope", "--to", str(tmp_path / "b")]) == 2
