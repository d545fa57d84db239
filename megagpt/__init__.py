"""megagpt: GPT-1/2/3 pretraining with Megatron-style tensor parallelism and DeepSpeed."""
__version__ = "0.1.0"
