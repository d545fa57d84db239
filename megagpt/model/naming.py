"""Parameter names shared by the trainer and the offline checkpoint readers: the optimizer's
param groups (which a no-ZeRO optimizer state is indexed by) and the pipeline engine's layer
names as megagpt's full-state-dict names."""
from __future__ import annotations


def param_group_names(named_params) -> list[list[str]]:
    """The names of ``megagpt.train.engine``' groups, in the optimizer's order (saved with a checkpoint so
    a no-ZeRO optimizer state, indexed by position, can be read by name)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if p.requires_grad:
            (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(name)
    return [decay, no_decay]


def pipeline_param_name(name: str, n_layer: int) -> str | None:
    """A PipelineModule parameter name as megagpt's full-state-dict name (None: the head's unused
    copy of the position table)."""
    if name.startswith("tied_modules.embed."):
        return "embed." + name[len("tied_modules.embed."):]
    idx, rest = name.split(".", 1)
    i = int(idx)
    if 1 <= i <= n_layer:
        return f"blocks.{i - 1}.{rest}"
    if i == n_layer + 1:
        return f"ln_f.{rest}"
    return None
