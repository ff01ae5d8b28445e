"""The question table's pictures: transitions counted by hand, the figure drawn and sampled."""
from relift_ray.tracking.question_plots import _sample, draw, history, transitions


def row(qid, hist, sft=""):
    return {"id": qid, "pass_rate_history": hist, "sft_steps": sft}


ROWS = [
    row("a", "1:0 5:0 9:0.5", sft="6"),  # hardest -> medium after an SFT phase held it
    row("b", "2:0 7:1"),                 # hardest -> easy, no SFT
    row("c", "3:0 8:0", sft="4"),        # hardest, stays, SFT did not help
    row("d", "1:0.25 4:0.875@2"),        # hard -> easy (async version tag)
    row("e", "2:1"),                     # once
]


def test_transitions_by_hand():
    t = transitions(ROWS)
    assert t["moves"] == {"hardest->medium": 1, "hardest->easy": 1, "hardest->hardest": 1,
                          "hard->easy": 1}
    assert t["hardest_left"] == {"medium": 1, "easy": 1}
    assert t["hardest_left_after_sft"] == {"medium": 1}
    assert t["sampled_once"] == 1 and t["sampled_twice_or_more"] == 4
    assert history(ROWS[3]) == [(1, 0.25), (4, 0.875)]


def test_large_tables_are_sampled_with_sft_questions_first(tmp_path):
    rows = [row(f"q{i}", f"{i % 50 + 1}:{(i % 9) / 8}", sft="3" if i % 100 == 0 else "")
            for i in range(5000)]
    shown = _sample(rows, 200)
    assert len(shown) <= 200 and all(r in shown for r in rows if r["sft_steps"])
    assert _sample(rows, 200) == shown  # deterministic
    png = draw(rows, tmp_path / "q.png", "big")
    assert png.stat().st_size > 20_000
    assert draw(ROWS, tmp_path / "small.png").exists()
