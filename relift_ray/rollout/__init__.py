"""The rollout role: generator actors and reward workers, and how they are called.

- ``generator``: the interface both backends share; ``hf`` (transformers, CPU or GPU) and
  ``vllm_engine`` (vLLM, GPU or its CPU build); ``vllm_weights``: the weight-transfer engine
  of vLLM on CPU (a state dict in the engine's process); ``placement``: where vLLM engines go
  on a cluster.
- ``rewards``: ``RewardWorker``, math-verify in a child process with a hard time limit.
- ``group``: ``GeneratorGroup``, a step's fan-out, revival of a dead generator, weight loads.
- ``calls``: calling Ray actors and plain objects the same way; ``evaluate``: accuracy.
"""
