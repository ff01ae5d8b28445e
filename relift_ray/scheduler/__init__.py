"""The scheduler role: the one owner of training state that is not weights.

- ``scheduler``: ``Scheduler`` and its ``produce`` (one step's batch).
- ``ahead``: the producer thread of asynchronous rollouts (algo.max_staleness).
- ``actor``: ``SchedulerActor``, the job's named ``scheduler`` actor.
"""
