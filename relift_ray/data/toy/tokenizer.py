"""A character-level tokenizer for the toy task, built locally and saved in HF format.

`\\boxed{` is one token so answers stay short. Loaded back with AutoTokenizer like any model's.
"""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
BOXED = "\\boxed{"
CHARS = list("0123456789+-*=,.:{} \nQA") + [BOXED]


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, BOS] + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    # \boxed{ first, then one token per character
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed\{|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
                                   bos_token=BOS, padding_side="left")
