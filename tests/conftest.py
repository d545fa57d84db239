import os
from pathlib import Path

import pytest

# Fixed thread counts make CPU runs bit-reproducible; set before torch starts its pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def prose_tokenizer(tmp_path_factory):
    """A 400-piece sentencepiece tokenizer (byte fallback) trained on the project's own prose: the
    source and the README. Trained once per session for every test that builds a tiny model."""
    from data_tools.tokenizer import TokenizerConfig, train

    root = Path(__file__).resolve().parents[1]
    texts = [p.read_text(encoding="utf-8") for p in sorted(root.glob("megagpt/**/*.py"))] + \
            [(root / "README.md").read_text(encoding="utf-8")]
    return train(texts, tmp_path_factory.mktemp("tok") / "tok.model",
                 TokenizerConfig(vocab_size=400, sample_bytes=2_000_000))
