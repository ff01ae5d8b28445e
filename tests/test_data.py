"""Data readers: the toy task's splits, data files, and errors naming file, row and field."""
import json
import os
from pathlib import Path

import pytest

from relift_ray.data import DataError, load_questions
from relift_ray.rewards import math_reward
from relift_ray.toy import task

# The public math sets live outside the repository (never copied in): ../shared/data beside the
# checkout, as on the developers' machines and in CI, or wherever RELIFT_SHARED_DATA points.
SHARED = Path(os.environ.get("RELIFT_SHARED_DATA")
              or Path(__file__).resolve().parent.parent.parent / "shared" / "data")


def test_toy_splits_are_disjoint_and_cover_all_levels():
    train, test = task.make_questions("train"), task.make_questions("test")
    assert not {q.prompt for q in train} & {q.prompt for q in test}
    assert {q.level for q in train} == {q.level for q in test} == set(task.LEVELS)
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.3


def test_toy_demonstrations_are_correct():
    for q in task.make_questions("train")[::97]:
        assert math_reward(q.demo, q.answer, "boxed")[0] == 1.0, q


def write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


def test_plain_jsonl(tmp_path):
    p = write(tmp_path, [{"prompt": "1+1?", "answer": 2, "demo": "\\boxed{2}", "level": 1}])
    (q,) = load_questions(str(p))
    assert (q.prompt, q.answer, q.demo, q.level) == ("1+1?", "2", "\\boxed{2}", 1)


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "a", "answer": "1"}, {"answer": "2"}], r"d\.jsonl: row 2: field 'prompt' is missing"),
    ([{"prompt": "a", "answer": "1"}, "{not json"], r"d\.jsonl: row 2: not valid JSON"),
    ([{"prompt": "", "answer": "1"}], r"row 1: field 'prompt' must be a non-empty str"),
    ([{"prompt": "a", "answer": "1", "level": "hard"}], r"row 1: field 'level' must be"),
    ([{"question": "q", "answer": "no marker ####"}, {"question": "q", "answer": "x"}],
     r"row 2: field 'answer' has no '#### <answer>'"),
])
def test_malformed_rows_name_file_row_and_field(tmp_path, rows, message):
    p = write(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        load_questions(str(p), "gsm8k" if "question" in rows[0] else "jsonl")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_questions(str(tmp_path / "nope.jsonl"))


@pytest.mark.skipif(not SHARED.exists(), reason=(
    f"the public data sets are kept outside the repo and {SHARED} is not beside this checkout "
    "(CI and dev machines have it; set RELIFT_SHARED_DATA to run this test elsewhere)"))
def test_gsm8k_and_math_from_shared_data():
    gsm = load_questions(str(SHARED / "eval" / "gsm8k" / "test.jsonl"))
    assert len(gsm) > 1000 and all(q.demo and q.answer for q in gsm[:50])
    assert math_reward(gsm[0].demo, gsm[0].answer, "boxed")[0] == 1.0
    m = load_questions(str(SHARED / "eval" / "math500" / "test.jsonl"))
    assert len(m) == 500 and m[0].level in range(1, 6)
