"""Sample from a Hugging Face directory written by ``megagpt/export.py --hf-dir`` with
transformers alone (no megagpt import): what a user of any HF-based tool would do.

    python scripts/hf_sample.py demo/run/hf "In the beginning"
"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(hf_dir: str, prompt: str) -> None:
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = tok(prompt, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**ids, max_new_tokens=40, do_sample=True, top_k=50, top_p=0.95, temperature=0.8)
    print(f"--- transformers {type(model).__name__} from {hf_dir}: {prompt!r} ->")
    print(tok.decode(out[0], skip_special_tokens=True), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "In the beginning")
