"""Layer 6, the entry points: the training job (``train``), evaluation (``evaluate``), the
comparison job (``compare``, its report in ``compare_report``, the real-model
claims in ``compare_claims``), serving (``serve``, with
``openai_api`` and ``text_engine``), the in-process runner (``in_process``), the toy base
model's builder (``toy_base``) and ``relift data fetch`` (``data_fetch``). Nothing imports
them but the CLI and the scripts in jobs/."""
