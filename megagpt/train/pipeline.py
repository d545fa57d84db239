"""The GPT as a DeepSpeed ``PipelineModule``: the same Embedding / Block / FinalNorm / LMHead
classes as ``megagpt.model.GPT``, cut into stages, with the embedding tied to the output head.

Layer i is seeded with ``init_seed + i`` exactly as ``GPT(init_seed=...)`` seeds its pieces, so the
two layouts start from identical weights.
"""
from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from torch.utils.checkpoint import checkpoint

from megagpt.config import ModelConfig
from megagpt.data.gpt_dataset import token_mean
from megagpt.model.gpt import Block, Embedding, FinalNorm, LMHead
from megagpt.parallel.cross_entropy import vocab_parallel_cross_entropy
from megagpt.parallel.state import ParallelState


class EmbeddingPipe(Embedding):
    """The embedding stage; the same module, on the last stage, also serves as the output head."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        super().__init__(cfg, ps)
        self.head = LMHead(cfg, ps, self.wte)


def _head_forward(module: EmbeddingPipe, hidden):
    return module.head(hidden)


class PipeLoss:
    """Mean vocab-parallel cross-entropy of the last stage's logits over the learned tokens
    (targets not -100)."""

    def __init__(self, cfg: ModelConfig, ps: ParallelState):
        self.group = ps.tp_group
        self.vocab_start = cfg.padded_vocab_size(ps.tp_size) // ps.tp_size * ps.tp_rank

    def __call__(self, logits, targets):
        return token_mean(vocab_parallel_cross_entropy(logits, targets, vocab_start=self.vocab_start,
                                                       group=self.group), targets)


def _seed_build(spec: LayerSpec, seed: int) -> None:
    """Initialise this layer right after ``torch.manual_seed(seed)``, on whichever stage builds it."""
    build = spec.build

    def seeded_build(log=False):
        torch.manual_seed(seed)
        return build(log=log)

    spec.build = seeded_build


def build_pipeline(cfg: ModelConfig, ps: ParallelState, topology, *, init_seed: int,
                   checkpoint_activations: bool = False, head_forward=_head_forward, extra=(),
                   loss_fn=None) -> PipelineModule:
    """``head_forward``, ``extra`` (layer specs after the head) and ``loss_fn`` let fine-tuning put
    its classifier on the last stage; extra layers build with their own seeds."""
    specs = [TiedLayerSpec("embed", EmbeddingPipe, cfg, ps, tied_weight_attr="wte.weight")]
    specs += [LayerSpec(Block, cfg, ps, i) for i in range(cfg.n_layer)]
    if cfg.ln_position == "pre":
        specs.append(LayerSpec(FinalNorm, cfg.n_embd, eps=cfg.layer_norm_epsilon))
    specs.append(TiedLayerSpec("embed", EmbeddingPipe, cfg, ps, forward_fn=head_forward,
                               tied_weight_attr="wte.weight"))
    for i, spec in enumerate(specs):
        _seed_build(spec, init_seed + i)
    specs += list(extra)

    def checkpoint_fn(fn, *args):
        # our RNG tracker replays the forked (per-TP-rank) dropout stream on recompute
        return checkpoint(fn, *args, use_reentrant=False, context_fn=ps.rng.checkpoint_contexts)

    return PipelineModule(
        layers=specs, topology=topology, loss_fn=loss_fn or PipeLoss(cfg, ps), partition_method="type:Block",
        # not seed_layers: DeepSpeed would then reseed every layer on every forward from a
        # call counter that checkpoints do not keep, so dropout would change on resume
        seed_layers=False,
        activation_checkpoint_interval=1 if checkpoint_activations else 0,
        activation_checkpoint_func=checkpoint_fn, checkpointable_layers=["Block"])
