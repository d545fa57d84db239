import pytest
import torch

from tests.helpers.finetune import corpus_lines, write_classification


@pytest.fixture(scope="session")
def ft_setup(tmp_path_factory):
    """A sentencepiece tokenizer (with the reserved fine-tuning tokens) trained on chatterbot's
    English text, a tiny random GPT exported with it, and the coding-vs-trivia task."""
    from data_tools.tokenizer import TokenizerConfig, train
    from megagpt.config import model_config
    from megagpt.formats.weights import save_export
    from megagpt.model import GPT, full_state_dict

    tmp = tmp_path_factory.mktemp("ft")
    text = [" ".join(corpus_lines(n)) for n in ("coding", "trivia", "ai", "computers", "science", "history")]
    tok = train(text, tmp / "tok.model", TokenizerConfig(vocab_size=512, sample_bytes=2_000_000))
    torch.manual_seed(0)
    cfg = model_config(None, n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=512, attention="dense",
                       embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
    model = save_export(full_state_dict(GPT(cfg)), cfg, tmp / "model.safetensors", tokenizer=str(tok))
    return {"tmp": tmp, "tok": tok, "model": model, "task": write_classification(tmp / "chat_topic.jsonl")}
