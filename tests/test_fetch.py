"""`relift data fetch` offline: fake hub and GitHub repositories with the real ones' file layouts
(helpers.FAKE_HUB), the pins (commit, file, rows, sha256) checked against the shared copies
where they are the same files, the verification that stops a changed source, the manifest as a
lock file for sources without a pin, the gold check through the reward worker, the errors."""
import dataclasses
import hashlib
import json

import pytest
from helpers import (
    FAKE_GITHUB,
    FAKE_HEAD,
    FAKE_HUB,
    SHARED,
    fake_hub,
    needs_shared,
    unpin_hub_hashes,
)

from relift_ray.data import fetch as F
from relift_ray.errors import DataError
from relift_ray.jobs.data_fetch import fetch_checked, gold_scorer

SIZES = {"math500": 500, "aime24": 30, "aime25": 30, "amc": 83, "amc23": 40, "minerva": 272,
         "olympiadbench": 674, "gsm8k": 1319, "relift_valid": 1987, "mmlu_pro": 40}


def quiet(line):
    pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The fake repositories in place of the network; returns the calls made to them."""
    calls: list = []
    snapshot, get = fake_hub(tmp_path, calls)
    monkeypatch.setattr(F, "hub_snapshot", snapshot)
    monkeypatch.setattr(F, "url_get", get)
    unpin_hub_hashes(monkeypatch)
    return calls


@pytest.mark.parametrize("name", list(F.SOURCES))
def test_every_source_is_one_file_at_a_full_commit(name):
    src = F.SOURCES[name]
    assert src.rows == (0 if name == "mmlu_pro" else SIZES[name])  # its rows: not known here
    assert not any(c in src.file for c in "*?[")  # one file, by its path
    if src.kind == F.GITHUB:  # a repository file: always at a known commit, with its hash
        assert len(src.revision) == 40
        assert len(src.sha256) == 64 or name == "mmlu_pro"  # its bytes were not at hand
    else:  # a hub set whose commit is not known here is locked by its first fetch
        assert src.revision == "" or len(src.revision) == 40
        assert src.file in FAKE_HUB[src.where]  # the fake hub has the real layout


@needs_shared
@pytest.mark.parametrize("name", [n for n, s in F.SOURCES.items()
                                  if s.kind == F.GITHUB and FAKE_GITHUB[(s.where, s.file)]])
def test_the_pins_of_repository_files_match_the_shared_copies(name):
    # the shared copies are byte-exact copies of these files (SOURCES.md): the pinned hash and
    # rows are checked against real bytes, not against what the fake writes
    src = F.SOURCES[name]
    path = SHARED / FAKE_GITHUB[(src.where, src.file)]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == src.sha256
    assert F._count(src, path) == src.rows


SHARED_COPIES = {"math500": "eval/math500/test.jsonl", "aime24": "eval/aime24/test.jsonl",
                 "aime25": "eval/aime25/test.jsonl", "amc": "eval/amc22_23/amc.json",
                 "amc23": "eval/amc23/test.jsonl", "gsm8k": "eval/gsm8k/test.jsonl",
                 "olympiadbench": "eval/olympiadbench/test.jsonl"}


@needs_shared
@pytest.mark.parametrize("name", list(SHARED_COPIES))
def test_the_pinned_rows_of_hub_sets_match_the_shared_copies(name):
    # other copies of the same sets (not the hub's bytes): the same rows, but OlympiadBench,
    # whose hub copy lacks one of the 675 problems of the paper's files
    from relift_ray.data.readers import iter_rows
    rows = sum(1 for _ in iter_rows(SHARED / SHARED_COPIES[name]))
    assert rows == F.SOURCES[name].rows + (name == "olympiadbench")


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
@needs_shared
def test_fetch_writes_the_layout_and_a_manifest(fetched):
    root, manifest, lines, calls = fetched
    assert set(manifest) == set(F.SOURCES)
    for name, entry in manifest.items():
        src = F.SOURCES[name]
        assert entry["rows"] == SIZES[name], name
        assert (root / entry["file"]).stat().st_size == entry["bytes"]
        assert entry["check"]["golds_verified"] >= entry["check"]["questions"] - 2, name
        assert entry["check"]["others_rejected"] >= 0.95 * entry["check"]["others_tried"]
        assert entry["check"]["timeouts"] == 0
        # the commit read: the pin, or what the fake hub's head resolved to
        assert entry["source"]["revision"] == (src.revision or FAKE_HEAD)
        assert entry["source"]["pinned"] == bool(src.revision)
    assert json.loads((root / "manifest.json").read_text()) == manifest
    # each hub set is read at its pin, downloading its one file and nothing else
    hub_calls = {c[0]: c for c in calls if c[1] is not None}
    assert hub_calls["openai/gsm8k"] == ("openai/gsm8k", F.SOURCES["gsm8k"].revision,
                                         ("main/test-00000-of-00001.parquet",))
    assert hub_calls["AI-MO/aimo-validation-amc"][1] == "main"  # no pin known: the head once
    assert not list((root.parent / "hub").rglob("OE_MM_maths_en_COMP*"))  # not downloaded
    # the repository files come from their pinned commits
    urls = [c[0] for c in calls if c[1] is None]
    assert f"https://raw.githubusercontent.com/TheRoadQaQ/ReLIFT/{F.RELIFT_HEAD}/dataset/" \
           f"valid.parquet" in urls
    assert any(line.startswith("[fetch] gsm8k: 1319 rows, 1319 questions") for line in lines)
    assert any("relift_valid" in line and "sha256 e30b419198a8 matches" in line
               for line in lines)
    # the evaluation job reads the folder as it reads the shared data
    from relift_ray.data.benchmarks import load_benchmark
    assert [q.answer for q in load_benchmark("amc", root, limit=3)] == ["142", "144", "81"]
    assert load_benchmark("minerva", root)[0].source == "minerva"
    assert len(load_benchmark("olympiadbench", root)) == 674


@needs_shared
def test_a_file_that_is_not_the_pinned_one_stops_the_fetch_and_writes_nothing(tmp_path, hub,
                                                                                monkeypatch):
    src = F.SOURCES["relift_valid"]
    monkeypatch.setitem(F.SOURCES, "relift_valid", dataclasses.replace(src, sha256="0" * 64))
    with pytest.raises(DataError) as e:
        fetch_checked(["relift_valid"], tmp_path / "out", log=quiet)
    msg = str(e.value)
    assert f"benchmark relift_valid: TheRoadQaQ/ReLIFT@{F.RELIFT_HEAD[:12]}:dataset/valid." \
           f"parquet has sha256 e30b4191" in msg
    assert "expected 0000" in msg and "pinned in relift_ray/data/fetch.py" in msg
    assert not (tmp_path / "out" / "eval").exists()
    # a pinned row count that the file does not have
    monkeypatch.setitem(F.SOURCES, "relift_valid", dataclasses.replace(src, rows=1988))
    with pytest.raises(DataError, match=r"holds 1987 rows, expected 1988 \(relift_ray/data/"
                                        r"fetch.py\); nothing was written"):
        fetch_checked(["relift_valid"], tmp_path / "out", log=quiet)
    # minerva counts the rows of its data_source in LUFFY's bundle
    minerva = F.SOURCES["minerva"]
    monkeypatch.setitem(F.SOURCES, "minerva", dataclasses.replace(minerva, rows=271))
    with pytest.raises(DataError, match="holds 272 rows of minerva, expected 271"):
        fetch_checked(["minerva"], tmp_path / "out", log=quiet)


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
@needs_shared
def test_a_source_without_a_pin_is_locked_by_its_first_fetch(tmp_path, monkeypatch):
    out, calls = tmp_path / "out", []
    monkeypatch.setattr(F, "url_get", fake_hub(tmp_path, calls)[1])
    unpin_hub_hashes(monkeypatch)
    monkeypatch.setattr(F, "hub_snapshot", fake_hub(tmp_path / "a", calls, head="a" * 40)[0])
    first = fetch_checked(["amc"], out, log=quiet)["amc"]
    assert first["source"]["revision"] == "a" * 40 and not first["source"]["pinned"]
    # the head moves on and its file changes: a plain fetch still reads the recorded commit
    monkeypatch.setattr(F, "hub_snapshot", fake_hub(
        tmp_path / "b", calls, head="b" * 40, changed={"AI-MO/aimo-validation-amc": 82})[0])
    again = fetch_checked(["amc"], out, log=quiet)["amc"]
    assert calls[-1][:2] == ("AI-MO/aimo-validation-amc", "a" * 40)
    assert again["sha256"] == first["sha256"]
    # --refresh reads the head again, and says what changed; its rows no longer match
    lines: list = []
    with pytest.raises(DataError, match=r"benchmark amc: AI-MO/aimo-validation-amc@bbbbbbbbbbbb:"
                                        r"data/train-00000-of-00001.parquet holds 82 rows, "
                                        r"expected 83"):
        fetch_checked(["amc"], out, log=lines.append, refresh=True)
    assert calls[-1][:2] == ("AI-MO/aimo-validation-amc", "main")
    # the manifest kept the last good fetch; a head with the same rows is taken and reported
    monkeypatch.setattr(F, "hub_snapshot", fake_hub(tmp_path / "c", calls, head="c" * 40)[0])
    lines.clear()
    new = fetch_checked(["amc"], out, log=lines.append, refresh=True)["amc"]
    assert new["source"]["revision"] == "c" * 40
    assert any(f"amc: changed since the last fetch: revision {'a' * 40} -> {'c' * 40}" in line
               for line in lines)


@needs_shared
def test_a_recorded_hash_that_no_longer_matches_names_the_fix(tmp_path, hub):
    out = tmp_path / "out"
    fetch_checked(["amc23"], out, log=quiet)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["amc23"]["sha256"] = "1" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError) as e:
        fetch_checked(["amc23"], out, log=quiet)
    assert "recorded by the first fetch in manifest.json" in str(e.value)
    assert "`relift data fetch --refresh --benchmarks amc23` takes the new file" in str(e.value)


@needs_shared
def test_a_hub_set_without_the_expected_column_names_it(tmp_path, hub, monkeypatch):
    src = F.SOURCES["gsm8k"]
    monkeypatch.setitem(F.SOURCES, "gsm8k", dataclasses.replace(
        src, columns={"question": "question", "answer": "final"}))
    with pytest.raises(DataError, match=rf"openai/gsm8k \(revision {src.revision}\) file "
                                        r"main/test-00000-of-00001.parquet has no column 'final' "
                                        r"\(columns: answer, question\)"):
        fetch_checked(["gsm8k"], tmp_path / "out", log=quiet)
    monkeypatch.setitem(F.SOURCES, "gsm8k", dataclasses.replace(src, file="main/test.parquet"))
    with pytest.raises(DataError, match=r"has no file main/test.parquet \(its cached snapshot "
                                        r"holds: main/test-0"):
        fetch_checked(["gsm8k"], tmp_path / "out", log=quiet)
    with pytest.raises(DataError, match="unknown benchmark 'gsm9k'"):
        fetch_checked(["gsm9k"], tmp_path / "out")


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_gold_answers_are_checked_in_the_reward_worker_with_its_time_limit(tmp_path,
                                                                          monkeypatch):
    # a pathological gold answer costs one time limit, not a hung fetch
    rows = [{"question": f"q{i}", "answer": f"work #### {a}"}
            for i, a in enumerate(["1", "HANG", "3", "4"])]
    path = tmp_path / "eval/gsm8k/test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with gold_scorer(1.0, "helpers:hanging_gold_check") as score:
        check = F.verify("gsm8k", tmp_path, score)
    assert check == {"questions": 4, "golds_verified": 3, "others_rejected": 3,
                     "others_tried": 4, "timeouts": 2}


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
def test_no_network_and_no_copy_stops_before_any_model_loads(tmp_path, monkeypatch):
    from relift_ray.config import load_config
    from relift_ray.data import benchmarks
    from relift_ray.jobs import evaluate as eval_job

    def offline(repo, revision, patterns):
        raise ConnectionError("no network")
    monkeypatch.setattr(F, "hub_snapshot", offline)
    monkeypatch.setenv("RELIFT_CACHE", str(tmp_path / "cache"))
    for var in ("RELIFT_EVAL_DATA", "RELIFT_SHARED_DATA"):
        monkeypatch.delenv(var, raising=False)
    # no ../shared
    monkeypatch.setattr(benchmarks, "default_data_dir", benchmarks.default_fetch_dir)

    def no_model(spec):
        raise AssertionError("the model was resolved before the data was checked")
    monkeypatch.setattr(eval_job, "resolve_model", no_model)
    cfg = load_config(None, ["eval.benchmarks=[gsm8k,math500]", f"output_dir={tmp_path}"])
    with pytest.raises(DataError) as e:
        eval_job.run(cfg)
    msg = str(e.value)
    assert "relift data fetch" in msg and "eval.data_dir / RELIFT_EVAL_DATA" in msg
    assert f"could not get openai/gsm8k (revision {F.SOURCES['gsm8k'].revision})" in msg
    assert "\n" not in msg


@pytest.mark.integration  # child processes under real limits, or whole corpora: not unit
@needs_shared
def test_the_cli_fetches_into_the_folder_given(tmp_path, hub, capsys):
    from relift_ray.cli import main
    assert main(["data", "fetch", "--benchmarks", "aime24,minerva", "--to",
                 str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "[fetch] aime24: 30 rows, 30 questions" in out
    assert "[fetch] minerva: 272 rows, 272 questions" in out
    assert json.loads((tmp_path / "b/manifest.json").read_text()).keys() == {"aime24",
                                                                              "minerva"}
    assert main(["data", "fetch", "--benchmarks", "aime24", "--refresh", "--to",
                 str(tmp_path / "b")]) == 0
    assert "aime24: unchanged since the last fetch" in capsys.readouterr().out
    assert main(["data", "fetch", "--benchmarks", "nope", "--to", str(tmp_path / "b")]) == 2
