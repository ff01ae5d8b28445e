"""The embedded default: a synthetic arithmetic task (``task``), its character tokenizer
(``tokenizer``) and the tiny base model pretrained on its easy levels (``model``, weights in
``base_model/``)."""
