"""Architecture fidelity: megagpt with the weights of a Hugging Face GPT2LMHeadModel (random
init, built from a GPT2Config: nothing downloaded) produces the same logits."""
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from megagpt.model import GPT, full_state_dict, load_full_state_dict
from megagpt.model.convert import config_from_hf, full_from_hf_gpt2, full_to_hf_gpt2


def _hf_model():
    torch.manual_seed(0)
    hf_cfg = GPT2Config(n_layer=3, n_head=4, n_embd=64, n_positions=64, vocab_size=1000)
    return GPT2LMHeadModel(hf_cfg).eval()


def test_logits_match_hugging_face_gpt2():
    hf = _hf_model()
    model = GPT(config_from_hf(hf.config)).eval()
    load_full_state_dict(model, full_from_hf_gpt2(hf.state_dict()))
    idx = torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.gathered_logits(idx)
        theirs = hf(idx).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4


def test_export_round_trips_into_hugging_face():
    hf = _hf_model()
    model = GPT(config_from_hf(hf.config))
    exported = full_to_hf_gpt2(full_state_dict(model))
    missing, unexpected = hf.load_state_dict(exported, strict=False)
    assert not unexpected
    assert all(k.endswith(("attn.bias", "attn.masked_bias")) for k in missing)
    idx = torch.randint(0, 1000, (1, 32))
    with torch.no_grad():
        assert (model.eval().gathered_logits(idx) - hf(idx).logits).abs().max().item() < 1e-4
