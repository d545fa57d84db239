"""GPT-1 supervised fine-tuning (Radford et al. 2018, section 3.2): a linear head W_y on the final
hidden state at ``<|ft_extract|>``, trained with L = L_task + lm_coef * L_lm.

Task files (JSONL): a header line, then one example per line::

    {"megagpt_finetune": 1, "name": "newsgroups", "type": "classification", "labels": ["a", "b"]}
    {"split": "train", "text": "...", "label": "a"}
    {"split": "valid", "text": "...", "label": "b"}
    {"split": "test", "text": "..."}

``type`` and the example fields:

- ``classification``: ``text``, ``label`` (a class name);
- ``entailment``: ``premise``, ``hypothesis``, ``label``;
- ``similarity``: ``a``, ``b``, ``label`` (a class name, or a number when the header says
  ``"regression": true``: W_y then gives one number, trained with squared error and scored by
  Pearson and Spearman correlation);
- ``multiple_choice``: ``context``, ``choices`` (two or more), ``label`` (index of the right one).

``split`` is ``train`` (the default), ``valid`` (model selection, metrics in TensorBoard) or
``test`` (``--predict``; the label may be left out). ``labels`` in the header fixes the class
order; without it the sorted training labels are used, and a label outside the set is an error
naming the line.
"""
from megagpt.finetuning.data import Encoder, FinetuneDataError, FinetuneTask, collate, load_finetune_task
from megagpt.finetuning.model import FinetuneGPT

__all__ = ["Encoder", "FinetuneDataError", "FinetuneTask", "collate", "load_finetune_task", "FinetuneGPT"]
