"""megagpt as an lm-evaluation-harness model (``pip install -e .[eval]``).

    megagpt-lm-eval --model megagpt --model_args path=demo/run/model.safetensors \\
        --include_path megagpt/eval/lm_eval_tasks --tasks megagpt_wordnet_defs --num_fewshot 1

``megagpt-lm-eval`` is ``lm_eval`` with the model registered (lm-evaluation-harness 0.4 finds
models only in its own table or in modules already imported; ``import megagpt.eval.harness``
does the same for ``lm_eval.simple_evaluate(model="megagpt", ...)``). Model arguments: ``path``
(export, Hugging Face directory or checkpoint), ``tokenizer``, ``tag``, ``batch_size``, ``tp``,
``dtype`` (fp32, bf16, fp16, int8), ``max_gen_toks``. Log-likelihoods go through the batched, vocab-parallel
``megagpt.inference.loglikelihood`` and generation through the cached generator; under a launcher
the model is tensor-parallel over ``tp`` ranks and the requests are split over the DP groups
inside the model, so lm-evaluation-harness itself sees one process.
"""
from __future__ import annotations

import lm_eval.models  # noqa: F401 - the built-in table first: it loads only into an empty registry
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from megagpt.eval.runner import Evaluator
from megagpt.inference.generation import SamplingParams


@register_model("megagpt")
class MegagptLM(TemplateLM):
    def __init__(self, path: str, tokenizer: str | None = None, tag: str | None = None, batch_size=16,
                 tp: int | None = None, dtype: str = "fp32", max_gen_toks: int = 256, **_):
        super().__init__()
        from megagpt.inference import load_for_text
        from megagpt.inference.distributed import setup_parallel

        ps, device = setup_parallel(int(tp) if tp else None)
        if ps is not None:  # tear the group down before the interpreter exits
            import atexit

            from megagpt.parallel.launch import close_distributed

            atexit.register(close_distributed)
        model, tok = load_for_text(path, tokenizer=tokenizer, hint="tokenizer=...", tag=tag, ps=ps, dtype=dtype,
                                   device=device)
        bs = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.ev = Evaluator(model, tok, ps, batch_size=bs)
        self.tok, self.max_gen_toks = tok, int(max_gen_toks)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eod_id

    @property
    def max_length(self) -> int:
        return self.ev.n_positions

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tok.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        scores = self.ev.score([(ctx, cont) for _, ctx, cont in requests])
        out = [(s.logprob, s.greedy) for s in scores]
        for (key, _, _), r in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, r)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # the same windows as lm-evaluation-harness's Hugging Face model: disjoint, max_length each
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for w in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(w)
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, s in zip(owner, self.ev.score(windows, keep=False)):
            totals[i] += s.logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            # Hugging Face's rule: sampling only with do_sample, at temperature 1.0 unless given
            greedy = not kwargs.get("do_sample", False) or float(kwargs.get("temperature", 1.0)) == 0.0
            temperature = 0.0 if greedy else float(kwargs.get("temperature", 1.0))
            key = (tuple(until), max_new, temperature, float(kwargs.get("top_p", 1.0)), int(kwargs.get("top_k", 0)))
            groups.setdefault(key, []).append(i)
            settings.append(context)
        out = [""] * len(requests)
        for (until, max_new, temperature, top_p, top_k), idx in groups.items():
            budget = max(1, self.max_length - max_new)  # the context keeps the tokens that fit
            prompts = [(self.tok_encode(settings[i]) or [self.eot_token_id])[-budget:] for i in idx]
            params = SamplingParams(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k,
                                    stop=until)
            for i, text in zip(idx, self.ev.complete(prompts, params)):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def main() -> None:
    """``lm_eval`` with the ``megagpt`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
