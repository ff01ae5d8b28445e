"""Data readers: the toy task's splits, data files, and errors naming file, row and field."""
import json

import pytest
from helpers import SHARED, needs_shared

from relift_ray.config import load_config
from relift_ray.core.scoring import math_reward
from relift_ray.data.prompts import LUFFY_SYSTEM_PROMPT, render_prompts
from relift_ray.data.readers import load_questions
from relift_ray.data.toy import task
from relift_ray.errors import DataError


def test_toy_splits_are_disjoint_and_cover_all_levels():
    train, test = task.make_questions("train"), task.make_questions("test")
    assert not {q.prompt for q in train} & {q.prompt for q in test}
    assert {q.level for q in train} == {q.level for q in test} == set(task.LEVELS)
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.3


def test_toy_demonstrations_are_correct():
    for q in task.make_questions("train")[::97]:
        assert math_reward(q.demo, q.answer, "boxed")[0] == 1.0, q


def test_toy_teacher_variant_same_questions_teacher_demonstrations():
    base, teacher = load_questions("toy"), load_questions("toy-teacher")
    assert [(q.id, q.prompt, q.answer) for q in base] == [(q.id, q.prompt, q.answer)
                                                          for q in teacher]
    by_id = {q.id: q.demo for q in teacher}
    assert by_id["toy-L1-47+5"] == "47+5=52.52-5=47 \\boxed{52}"
    assert by_id["toy-L4-59+9*3"] == ("59+9=68,68+9=77,77+9=86.86-9=77,77-9=68,68-9=59 "
                                      "\\boxed{86}")
    assert task.teacher_steps("7+5=12,12+3=15") == "7+5=12,12+3=15.15-3=12,12-5=7"
    for q in teacher[::97]:  # still scored by its boxed answer, and a correct trace
        assert math_reward(q.demo, q.answer, "boxed")[0] == 1.0, q
        steps, checks = q.demo.split(" ")[0].split(".")
        assert eval(checks.split(",")[-1].split("=")[0]) == int(steps.split("+")[0])
    with pytest.raises(ValueError, match="demos must be one of"):
        task.make_questions("train", demos="verbose")


def test_toy_teacher_lengths_against_the_budgets():
    """The pre-registration's figures: the longest teacher trace is 53 tokens with EOS, so it
    fits 64; under 48 exactly the level-4 questions with three additions do not fit."""
    from relift_ray.data.toy.tokenizer import build_tokenizer
    tok = build_tokenizer()
    size = {q.id: len(tok(q.demo, add_special_tokens=False)["input_ids"]) + 1
            for q in task.make_teacher_questions("train")}
    assert max(size.values()) == 53
    assert {qid for qid, n in size.items() if n > 48} == {
        qid for qid in size if qid.startswith("toy-L4-") and qid.endswith("*3")}


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
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match=r"dir\.jsonl: is a folder, not a data file"):
        load_questions(str(tmp_path / "dir.jsonl"))


def test_bytes_that_are_not_utf8_name_the_row(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "\xff\xfe", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: row 2: not UTF-8 text \(byte 12 of the line\)"):
        load_questions(str(p))
    j = tmp_path / "d.json"
    j.write_bytes(b'[{"prompt": "\xff", "answer": "2"}]')
    with pytest.raises(DataError, match=r"d\.json: not UTF-8 text \(byte 13\)"):
        load_questions(str(j))


def test_a_list_answer_is_joined_as_a_multi_part_answer(tmp_path):
    (q,) = load_questions(str(write(tmp_path, [{"prompt": "roots?", "answer": ["-1", "2"]}])))
    assert q.answer == "-1, 2"
    assert math_reward("\\boxed{-1, 2}", q.answer, "boxed").value == 1.0


@needs_shared
def test_gsm8k_and_math_from_shared_data():
    gsm = load_questions(str(SHARED / "eval" / "gsm8k" / "test.jsonl"))
    assert len(gsm) > 1000 and all(q.demo and q.answer for q in gsm[:50])
    assert math_reward(gsm[0].demo, gsm[0].answer, "boxed")[0] == 1.0
    m = load_questions(str(SHARED / "eval" / "math500" / "test.jsonl"))
    assert len(m) == 500 and m[0].level in range(1, 6)


# ---------------------------------------------------------------- LUFFY/ReLIFT parquet

def write_parquet(tmp_path, rows, name="d.parquet"):
    import pandas as pd
    p = tmp_path / name
    pd.DataFrame(rows).to_parquet(p)
    return p


def luffy_row(i, truth="4", target="<think>\nadd</think>\n\\boxed{4}", user="2+2?"):
    return {"data_source": "toyset", "target": target,
            "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": user}],
            "reward_model": {"ground_truth": truth, "style": "rule"},
            "extra_info": {"index": i, "split": "train"}}


def test_luffy_parquet_rows(tmp_path):
    p = write_parquet(tmp_path, [luffy_row(0), luffy_row(1, truth="5"), luffy_row(1)])
    q0, q1, q2 = load_questions(str(p))
    assert q0.messages == (("system", "sys"), ("user", "2+2?"))
    assert (q0.id, q0.prompt, q0.answer, q0.source) == ("toyset-0", "2+2?", "4", "toyset")
    assert q0.demo.startswith("<think>\n")
    assert q1.answer == "5"
    assert q2.id == "toyset-1#3"  # a repeated index still gets its own record


@pytest.mark.parametrize("row, message", [
    ({**luffy_row(0), "prompt": []}, r"row 2: field 'prompt' must be a non-empty list"),
    ({**luffy_row(0), "prompt": [{"role": "user"}]}, r"row 2: field 'prompt' message 0 needs"),
    ({**luffy_row(0), "reward_model": {"style": "rule"}},
     r"row 2: field 'reward_model.ground_truth' is missing"),
])
def test_luffy_malformed_rows(tmp_path, row, message):
    p = write_parquet(tmp_path, [luffy_row(0), row])
    with pytest.raises(DataError, match=r"d\.parquet: " + message):
        load_questions(str(p), "luffy")


def test_luffy_rows_whose_fields_are_not_mappings_name_the_field(tmp_path):
    # jsonl in the LUFFY layout (a parquet column cannot mix a mapping and a string)
    for name, bad in (("reward_model", "4"), ("extra_info", 7)):
        p = write(tmp_path, [luffy_row(0), {**luffy_row(1), name: bad}])
        with pytest.raises(DataError, match=rf"d\.jsonl: row 2: field '{name}' must be a "
                                            rf"mapping, got {bad!r}"):
            load_questions(str(p))
    # a list ground truth: its parts joined, which a tuple answer matches
    (q,) = load_questions(str(write(tmp_path, [luffy_row(0, truth=["1", "2"])])))
    assert q.answer == "1, 2"


@needs_shared
def test_relift_validation_bundle():
    qs = load_questions(str(SHARED / "eval" / "bundles" / "relift_valid.parquet"))
    assert len(qs) == 1987 and len({q.id for q in qs}) == 1987
    assert {q.source for q in qs} == {"aime", "aime25", "amc", "math", "olympiad_bench"}
    assert qs[0].messages[0] == ("system", LUFFY_SYSTEM_PROMPT)  # our copy is the released text
    assert qs[0].answer == "204" and qs[0].demo is None


def test_plain_jsonl_with_configured_field_names(tmp_path):
    p = write(tmp_path, [{"q": "1+1?", "gold": 2, "key": "a"}, {"q": "2+2?", "gold": 4}])
    cfg = load_config(None, ["data.prompt_field=q", "data.answer_field=gold", "data.id_field=key"])
    a, b = load_questions(str(p), "jsonl", fields=cfg.data.fields)
    assert (a.id, a.prompt, a.answer, a.demo) == ("a", "1+1?", "2", None)
    assert b.id == "d-2"
    with pytest.raises(DataError, match=r"row 1: field 'prompt' is missing"):
        load_questions(str(p), "jsonl")


def test_json_list_and_math_answer_field(tmp_path):
    p = tmp_path / "amc.json"
    p.write_text(json.dumps([{"problem": "x?", "answer": 142.0}, {"problem": "y?", "answer": 0.5}]))
    a, b = load_questions(str(p))
    assert (a.prompt, a.answer, b.answer) == ("x?", "142", "0.5")


def test_hub_dataset_ids_read_the_downloaded_files(tmp_path, monkeypatch):
    import huggingface_hub
    snap = tmp_path / "snap"
    (snap / "main").mkdir(parents=True)
    write(snap / "main", [{"question": "q1", "answer": "r #### 3"}], "train.jsonl")
    write(snap / "main", [{"question": "q2", "answer": "r #### 4"}], "test.jsonl")
    calls = []

    def fake_snapshot(repo, repo_type, revision, allow_patterns):
        calls.append((repo, repo_type, revision, allow_patterns))
        return str(snap)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    (q,) = load_questions("hf://openai/gsm8k/main/test*")
    assert calls == [("openai/gsm8k", "dataset", None, "main/test*")]
    assert (q.prompt, q.answer) == ("q2", "4")
    # no file named: its train split, as load_dataset(split="train") reads it
    (q,) = load_questions("hf://openai/gsm8k")
    assert q.prompt == "q1"
    # a pinned commit, and one file by its path
    (q,) = load_questions("hf://openai/gsm8k@740312add88f781978c0658806c59bc2815b9866/"
                          "main/train.jsonl")
    assert calls[-1] == ("openai/gsm8k", "dataset", "740312add88f781978c0658806c59bc2815b9866",
                         "main/train.jsonl")
    assert q.prompt == "q1"
    # two files and no train split: the error names them instead of reading both
    (snap / "main" / "train.jsonl").rename(snap / "main" / "extra.jsonl")
    with pytest.raises(DataError, match=r"hf://openai/gsm8k: dataset openai/gsm8k holds 2 data "
                                        r"files \(main/extra.jsonl, main/test.jsonl\); name"):
        load_questions("hf://openai/gsm8k")
    with pytest.raises(DataError, match="without '/'"):
        load_questions("hf://openai/gsm8k@refs/convert/parquet")
    with pytest.raises(DataError, match="hf://openai: a hub dataset is hf://owner/name"):
        load_questions("hf://openai")


# ---------------------------------------------------------------- prompts

THINK_TEMPLATE = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}"
                  "{% if add_generation_prompt %}[assistant]<think>\n{% endif %}")


def tok_with_template(template=THINK_TEMPLATE):
    from relift_ray.data.toy.tokenizer import build_tokenizer
    tok = build_tokenizer()
    tok.chat_template = template
    return tok


def data_cfg(*overrides):
    return load_config(None, list(overrides)).data


def test_chat_template_with_system_prompt_and_think_prefix():
    q = task.make_questions("train")[0]
    q = type(q)(id="a", prompt="1+2", answer="3", demo="<think>\n1+2=3</think>\n\\boxed{3}")
    (r,), dropped = render_prompts([q], tok_with_template(), data_cfg("data.system_prompt=luffy"))
    assert dropped == 0
    assert r.prompt == f"[system]{LUFFY_SYSTEM_PROMPT}\n[user]1+2\n[assistant]<think>\n"
    assert r.demo == "1+2=3</think>\n\\boxed{3}"  # the prompt opened the thought already
    (kept,), _ = render_prompts([q], tok_with_template(),
                                data_cfg("data.strip_think_prefix=false"))
    assert kept.prompt == "[user]1+2\n[assistant]<think>\n" and kept.demo == q.demo


def test_messages_from_the_data_are_kept_and_plain_template():
    from relift_ray.records import Question
    q = Question(id="a", prompt="u", answer="1", messages=(("system", "S"), ("user", "u")))
    (r,), _ = render_prompts([q], tok_with_template(), data_cfg("data.system_prompt=luffy"))
    assert r.prompt == "[system]S\n[user]u\n[assistant]<think>\n"
    plain = data_cfg("data.prompt_template=plain", "data.plain_template=Q: {prompt}\nA:")
    (r,), _ = render_prompts([Question(id="b", prompt="2+2", answer="4")], tok_with_template(),
                             plain)
    assert r.prompt == "Q: 2+2\nA:"


def test_long_prompts_are_dropped_and_counted():
    from relift_ray.records import Question
    qs = [Question(id=str(n), prompt="1" * n, answer="1") for n in (5, 30, 60)]
    kept, dropped = render_prompts(qs, tok_with_template(),
                                   data_cfg("data.prompt_template=plain", "data.max_prompt_tokens=30"))
    assert [q.id for q in kept] == ["5", "30"] and dropped == 1


def test_chat_template_needs_a_template():
    from relift_ray.data.toy.tokenizer import build_tokenizer
    with pytest.raises(DataError, match="no chat template"):
        render_prompts(task.make_questions("test")[:1], build_tokenizer(),
                       data_cfg("data.prompt_template=chat"))
