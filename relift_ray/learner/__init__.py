"""The learner role: what each learner worker runs.

- ``learner``: ``Learner`` (DeepSpeed engine, two-phase AdamW, RL and SFT updates);
  ``forward``: log-probs, micro-batches, packing.
- ``step``: ``learner_step``, the one step every runner uses.
- ``loop``: the Ray Train loop (restore / publish / loop); ``process_group``: its torch
  process group.
- ``checkpoint``: exact checkpoints; ``weight_sync``: how weights reach the generators.
"""
