"""Layer 2, the pure core: the algorithm's parts as plain Python and torch, no Ray.

- ``algo``: advantages, the RL and SFT losses, importance weights.
- ``questions``: the per-question records, the hard buffer, the sampler, pass-rate buckets.
- ``scoring``: answer extraction and the math-verify reward of one answer.
- ``stats``: accuracy by level or source, means, t intervals.
"""
