"""Evaluation: perplexity and zero/one/few-shot tasks, as GPT-2 and GPT-3 measured their models.

Task files (JSONL, no network: every task is one file)
-----------------------------------------------------
Line 1 is the header, every following line one item::

    {"megagpt_task": 1, "name": "wordnet_defs", "type": "multiple_choice",
     "description": "", "separator": "\\n\\n", "target_delimiter": " ",
     "unconditional_context": "Answer:", "source": "WordNet 3.0 glosses"}
    {"split": "train", "context": "dog: a word meaning", "choices": ["...", "..."], "label": 0}
    {"context": "...", "choices": ["...", "..."], "label": 1}

Header keys: ``type`` (required) is ``cloze``, ``multiple_choice`` or ``generation``; ``name``
(default: the file name); ``description`` (a natural-language task description put before the
examples); ``separator`` between solved examples and the item (default a blank line);
``target_delimiter`` between a context and its continuation (default one space);
``unconditional_context`` (multiple choice, default ``"Answer:"``: GPT-3's normalisation divides
P(choice | context) by P(choice | this)); ``stop`` (generation stop strings, default ``["\\n"]``)
and ``max_tokens`` (default 32); ``source`` (free text: where the data came from).

Items: ``context`` (string, required), ``split`` (``test``, the default, or ``train``: the pool
for conditioning examples), optional ``id``, and by type:

- ``cloze``: ``target``, the word the greedy completion must produce (``acc``), and whose
  perplexity is reported (``ppl``, exp of the mean negative log-probability per item);
- ``multiple_choice``: ``choices`` (two or more strings) and ``label`` (index of the right one);
  accuracy by the raw log-likelihood sum (``acc``), per token (``acc_token``), per byte
  (``acc_byte``) and unconditionally normalised (``acc_uncond``);
- ``generation``: ``answers`` (one or more references); greedy decoding up to ``max_tokens`` or a
  stop string, scored by exact match (``em``) and token F1 (``f1``) after SQuAD's normalisation.

A k-shot prompt is ``description + sep + ex_1 + sep + ... + ex_k + sep + context``, each example
``context + target_delimiter + gold``, examples drawn per item from the train split (or from the
test split minus the item) with ``random.Random(seed * 1000003 + line)``; k is lowered until the
prompt and the continuation fit ``n_positions`` (``max``: as many as fit).
"""
from megagpt.eval.runner import Evaluator, TaskResult, format_table, run_suite, tensorboard_scalars
from megagpt.eval.tasks import Task, TaskError, load_task, write_task

__all__ = ["Evaluator", "TaskResult", "run_suite", "format_table", "tensorboard_scalars", "Task", "TaskError",
           "load_task", "write_task"]
