"""Measured memory of a DeepSpeed engine on this rank: live tensor bytes split into parameters,
gradients, optimizer states, activations and the rest (buckets, buffers).

What is counted, on this rank's device (CPU tensors on a CPU run):
  params       storages of the module's parameters (ZeRO-3: the partitions and the persistent
               parameters that stay whole)
  grads        gradient storages (``p.grad``, ZeRO's gradient partitions and flat buffers) at
               their largest: the end of a backward pass, before DeepSpeed reduces them
  optimizer    fp32 master copies ZeRO keeps besides the parameters, and the Adam moments
  activations  the tensors autograd saves for backward (saved-tensor hooks), parameters excluded,
               at their peak: in a pipeline the micro-batches in flight together
  other        everything else alive after the optimizer step (ZeRO buckets, pipeline buffers),
               not the gradient partitions ZeRO-2/3 keep

Storages are counted once however many tensors view them. ``benchmarks/train_throughput.py`` and
``tests/train/test_plan.py`` measure with this.

``predict`` gives the same quantities from the config alone, for one rank of a layout (``megagpt/plan.py``
ranks layouts with it). It counts what megagpt and DeepSpeed 0.19 really allocate, not a rule of thumb:

  parameters   the real shapes on one (tp rank, pipeline stage): column-parallel weights and biases
               split by tp, row-parallel weights split and their biases whole, LayerNorms whole, the
               token embedding padded to a multiple of make_vocab_size_divisible_by x tp and split, the
               positions whole; in a pipeline the embedding on the first stage and again (tied, with
               an unused copy of the positions) on the last.
  bytes/param  e = 2 (bf16/fp16) or 4 (fp32); N = parameters on the rank.
               stage 0  params eN, grads eN, optimizer 12N (half: fp32 master + Adam moments) or 8N
                        (fp32: moments); half precision also keeps an fp32 gradient copy (+4N grads:
                        DeepSpeed's bf16/fp16 optimizer wrappers, read from its code, not measured)
               stage 1  params eN', grads eN (whole, until reduced at the step), optimizer 12N'/dp
                        (fp32 too: ZeRO-1/2 clone an fp32 master partition), N' = N with each param
                        group padded to a multiple of 2 dp
               stage 2  as 1, grads eN'/dp + one reduce bucket
               stage 3  params e (sum of ceil(n/dp) over the parameters + the persistent ones whole
                        when dp > 1: n <= stage3_param_persistence_threshold), grads e sum ceil(n/dp) +
                        one reduce bucket, optimizer 12 (half) or 8 (fp32: the master is the partition,
                        engine.share_fp32_master) x sum ceil(n/dp)
               CPU offload moves the optimizer states to the host.
  activations  per layer and micro-batch (s sequence, b micro-batch, h width, f MLP width, a heads,
               t = tp): e s b h (4 + (3h + h + 2f) / (h t)): the two LayerNorm inputs and outputs (whole
               on every TP rank), q/k/v, the attention output, the MLP's GELU input and output (split);
               attention through scaled_dot_product_attention keeps no s x s scores (flash /
               memory-efficient kernels save a log-sum-exp, 4 b a s / t bytes), but a banded layer's
               boolean mask becomes an s x s additive mask (e s^2 bytes); LayerNorm mean/rstd (2 x 2 x 4
               s b); dropout masks (1 byte each on a GPU) after attention and MLP when resid_pdrop > 0.
               Checkpointing keeps only each layer's input (e s b h). First stage: token ids and
               positions (8 bytes each; with tp > 1 the local ids and an outside mask); last stage: the
               final LayerNorm (input and output), the fp32 softmax of this rank's vocabulary columns
               (4 s b V_local) and the targets. A pipeline stage k holds min(pp - k, micro-batches)
               micro-batches at once under 1F1B.
  buffers      not measured by the tests, added to plan a peak: ZeRO-3's gathered parameters of two
               layers (current + prefetch), one recomputed layer under checkpointing, the logits'
               gradient (e + 4 bytes a column), reduce buckets.

Checked against ``measure`` (tests/train/test_plan.py, CPU, gloo): fp32 at ZeRO stages 0-3, bf16 at
ZeRO-1 and ZeRO-3, tp=2, pp=2 with 4 micro-batches, activation checkpointing. Not checked on CPU:
GPU kernels (CUDA's flash / memory-efficient attention are taken to save what the CPU flash kernel
saves), attention dropout (on a CPU it sends scaled_dot_product_attention down the path that keeps
the s x s probabilities; on a GPU the flash kernel drops in place), the GPU's 1-byte dropout masks
(a CPU keeps the residual dropout's mask in the activations' dtype: checked in one process), bf16 at
ZeRO stage 0, fp16, CPU offload.
"""
from __future__ import annotations

import gc
import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

from megagpt.config import ModelConfig


def precision_of(ds_config: dict) -> str:
    """"bf16", "fp16" or "fp32": what a DeepSpeed config trains in (``predict``'s ``precision``)."""
    for name in ("bf16", "fp16"):
        if (ds_config.get(name) or {}).get("enabled"):
            return name
    return "fp32"


def device_type() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def storages(tensors, kind: str | None = None) -> dict[int, int]:
    """{storage address: bytes} of the tensors on ``kind`` (this run's device type)."""
    import torch

    out, kind = {}, kind or device_type()
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == kind:
            st = t.untyped_storage()
            if st.data_ptr():
                out[st.data_ptr()] = st.nbytes()
    return out


def live_storages(kind: str | None = None) -> dict[int, int]:
    """Every tensor storage the garbage collector can reach."""
    import warnings

    import torch

    with warnings.catch_warnings():  # isinstance on every object touches deprecated torch aliases
        warnings.simplefilter("ignore", FutureWarning)
        return storages([o for o in gc.get_objects() if isinstance(o, torch.Tensor)], kind)


def _tensors_in(obj, depth: int = 0):
    import torch

    if obj is None:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors_in(o, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors_in(o, depth + 1)


# optimizer attributes that hold fp32 master weights (ZeRO-3, ZeRO-1/2, fp16/bf16 wrappers)
_MASTER = ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat",
           "fp32_groups_flat_partition")
# ... and gradients (ZeRO-3 partitions, ZeRO-1/2 partitions, bf16 fp32 accumulation buffers)
_GRADS = ("grad_partitions_flat_buffer", "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition",
          "averaged_gradients", "grads_in_partition", "fp32_groups_gradients_flat",
          "fp32_groups_gradient_flat_partition")


def memory_breakdown(engine) -> dict:
    """Bytes of parameters, fp32 master copies and optimizer moments on this rank (after a step),
    and ``p_keys``, the storages counted."""
    params = list(engine.module.parameters())
    opt = engine.optimizer
    p_st = storages([getattr(p, "ds_tensor", None) for p in params] + [p.data for p in params])
    master = storages(t for name in _MASTER for t in _tensors_in(getattr(opt, name, None)))
    inner = getattr(opt, "optimizer", opt)
    moments = storages(v for st in inner.state.values() for v in st.values())
    return {"params": sum(p_st.values()), "master": sum(v for k, v in master.items() if k not in p_st),
            "moments": sum(v for k, v in moments.items() if k not in p_st),
            "p_keys": set(p_st) | set(master) | set(moments)}


def grad_storages(engine) -> dict[int, int]:
    """Gradient storages alive now on this rank."""
    opt = engine.optimizer
    out = storages(p.grad for p in engine.module.parameters() if p.grad is not None)
    out.update(storages(t for name in _GRADS for t in _tensors_in(getattr(opt, name, None))))
    for name in _MASTER:
        out.update(storages(getattr(t, "grad", None) for t in _tensors_in(getattr(opt, name, None))))
    return out


class SavedActivations:
    """Bytes autograd saves for backward while active: ``peak`` of those alive at once and
    ``total`` saved. Parameters (whole, or ZeRO-3's gathered copies) are not activations."""

    def __init__(self, module):
        self.params = list(module.parameters())
        self.saved: dict[int, list] = {}  # storage address -> [bytes, weak refs to the tensors]
        self.peak = self.total = 0

    def _alive(self) -> int:
        return sum(n for n, refs in self.saved.values() if any(r() is not None for r in refs))

    def pack(self, t):
        st = t.untyped_storage()
        key = st.data_ptr()
        if key and t.device.type == device_type():
            if key not in {p.data.untyped_storage().data_ptr() for p in self.params}:
                entry = self.saved.get(key)
                if entry is None or not any(r() is not None for r in entry[1]):
                    entry = self.saved[key] = [st.nbytes(), []]
                    self.total += st.nbytes()
                entry[1].append(weakref.ref(t))
                self.peak = max(self.peak, self._alive())
        return t

    @contextmanager
    def active(self):
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield self


def measure(engine, step, steps: int = 2) -> dict:
    """Run ``step()`` (one optimizer step: every micro-batch's forward and backward, then the
    optimizer) ``steps`` times and return this rank's bytes: params, grads (the most gradient
    storage at the end of backward or at the optimizer step: under ZeRO-2/3 the end of backward
    still holds the last bucket's and the largest parameters' whole gradients), grads_kept (at the
    optimizer step: what ZeRO's model states count), optimizer, activations (peak of the last
    step), other and live (after the last step)."""
    opt = engine.optimizer
    grads = {"bytes": 0, "kept": 0}

    def snapshot(at_step: bool):
        now = sum(grad_storages(engine).values())
        grads["bytes"] = max(grads["bytes"], now)
        if at_step:
            grads["kept"] = now

    def wrap(obj, name, at_step):
        orig = getattr(obj, name)

        def wrapped(*a, **k):
            snapshot(at_step)
            return orig(*a, **k)

        setattr(obj, name, wrapped)
        return orig

    orig_reduce, orig_step = wrap(engine, "allreduce_gradients", False), wrap(opt, "step", True)
    try:
        for _ in range(steps):
            grads["bytes"] = grads["kept"] = 0
            meter = SavedActivations(engine.module)
            with meter.active():
                step()
    finally:
        engine.allreduce_gradients, opt.step = orig_reduce, orig_step
    gc.collect()
    b = memory_breakdown(engine)
    live = live_storages()
    known = b.pop("p_keys") | set(grad_storages(engine))  # ZeRO-2/3 keep their gradient partitions
    return {"params": b["params"], "grads": grads["bytes"], "grads_kept": grads["kept"],
            "optimizer": b["master"] + b["moments"],
            "activations": meter.peak, "other": sum(v for k, v in live.items() if k not in known),
            "live": sum(live.values())}


# --- prediction ------------------------------------------------------------------------------------
MASTER_ALIGN = 2  # DeepSpeed's nccl_start_alignment_factor: ZeRO-1/2 pad each group to 2 x dp elements


def reduce_bucket(cfg: ModelConfig) -> int:
    """Elements of a ZeRO reduce bucket under megagpt's ``"auto"`` rule (train/autotune.py)."""
    return max(cfg.n_embd * cfg.n_embd, 500_000)


def persistence_threshold(cfg: ModelConfig) -> int:
    """ZeRO-3 keeps parameters of at most this many elements whole (``"auto"``: 10 n_embd)."""
    return 10 * cfg.n_embd


def block_params(cfg: ModelConfig, tp: int) -> list[tuple[int, bool]]:
    """(elements, is a matrix) of one transformer block's parameters on one TP rank."""
    h, f = cfg.n_embd, cfg.ffn_dim
    return [(h, False), (h, False),  # ln_1
            (3 * h // tp * h, True), (3 * h // tp, False), (h * (h // tp), True), (h, False),  # attention
            (h, False), (h, False),  # ln_2
            (f // tp * h, True), (f // tp, False), (h * (f // tp), True), (h, False)]  # MLP


def stage_params(cfg: ModelConfig, tp: int, pp: int, stage: int) -> list[tuple[int, bool, bool, int]]:
    """(elements, is a matrix, receives a gradient, how many such) of the parameters of pipeline stage
    ``stage`` on one TP rank; pp=1 is the whole model."""
    h = cfg.n_embd
    if cfg.n_layer % pp:
        raise ValueError(f"n_layer={cfg.n_layer} is not divisible by pp={pp}")
    emb = [(cfg.padded_vocab_size(tp) // tp * h, True, True, 1), (cfg.n_positions * h, True, True, 1)]
    blocks = [(n, m, True, cfg.n_layer // pp) for n, m in block_params(cfg, tp)]
    ln_f = [(h, False, True, 2)] if cfg.ln_position == "pre" else []
    if pp == 1:
        return emb + blocks + ln_f
    if stage == 0:
        return emb + blocks
    if stage == pp - 1:  # the tied embedding again; its position table is never used there
        return blocks + ln_f + [emb[0], (emb[1][0], True, False, 1)]
    return blocks


def vocab_columns(cfg: ModelConfig, tp: int) -> int:
    """Logit columns of the TP rank with the most (rank 0): padding is never computed."""
    return min(cfg.padded_vocab_size(tp) // tp, cfg.vocab_size)


@dataclass
class Prediction:
    """Bytes on one rank (the pipeline stage with the largest total)."""

    params: float
    grads: float
    optimizer: float
    activations: float
    buffers: float  # transient working memory (not in the measured categories)
    host: float  # optimizer states moved to CPU memory by offload, per rank
    stage: int  # the pipeline stage these bytes are for
    in_flight: int  # micro-batches whose activations that stage holds at once

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.buffers


def layer_activation_bytes(cfg: ModelConfig, *, tp: int, micro_batch: int, seq: int, e: int, layer: int,
                           device: str = "cuda") -> float:
    """Bytes one transformer layer saves for backward in one micro-batch (see the module docstring)."""
    s, b, h, f, a = seq, micro_batch, cfg.n_embd, cfg.ffn_dim, cfg.n_head
    sbh = s * b * h
    stats = 4 if device == "cuda" else e  # LayerNorm mean/rstd: float32 on a GPU, the input's dtype on a CPU
    out = e * (4 * sbh + s * b * (3 * h + h + 2 * f) // tp)
    out += 2 * 2 * s * b * stats + 4 * b * (a // tp) * s
    if cfg.resid_pdrop > 0:
        out += 2 * sbh * (1 if device == "cuda" else e)  # the masks after attention and after the MLP
    if cfg.is_banded(layer) and s > cfg.local_window:
        out += e * s * s  # the boolean band made an additive mask
    return out


def activation_bytes(cfg: ModelConfig, *, tp: int, pp: int, stage: int, micro_batch: int, seq: int, e: int,
                     checkpointing: bool, device: str = "cuda") -> float:
    """Bytes stage ``stage`` saves for backward in one micro-batch."""
    s, b, h = seq, micro_batch, cfg.n_embd
    per = cfg.n_layer // pp
    first = stage * per
    if checkpointing:
        out = per * e * s * b * h
    else:
        dense = layer_activation_bytes(cfg, tp=tp, micro_batch=b, seq=s, e=e, layer=0, device=device)
        banded = layer_activation_bytes(cfg, tp=tp, micro_batch=b, seq=s, e=e, layer=1, device=device)
        # banded layers are the odd ones (ModelConfig.is_banded)
        n_banded = (first + per) // 2 - first // 2 if cfg.attention == "alternating" else 0
        out = (per - n_banded) * dense + n_banded * banded
    if stage == 0:
        out += 8 * s * b + 8 * s  # token ids (tp > 1: this rank's local ids) and positions
        if tp > 1:
            out += s * b  # the ids outside this rank's vocabulary shard
        if cfg.embd_pdrop > 0:
            out += s * b * h * (1 if device == "cuda" else e)
    if stage == pp - 1:
        stats = 4 if device == "cuda" else e
        if cfg.ln_position == "pre":
            out += e * s * b * h + 2 * s * b * stats  # final LayerNorm input and statistics
        out += e * s * b * h  # the head's input
        out += 4 * s * b * vocab_columns(cfg, tp)  # float32 softmax (log-softmax with tp=1)
        out += 8 * s * b + (2 * s * b if tp > 1 else 4) + 8  # targets, their masks, the loss mean
    return out


def predict(cfg: ModelConfig, *, seq: int, micro_batch: int, tp: int = 1, pp: int = 1, dp: int = 1,
            zero: int = 0, micro_batches: int = 1, precision: str = "bf16", checkpointing: bool = False,
            offload: bool = False, device: str = "cuda", stage: int | None = None,
            overlap_comm: bool = False) -> Prediction:
    """Predicted bytes on one rank of a layout: the pipeline stage ``stage``, or the stage with the
    largest total. ``micro_batches``: per optimizer step and rank (gradient accumulation)."""
    if stage is None:  # middle stages differ only in the micro-batches in flight and banded layers
        stages = sorted({0, min(1, pp - 1), min(2, pp - 1), pp - 1})
        return max((predict(cfg, seq=seq, micro_batch=micro_batch, tp=tp, pp=pp, dp=dp, zero=zero,
                            micro_batches=micro_batches, precision=precision, checkpointing=checkpointing,
                            offload=offload, device=device, stage=k, overlap_comm=overlap_comm)
                    for k in stages), key=lambda p: p.total)
    half = precision in ("bf16", "fp16")
    e = 2 if half else 4
    params = stage_params(cfg, tp, pp, stage)
    n = sum(p[0] * p[3] for p in params)
    n_grad = sum(p[0] * p[3] for p in params if p[2])
    bucket = reduce_bucket(cfg) * e * (2 if overlap_comm else 1)
    if zero == 3:
        part = sum(math.ceil(p[0] / dp) * p[3] for p in params)
        # parameters of at most the persistence threshold stay whole besides their partition
        # (with one data-parallel rank the partition is the whole parameter)
        persistent = sum(p[0] * p[3] for p in params if p[0] <= persistence_threshold(cfg)) if dp > 1 else 0
        p_bytes, g_bytes = e * (part + persistent), e * part + bucket
        o_bytes = (12 if half else 8) * part
    else:
        groups = [sum(p[0] * p[3] for p in params if p[1] == matrix) for matrix in (True, False)]
        padded = sum(math.ceil(g / (MASTER_ALIGN * dp)) * MASTER_ALIGN * dp for g in groups if g) if zero else n
        p_bytes = e * padded
        if zero == 0:
            g_bytes = e * n_grad + (4 * n_grad if half else 0)
            o_bytes = (12 if half else 8) * n
        else:
            g_bytes = e * n_grad if zero == 1 else e * padded / dp + bucket
            o_bytes = 12 * padded / dp
    host = 0.0
    if offload and zero >= 1:
        host, o_bytes = o_bytes, 0.0
    in_flight = min(pp - stage, micro_batches)
    acts = in_flight * activation_bytes(cfg, tp=tp, pp=pp, stage=stage, micro_batch=micro_batch, seq=seq, e=e,
                                        checkpointing=checkpointing, device=device)
    # transient working memory at the peak
    layer_params = sum(n_ for n_, _ in block_params(cfg, tp))
    buffers = 0.0
    if zero == 3:
        buffers += 2 * e * layer_params  # this layer's and the prefetched layer's gathered weights
    elif zero >= 1:
        buffers += bucket
    if checkpointing:
        buffers += max(layer_activation_bytes(cfg, tp=tp, micro_batch=micro_batch, seq=seq, e=e, layer=i,
                                              device=device) for i in range(min(2, cfg.n_layer)))
    if stage == pp - 1:
        buffers += (e + 4) * seq * micro_batch * vocab_columns(cfg, tp)  # logits and their gradient
    return Prediction(params=p_bytes, grads=g_bytes, optimizer=o_bytes, activations=acts, buffers=buffers,
                      host=host, stage=stage, in_flight=in_flight)
