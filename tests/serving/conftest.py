"""A live ``megagpt/serve.py`` on a random port over tiny exported models (a forward and a backward
model sharing a sentencepiece tokenizer trained on the project's prose, with byte fallback, so
Chinese text round-trips), started once per session."""
import pytest

from tests.helpers.serve import start_server, tiny_model


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory, prose_tokenizer):
    tmp, tok = tmp_path_factory.mktemp("serve_models"), prose_tokenizer
    return {"tokenizer": tok, "forward": tiny_model(0, tok, tmp / "fwd.safetensors", n_positions=512),
            "backward": tiny_model(1, tok, tmp / "bwd.safetensors", n_positions=512),
            "banded": tiny_model(2, tok, tmp / "banded.safetensors", attention="alternating")}


@pytest.fixture(scope="session")
def server(serve_models):
    """forward + backward (MMI) models, served as 'fwd'."""
    s = start_server("--model", serve_models["forward"], "--backward", serve_models["backward"])
    yield s
    s.stop()
