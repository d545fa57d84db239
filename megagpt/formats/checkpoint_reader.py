"""Read a training checkpoint offline, in one process and without a process group, into megagpt's
full state dict, whatever layout and tp/pp/dp it was saved with.

What DeepSpeed writes under ``<dir>/<tag>/`` (``TT`` is the model-parallel rank, ``pp_rank * tp +
tp_rank``; ``D`` the data-parallel rank; optimizer files start with ``bf16_`` in a bf16 run):

* ZeRO-3 (layout ``zero3``): ``zero_pp_rank_D_mp_rank_TT_model_states.pt`` hold placeholders and
  each parameter's TP-local shape (``param_shapes``); ``zero_pp_rank_D_mp_rank_TT_optim_states.pt``
  hold the fp32 masters as flat buffers (``fp32_flat_groups``). Every parameter was split into
  ``dp`` equal pieces, the last one padded, and each rank's pieces laid end to end in the order of
  the shapes, so piece D of a parameter sits at the same offset in every rank's buffer.
* ZeRO-1/2 (layout ``3d``, or ``zero3`` run with a stage 1/2 config): ``mp_rank_TT_model_states.pt``
  with ``param_shapes`` (and, outside a pipeline, the weights themselves), and optimizer files with
  ``single_partition_of_fp32_groups``: each parameter group flattened (parameters end to end, plus
  any ``param_alignment_paddings``) and cut into ``dp`` equal consecutive partitions.
* A pipeline (layout ``3d``) also writes ``layer_LL-model_TT-model_states.pt``: the weights of layer
  LL on TP rank TT (0: the embedding, tied to the head; 1..n_layer: blocks; then the final LayerNorm).

The fp32 masters in the optimizer files are used whenever the checkpoint has them, so a bf16 run
gives exactly the fp32 weights its optimizer held. Without them (ZeRO stage 0, or a checkpoint whose
optimizer files were deleted) the weights the model computed with are used: exact for fp32 runs,
upcast from bf16 for bf16 runs (``meta["weights"]`` says which). TP shards are then joined along
each parameter's ``partition_dim`` / ``partition_stride``, learned from a model built at the saved
tp on the meta device.

The files are pickles written by ``torch.save``. They are read with ``weights_only=True`` (and
memory-mapped, so optimizer moments are never read): tensors, containers and the four small
DeepSpeed classes in ``_safe_globals`` only, so reading a checkpoint never runs code from it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from megagpt.config import ConfigError, ModelConfig, model_config_from_dict, zero_stage
from megagpt.formats.weights import WeightsError
from megagpt.model.convert import WTE
from megagpt.parallel.layers import unshard_tensors


def _safe_globals():
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def _load(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"{path}: missing (the checkpoint is incomplete).")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: cannot be read as a checkpoint file ({first}).") from None


def latest(ckpt_dir: Path) -> str:
    from megagpt.formats.manifest import latest_tag

    tag = latest_tag(ckpt_dir)
    if tag is None:
        raise WeightsError(f"{ckpt_dir}: no 'latest' file (no complete checkpoint); name a tag.")
    return tag


def _model_config(tag_dir: Path, model_cfg) -> tuple[ModelConfig, dict]:
    meta_file = tag_dir / "megagpt.json"
    if model_cfg is not None:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        return model_cfg, meta
    if not meta_file.is_file():
        raise WeightsError(f"{tag_dir}: no megagpt.json (checkpoints written before megagpt saved it); "
                           f"pass the run's model config (model_cfg=load_run_config(RUN_FILE).model).")
    try:
        meta = json.loads(meta_file.read_text())
        return model_config_from_dict(meta["model"]).validate(), meta
    except (ValueError, KeyError, TypeError, ConfigError) as e:
        raise WeightsError(f"{meta_file}: not a valid megagpt checkpoint description ({e}).") from None


def _expected(cfg: ModelConfig, tp: int) -> dict[str, tuple[torch.Size, tuple[int, int] | None]]:
    """{name: (TP-local shape, (partition_dim, partition_stride) or None)} of a GPT at ``tp``, in
    ``full_state_dict`` order."""
    from megagpt.model.gpt import GPT
    from megagpt.parallel.state import ParallelState

    with torch.device("meta"):
        model = GPT(cfg, ParallelState(tp_size=tp))
    return {n: (p.shape, (p.partition_dim, p.partition_stride) if getattr(p, "tensor_model_parallel", False)
                else None) for n, p in model.named_parameters()}


def _optim_states(tag_dir: Path, m: int, dp: int, key: str) -> list[tuple[Path, dict]]:
    """Model-parallel rank ``m``'s ZeRO optimizer states of DP ranks 0..dp-1, each with its file."""
    bf16 = "bf16_" if any(tag_dir.glob(f"bf16_zero_pp_rank_*_mp_rank_{m:02d}_optim_states.pt")) else ""
    out = []
    for d in range(dp):
        f = tag_dir / f"{bf16}zero_pp_rank_{d}_mp_rank_{m:02d}_optim_states.pt"
        osd = _load(f).get("optimizer_state_dict") or {}
        count = osd.get("partition_count")
        count = max(count) if isinstance(count, (list, tuple)) else count
        if key not in osd or count != dp:
            raise WeightsError(f"{f}: not a ZeRO optimizer file of this checkpoint (no '{key}' partitioned "
                               f"over dp={dp}).")
        out.append((f, osd))
    return out


def _zero3_flat(osd: dict, key: str | None) -> torch.Tensor:
    """A ZeRO-3 rank's flat partition: the fp32 masters (``key`` None) or an optimizer state laid
    out like them (one tensor per sub-group, in sub-group order)."""
    if key is None:
        return torch.cat([g.reshape(-1) for g in osd["fp32_flat_groups"]])
    state = osd["optimizer_state_dict"]["state"]
    return torch.cat([state[i][key].reshape(-1) for i in sorted(state)])


def _zero3_masters(tag_dir: Path, m: int, shapes: list[dict], dp: int,
                   key: str | None = None) -> dict[str, torch.Tensor]:
    """Model-parallel rank ``m``'s fp32 masters (or optimizer state ``key``) from the ZeRO-3 flat
    partitions of ``dp`` ranks."""
    flats = [(f, _zero3_flat(osd, key)) for f, osd in _optim_states(tag_dir, m, dp, "fp32_flat_groups")]
    params = [(n, torch.Size(s)) for group in shapes for n, s in group.items()]
    need = sum(-(-s.numel() // dp) for _, s in params)  # ceil: equal pieces, the last one padded
    for f, flat in flats:
        if flat.numel() != need:
            raise WeightsError(f"{f}: holds {flat.numel()} fp32 values where its parameters need {need} "
                               f"(a truncated or mismatched file).")
    out, offset = {}, 0
    for name, shape in params:
        piece = -(-shape.numel() // dp)
        out[name] = torch.cat([flat[offset:offset + piece] for _, flat in flats])[:shape.numel()].view(shape)
        offset += piece
    return out


def _zero12_partition(osd: dict, g: int, key: str | None) -> torch.Tensor:
    """A ZeRO-1/2 rank's partition of parameter group ``g``: fp32 masters or optimizer state ``key``."""
    if key is None:
        return osd["single_partition_of_fp32_groups"][g].reshape(-1)
    return osd["base_optimizer_state"]["state"][g][key].reshape(-1)


def _zero12_masters(tag_dir: Path, m: int, shapes: list[dict], dp: int,
                    key: str | None = None) -> dict[str, torch.Tensor]:
    """Model-parallel rank ``m``'s fp32 masters (or optimizer state ``key``) from the ZeRO-1/2
    partitions of ``dp`` ranks."""
    states = _optim_states(tag_dir, m, dp, "single_partition_of_fp32_groups")
    pads = states[0][1].get("param_alignment_paddings")
    out = {}
    for g, group in enumerate(shapes):
        flat = torch.cat([_zero12_partition(osd, g, key) for _, osd in states])
        offset = 0
        for j, (name, shape) in enumerate(group.items()):
            n = torch.Size(shape).numel()
            if offset + n > flat.numel():
                raise WeightsError(f"{states[-1][0]}: the fp32 partitions of mp_rank {m:02d} are shorter "
                                   f"than their parameters (a truncated or mismatched file).")
            out[name] = flat[offset:offset + n].view(shape)
            offset += n + (pads[g][j] if pads else 0)
    return out


def _layer_files(tag_dir: Path, t: int, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """TP rank ``t``'s weights from a pipeline's per-layer files, under PipelineModule names (layer
    0: the embedding; 1..n_layer: blocks; n_layer+1: the final LayerNorm of a pre-LN model; the
    tied head has no file of its own)."""
    out, n = {}, cfg.n_layer + 1 + (cfg.ln_position == "pre")
    for i in range(n):
        prefix = "tied_modules.embed." if i == 0 else f"{i}."
        weights = _load(tag_dir / f"layer_{i:02d}-model_{t:02d}-model_states.pt")
        out.update({prefix + k: v for k, v in weights.items()})
    if (tag_dir / f"layer_{n:02d}-model_{t:02d}-model_states.pt").is_file():
        raise WeightsError(f"{tag_dir}: has more pipeline layers than the model config's {n}; pass the run's "
                           f"model config.")
    return out


OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq")  # Adam's moments, as torch and DeepSpeed name them


def _optimizer_param_names(state: dict, cfg: ModelConfig, tp: int, pipeline: bool, f: Path) -> list[str]:
    """The names of a no-ZeRO optimizer's parameters in its state's index order: recorded by the
    trainer (``param_names``), or for the zero3 layout the order the trainer groups a GPT's
    parameters in (matrices first), rebuilt on the meta device."""
    names = state.get("param_names")
    if names is not None:
        return [n for group in names for n in group]
    if pipeline:
        raise WeightsError(f"{f}: no parameter names for the optimizer state (a pipeline checkpoint saved "
                           f"before megagpt recorded them); resume it in the layout it was saved with.")
    from megagpt.model.gpt import GPT
    from megagpt.model.naming import param_group_names
    from megagpt.parallel.state import ParallelState

    with torch.device("meta"):
        model = GPT(cfg, ParallelState(tp_size=tp))
    return [n for group in param_group_names(model.named_parameters()) for n in group]


class SavedCheckpoint:
    """One tag of a training checkpoint, opened offline: its model config, layout and the DeepSpeed
    bookkeeping of its first model file; ``tensors(key)`` assembles whole tensors from its shards."""

    def __init__(self, ckpt_dir: str | Path, tag: str | None = None, *, model_cfg: ModelConfig | None = None):
        ckpt_dir = Path(ckpt_dir)
        self.tag = tag = tag or latest(ckpt_dir)
        self.dir = tag_dir = ckpt_dir / tag
        if not tag_dir.is_dir():
            raise WeightsError(f"{tag_dir}: no such checkpoint.")
        self.cfg, self.saved = _model_config(tag_dir, model_cfg)
        self.stage3 = (tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt").is_file()
        self.model_file = ("zero_pp_rank_0_mp_rank_{:02d}_model_states.pt" if self.stage3
                           else "mp_rank_{:02d}_model_states.pt")
        if not self.stage3 and not (tag_dir / self.model_file.format(0)).is_file():
            raise WeightsError(f"{tag_dir}: no DeepSpeed model files (mp_rank_00_model_states.pt or "
                               f"zero_pp_rank_0_mp_rank_00_model_states.pt).")
        self.main = main = _load(tag_dir / self.model_file.format(0))
        self.pipeline = (tag_dir / "layer_00-model_00-model_states.pt").is_file()
        self.mp, self.dp = mp, dp = main["mp_world_size"], main["dp_world_size"]
        dims = main.get("checkpoint_parallel_dimensions") or {}
        if "pp_degree" in dims:
            pp = dims["pp_degree"]
        else:  # written by an older DeepSpeed: one layer_00 file per TP rank
            pp = mp // len(list(tag_dir.glob("layer_00-model_*-model_states.pt"))) if self.pipeline else 1
        self.pp, self.tp = pp, tp = pp, mp // pp
        if tp * pp != mp:
            raise WeightsError(f"{tag_dir / self.model_file.format(0)}: mp_world_size={mp} is not a multiple of "
                               f"pp_degree={pp} (a mismatched file).")
        if self.cfg.n_head % tp:
            raise WeightsError(f"{tag_dir}: saved with tp={tp}, which does not divide model.n_head="
                               f"{self.cfg.n_head}; pass the run's model config.")
        self.zero_stage = zero_stage(main.get("ds_config") or {})
        # fp32 masters when ZeRO kept them; optimizer files deleted by hand leave the module weights
        self.masters = self.stage3 or (main.get("param_shapes") is not None
                                       and any(tag_dir.glob("*zero_pp_rank_*_mp_rank_*_optim_states.pt")))
        self.meta = {"tag": tag, "step": self.saved.get("step", main.get("step", main.get("global_steps"))),
                     "layout": "3d" if self.pipeline else "zero3", "tp": tp, "pp": pp, "dp": dp,
                     "zero_stage": self.zero_stage, "weights": "fp32 master" if self.masters else "module",
                     "tokenizer": self.saved.get("tokenizer")}

    def _local(self, m: int, state: dict, key: str | None) -> dict[str, torch.Tensor]:
        """Model-parallel rank ``m``'s tensors under its own parameter names."""
        if self.masters:
            merge = _zero3_masters if self.stage3 else _zero12_masters
            return merge(self.dir, m, state["param_shapes"], self.dp, key)
        if key is not None:
            f = self.dir / self.model_file.format(m)
            opt = state.get("optimizer")
            if not opt or not opt.get("state"):
                raise WeightsError(f"{f}: holds no optimizer state (saved without one, or its ZeRO optimizer "
                                   f"files were deleted).")
            names = _optimizer_param_names(state, self.cfg, self.tp, self.pipeline, f)
            if len(names) != len(opt["state"]):
                raise WeightsError(f"{f}: {len(opt['state'])} optimizer states for {len(names)} named "
                                   f"parameters (a mismatched file).")
            return {n: opt["state"][i][key] for i, n in enumerate(names)}
        if self.pipeline:
            return _layer_files(self.dir, m, self.cfg) if m < self.tp else {}
        return state["module"]

    def tensors(self, key: str | None = None) -> dict[str, torch.Tensor]:
        """Whole fp32 tensors under megagpt's names (``full_state_dict`` order, the token embedding at
        the real vocabulary size): the weights (``key`` None) or Adam's ``exp_avg``/``exp_avg_sq``."""
        cfg, tp, tag_dir = self.cfg, self.tp, self.dir
        if self.pipeline:
            from megagpt.model.naming import pipeline_param_name
        parts: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
        for m in range(self.mp):  # pipeline stage by stage, so the first stage's tied embedding wins
            state = self.main if m == 0 else _load(tag_dir / self.model_file.format(m))
            for name, t in self._local(m, state, key).items():
                if self.pipeline:
                    name = pipeline_param_name(name, cfg.n_layer)
                if name is not None:
                    parts[m % tp].setdefault(name, t)

        expected = _expected(cfg, tp)
        full = {}
        for name, (shape, partition) in expected.items():
            for t, part in enumerate(parts):
                if name not in part:
                    raise WeightsError(f"{tag_dir}: no {name} for tp rank {t}; the model config does not match "
                                       f"this checkpoint (pass the run's model config).")
                if part[name].shape != shape:
                    raise WeightsError(f"{tag_dir}: {name} has shape {tuple(part[name].shape)} at tp rank {t} but "
                                       f"the model config gives {tuple(shape)}; pass the run's model config.")
            shards = [part[name].float() for part in parts]
            whole = unshard_tensors(shards, *partition) if partition else shards[0]
            full[name] = (whole[:cfg.vocab_size] if name == WTE else whole).clone()  # no view of a file
        extra = sorted(set(parts[0]) - set(expected))
        if extra:
            raise WeightsError(f"{tag_dir}: parameters the model config does not have ({', '.join(extra[:3])}); "
                               f"pass the run's model config.")
        return full

    def optimizer_step(self) -> int:
        """Adam's step count (bias correction), which can differ from the training step."""
        m = 0
        if self.masters:
            f, osd = _optim_states(self.dir, m, self.dp,
                                   "fp32_flat_groups" if self.stage3 else "single_partition_of_fp32_groups")[0]
            inner = osd.get("optimizer_state_dict") if self.stage3 else osd.get("base_optimizer_state")
        else:
            f, inner = self.dir / self.model_file.format(m), self.main.get("optimizer")
        state = (inner or {}).get("state") or {}
        steps = {float(s["step"]) for s in state.values() if "step" in s}
        if len(steps) != 1:
            raise WeightsError(f"{f}: no single Adam step count in its optimizer state ({sorted(steps)}).")
        return int(steps.pop())


def read_checkpoint(ckpt_dir: str | Path, tag: str | None = None, *,
                    model_cfg: ModelConfig | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(model config, full state dict, meta) of checkpoint ``tag`` (default: the one in ``latest``).

    The state dict is what ``megagpt.model.full_state_dict`` gives: whole fp32 tensors under
    megagpt's names, the token embedding at the real vocabulary size. ``meta``: tag, step, layout,
    tp, pp, dp, zero_stage, weights ("fp32 master" or "module"), tokenizer. ``model_cfg`` is needed
    only for checkpoints without ``megagpt.json``."""
    saved = SavedCheckpoint(ckpt_dir, tag, model_cfg=model_cfg)
    return saved.cfg, saved.tensors(), saved.meta
