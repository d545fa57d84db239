"""Fine-tuning in the 3d layout: the pretraining pipeline with W_y on the last stage.

The last stage's tied head returns (LM logits, final hidden states); a ``ClassifierPipe`` layer
after it holds W_y (initialised exactly as in the zero3 layout) and passes both on. The loss
function, which alone receives the labels (LM targets, extract positions, answer mask, task
labels), reads the extract states, applies W_y and computes L_task + lm_coef * L_lm with the same
functions as ``FinetuneGPT``. Batches have fixed shapes (every sequence padded to ``max_length``,
every example to the task's most answers), as the pipeline engine requires.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from deepspeed.pipe import LayerSpec

from megagpt.finetuning.model import example_mean, head_scores, init_classifier, task_loss
from megagpt.parallel.cross_entropy import vocab_parallel_cross_entropy


def _head_and_hidden(module, hidden):
    return module.head(hidden), hidden


class ClassifierPipe(nn.Module):
    def __init__(self, n_embd: int, n_outputs: int, clf_pdrop: float, init_seed: int):
        super().__init__()
        self.dropout = nn.Dropout(clf_pdrop)
        self.classifier = init_classifier(n_embd, n_outputs, init_seed)

    def forward(self, outputs):
        return outputs  # W_y is applied in the loss, which has the extract positions


class FinetunePipeLoss:
    """Called on the last stage with ((logits, hidden), labels). Keeps running sums of the task
    and LM losses for logging and, while ``collect`` is a list, each micro-batch's scores."""

    def __init__(self, cfg, ps, task_type: str, regression: bool, lm_coef: float):
        self.cfg, self.ps = cfg, ps
        self.task_type, self.regression, self.lm_coef = task_type, regression, lm_coef
        self.vocab_start = cfg.padded_vocab_size(ps.tp_size) // ps.tp_size * ps.tp_rank
        self.layer: ClassifierPipe | None = None  # set once the pipeline is built (last stage)
        self.sums = torch.zeros(3)  # task, lm, micro-batches
        self.collect: list | None = None

    def __call__(self, outputs, labels):
        logits, hidden = outputs
        lm_targets, extract, choice_mask, y = labels
        scores = head_scores(self.layer.classifier, self.layer.dropout, hidden, extract, choice_mask.bool(),
                             self.task_type, self.regression)
        task = task_loss(scores, y, self.regression)
        total, lm = task, torch.zeros(())
        if self.lm_coef:
            per_token = vocab_parallel_cross_entropy(logits, lm_targets.reshape(hidden.size(0), -1),
                                                     vocab_start=self.vocab_start, group=self.ps.tp_group)
            lm = example_mean(per_token, lm_targets)
            total = task + self.lm_coef * lm
        if self.collect is not None:  # validation: scores kept, the training sums untouched
            self.collect.append(scores.detach().float().cpu())
        else:
            self.sums += torch.stack([task.detach().float().cpu(), lm.detach().float().cpu(), torch.ones(())])
        return total


def build_finetune_pipeline(cfg, ps, topology, *, task, clf_pdrop: float, lm_coef: float, init_seed: int,
                            checkpoint_activations: bool = False):
    from megagpt.train.pipeline import build_pipeline

    loss = FinetunePipeLoss(cfg, ps, task.type, task.regression, lm_coef)
    module = build_pipeline(cfg, ps, topology, init_seed=init_seed, checkpoint_activations=checkpoint_activations,
                            head_forward=_head_and_hidden,
                            extra=[LayerSpec(ClassifierPipe, cfg.n_embd, task.n_outputs, clf_pdrop, init_seed)],
                            loss_fn=loss)
    for layer in getattr(module, "forward_funcs", []):
        if isinstance(layer, ClassifierPipe):
            loss.layer = layer
    return module, loss


def classifier_params(module) -> list:
    """W_y's (weight, bias) on the stage that holds it, else []."""
    for layer in getattr(module, "forward_funcs", []):
        if isinstance(layer, ClassifierPipe):
            return [layer.classifier.weight, layer.classifier.bias]
    return []
