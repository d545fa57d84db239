"""GPT math (single-device correct; tensor parallelism enters through injected layers)."""
from megagpt.model.convert import full_state_dict, load_full_state_dict
from megagpt.model.flops import model_flops_per_token, param_count
from megagpt.model.gpt import GPT, Block, Embedding, FinalNorm, LMHead

__all__ = ["GPT", "Block", "Embedding", "FinalNorm", "LMHead", "param_count",
           "model_flops_per_token", "full_state_dict", "load_full_state_dict"]
