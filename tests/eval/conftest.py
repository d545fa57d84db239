"""A tiny dense GPT exported with a sentencepiece tokenizer trained on the project's own prose,
and small task files in megagpt's format."""
import json

import pytest
import torch

from megagpt.config import model_config
from megagpt.eval.tasks import write_task
from megagpt.formats.weights import save_export
from megagpt.model import GPT, full_state_dict
from tests.helpers.eval_data import SENTENCES


@pytest.fixture(scope="session")
def exported(tmp_path_factory, prose_tokenizer):
    tmp = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    cfg = model_config("tiny", vocab_size=400, n_positions=128, attention="dense",
                       embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    return save_export(full_state_dict(GPT(cfg)), cfg, tmp / "model.safetensors", tokenizer=str(prose_tokenizer),
                       run_name="tiny_run")


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """One task of each type (contexts from the sentences above) and a text corpus."""
    tmp = tmp_path_factory.mktemp("tasks")
    mc, cloze, gen = [], [], []
    for i, s in enumerate(SENTENCES):
        words = s[:-1].split()
        others = [SENTENCES[(i + j) % len(SENTENCES)].split()[-1][:-1] for j in (1, 2, 3)]
        choices = others[:i % 4] + [words[-1]] + others[i % 4:]
        split = "train" if i >= 6 else "test"
        mc.append({"split": split, "context": " ".join(words[:-1]), "choices": choices, "label": i % 4})
        cloze.append({"context": " ".join(words[:-1]), "target": words[-1]})
        gen.append({"split": split, "context": f"Q: {' '.join(words[:3])}\nA:", "answers": [words[3]]})
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(SENTENCES[i:i + 4])}) + "\n" for i in range(0, 8, 2)))
    return {"mc": write_task(tmp / "mc.jsonl", {"name": "mc", "type": "multiple_choice"}, mc),
            "cloze": write_task(tmp / "cloze.jsonl", {"name": "cloze", "type": "cloze"}, cloze),
            "gen": write_task(tmp / "gen.jsonl", {"name": "gen", "type": "generation", "max_tokens": 4}, gen),
            "corpus": corpus}
