"""The text the model sees: chat template with a system prompt, or a plain template.

``render_prompts(questions, tokenizer, data_cfg)`` turns each question into its prompt,
strips a leading ``<think>\\n`` from demonstrations when the prompt already ends with it (as
the released code does) and drops, counting them, questions whose prompt is too long.
``prepare_tokenizer`` applies ``data.chat_template`` and ``model.eos_token``. Imports no Ray.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from relift_ray.config import CONFIGS_DIR
from relift_ray.errors import DataError
from relift_ray.records import Question

# The system prompt of the LUFFY and ReLIFT releases (their valid.parquet files carry it).
LUFFY_SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final "
    "solution. This involves analyzing, summarizing, exploring, reassessing, and refining your "
    "thought process through multiple iterations. Structure your response into two sections: "
    "Thought and Solution. In the Thought section, present your reasoning using the format: "
    "\"<think>\n {thoughts} </think>\n\". Each thought should include detailed analysis, "
    "brainstorming, verification, and refinement of ideas. After \"</think>\n,\" in the Solution "
    "section, provide the final, logical, and accurate answer, clearly derived from the "
    "exploration in the Thought section. If applicable, include the answer in \\boxed{} for "
    "closed-form results like multiple choices or mathematical solutions.")


SYSTEM_PROMPTS = {"luffy": LUFFY_SYSTEM_PROMPT, "none": ""}


THINK_PREFIX = "<think>\n"


def system_prompt_text(name: str) -> str:
    return SYSTEM_PROMPTS.get(name, name)


def render_prompts(questions: list[Question], tokenizer, dcfg) -> tuple[list[Question], int]:
    """(questions with the model's prompt text, number dropped for a too-long prompt)."""
    template = dcfg.prompt_template
    if template == "auto":
        template = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError("data.prompt_template=chat: the tokenizer has no chat template (set "
                        "data.chat_template to a .jinja file, or data.prompt_template=plain)")
    system = system_prompt_text(dcfg.system_prompt)
    out, dropped = [], 0
    for q in questions:
        if template == "chat":
            if q.messages:  # rows that come as messages keep theirs (system prompt included)
                msgs = [{"role": r, "content": c} for r, c in q.messages]
            else:
                msgs = ([{"role": "system", "content": system}] if system else []) + \
                       [{"role": "user", "content": q.prompt}]
            text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        else:
            body = q.prompt
            if system and not q.messages:
                body = f"{system}\n\n{body}"
            elif q.messages:
                body = "\n\n".join(c for _, c in q.messages)
            text = dcfg.plain_template.replace("{prompt}", body)
        demo = q.demo
        if (demo and dcfg.strip_think_prefix and text.endswith(THINK_PREFIX)
                and demo.startswith(THINK_PREFIX)):
            demo = demo[len(THINK_PREFIX):]  # the prompt already opened the thought
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > dcfg.max_prompt_tokens:
            dropped += 1
            continue
        out.append(dataclasses.replace(q, prompt=text, demo=demo))
    return out, dropped


def prepare_tokenizer(tokenizer, cfg) -> None:
    """The run's tokenizer settings: ``data.chat_template`` and ``model.eos_token``."""
    load_chat_template(tokenizer, cfg.data.chat_template)
    if cfg.model.eos_token:
        if tokenizer.convert_tokens_to_ids(cfg.model.eos_token) in (None, tokenizer.unk_token_id):
            raise DataError(f"model.eos_token={cfg.model.eos_token!r}: not a token of this "
                            f"tokenizer")
        tokenizer.eos_token = cfg.model.eos_token


def load_chat_template(tokenizer, template: str) -> None:
    """``data.chat_template``: a .jinja file (or inline Jinja text) replacing the tokenizer's;
    a file that is not there is looked for among the shipped configs (``templates/...``)."""
    if not template:
        return
    path = Path(template)
    if path.suffix == ".jinja":
        if not path.exists() and (CONFIGS_DIR / path).exists():
            path = CONFIGS_DIR / path
        if not path.exists():
            raise DataError(f"data.chat_template={template}: file does not exist (nor in "
                            f"{CONFIGS_DIR})")
        template = path.read_text()
    tokenizer.chat_template = template
