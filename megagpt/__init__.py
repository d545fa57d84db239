"""megagpt: GPT-1/2/3 pretraining with Megatron-style tensor parallelism and DeepSpeed."""
from megagpt._version import __version__

__all__ = ["__version__", "load"]


def load(path, **kwargs):
    """``model, tokenizer = megagpt.load(path)``: an exported model, a Hugging Face GPT-2 directory
    or a training checkpoint (see ``megagpt.inference.load``)."""
    from megagpt.inference import load as _load

    return _load(path, **kwargs)
