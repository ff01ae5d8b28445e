"""Layer 5, the runtime: starting or joining Ray (``cluster``) and the topology of one run,
which actors go where and the learner group (``topology``)."""
