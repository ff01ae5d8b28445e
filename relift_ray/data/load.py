"""A run's questions: its training and test splits read (``read_questions``) and rendered
for the model (``load_data``). The scheduler actor and the jobs read their questions here.
Imports no Ray."""
from __future__ import annotations

from relift_ray.config import RunConfig
from relift_ray.data.prompts import prepare_tokenizer, render_prompts
from relift_ray.data.readers import load_questions


def load_data(cfg: RunConfig, tokenizer, log=print):
    """(training questions, test questions, training questions dropped for a long prompt),
    with each prompt rendered for the model (chat template or plain, see relift_ray.data).
    The scheduler actor reads its questions through here: it must stay deterministic."""

    d = cfg.data
    prepare_tokenizer(tokenizer, cfg)
    train, test = read_questions(cfg)
    kept, dropped = render_prompts(train, tokenizer, d)
    if dropped:
        log(f"[data] dropped {dropped} of {len(train)} training questions whose prompt exceeds "
            f"data.max_prompt_tokens={d.max_prompt_tokens}")
    test, test_dropped = render_prompts(test, tokenizer, d)
    if test_dropped:
        log(f"[data] dropped {test_dropped} test questions whose prompt exceeds "
            f"data.max_prompt_tokens={d.max_prompt_tokens}")
    limit = d.max_test_questions
    if 0 < limit < len(test):  # evenly spaced: the mix of levels and sources is kept
        test = [test[i * len(test) // limit] for i in range(limit)]
    return kept, test, dropped


def read_questions(cfg: RunConfig) -> tuple[list, list]:
    """The training and test questions as read (no tokenizer): a bad data path or row stops
    here with a DataError naming it."""

    d = cfg.data
    return (load_questions(d.train, d.format, "train", d.fields),
            load_questions(d.test, d.format, "test", d.fields))
