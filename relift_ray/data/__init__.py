"""Layer 3, data (no Ray): readers for data files (``readers``), prompts (``prompts``), a
run's questions (``load``), named models and data sources (``registry``), the benchmarks
(``benchmarks``, ``fetch``), SmolLM2 offline (``models``), LoRA adapters and their folders
(``lora``) and the toy task (``toy``)."""
