"""relift_ray: ReLIFT (RL interleaved with online fine-tuning on the hardest questions) on Ray.

How to run::

    relift train --config toy_relift            # or python jobs/train.py; ray job submit -- ...
    relift compare --config compare_toy         # RL vs SFT vs SFT->RL vs ReLIFT, side by side
    relift evaluate eval.model=<checkpoint>     # the paper's benchmarks, avg@k
    relift serve --model <checkpoint>           # an OpenAI-compatible endpoint on Ray Serve

The two loops:

- the scheduler's ``produce`` (scheduler/scheduler.py): sample B questions, roll each out N
  times on the generators, score them on the reward workers, update every question's record,
  feed the questions no rollout solved (with their demonstrations) into the hard buffer, and
  make the step's batch: RL, plus SFT on the M newest demonstrations once the buffer holds M;
- the learner's ``learner_step`` (learner/step.py): take this rank's shard of that batch,
  run the RL update and the SFT update, publish the new weights to the generators. The Ray
  Train loop (learner/loop.py) and the in-process runner (jobs/in_process.py) both call it.

The layers. A module imports only from its own layer or the layers below; nothing imports an
entry point; the three lowest layers import no Ray (tests/test_layers.py checks all of it).

1. base (this folder): ``config.py`` (the one config tree), ``errors.py`` (ConfigError,
   DataError), ``records.py`` (the typed records that cross actors and jobs: questions,
   completions, batches and their figures, a step's figures, a run's results),
   ``catalog.py`` (the benchmark table), ``faults.py`` (the train.kill fault plan),
   ``imports.py`` (start-up helpers for heavy imports), ``background.py`` (a thread with a
   result, a free port), ``run_lock.py`` (one job per run folder); ``configs/`` holds the
   shipped YAML configs (``toy.yaml``: the embedded default others extend).
2. core/ (pure, no Ray): algo (advantages, losses), questions (records, hard buffer,
   sampler, buckets), scoring (answer extraction, the math-verify reward), stats.
3. data/ (no Ray): readers (file formats), prompts (chat templates), load (a run's
   questions), registry (named models and data sources), benchmarks, fetch, models
   (SmolLM2 offline), lora (LoRA adapters: PEFT's model, syncs, folders), toy/ (the toy
   task and its base model).
4. roles, the processes:
   rollout/: generator (the interface), hf (transformers), vllm_engine (vLLM),
   vllm_weights (vLLM on CPU: weights through the transfer API), placement
   (engines on GPUs), rewards (RewardWorker), group (GeneratorGroup: fan-out, revival,
   weight loads), calls (actors and plain objects alike), evaluate (accuracy);
   scheduler/: scheduler (Scheduler and produce), ahead (asynchronous rollouts), actor
   (the named scheduler actor);
   learner/: learner (Learner: DeepSpeed, two-phase AdamW, RL and SFT updates), forward
   (log-probs, micro-batches), step (learner_step), loop (the Ray Train loop), checkpoint,
   weight_sync (publishers), process_group;
   tracking/: tracker (MLflow), console (the job's lines), question_plots, timeline,
   monitoring (the Grafana board).
5. runtime/: cluster (start or join Ray), topology (the actors of one run, the learner
   group).
6. entry points, jobs/: train (the training job), evaluate, compare (+ compare_report,
   compare_claims), serve (+ openai_api, text_engine), in_process (the in-process runner),
   toy_base (builds the toy base model), data_fetch (``relift data fetch``); and ``cli.py``
   (``relift``). The scripts in the repository's jobs/ folder only call the CLI.
"""
