"""build_source.py end to end: report, bad input, --strict, kill and resume, mpirun, cross-source."""
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "data_tools" / "build_source.py")]


def build(*args, env=None, check=True):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    r = subprocess.run([*CLI, *map(str, args), "--vocab-size", "500", "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True, env=e, start_new_session=True)
    if check and r.returncode != 0:
        raise AssertionError(f"rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def web_corpus(root, rng, make_doc, jsonl_writer, files=6, per=12):
    """JSONL files with duplicates planted within and across files."""
    root.mkdir(parents=True, exist_ok=True)
    docs = [{"id": f"d{i}", "url": f"http://site{i}.org/p", "text": make_doc(rng)} for i in range(files * per)]
    for k in range(files):
        part = docs[k * per:(k + 1) * per]
        src = docs[(k - 1) * per] if k else docs[1]  # from the previous file (or this one), lightly edited
        part = part + [{"id": f"dup{k}", "url": "http://copy.org", "text": src["text"].replace(".", "!", 1)}]
        jsonl_writer(root / f"part{k}.jsonl", part)
    return docs


def kept_docs(out, source="web"):
    return sorted(json.loads(l)["id"] for p in sorted((Path(out) / source / "deduped").glob("*.jsonl"))
                  for l in open(p, encoding="utf-8"))


def outputs(out, source="web"):
    out = Path(out)
    # tokenizer.vocab, not .model: the model records its own output path
    files = [out / f"{source}_text_document.bin", out / f"{source}_text_document.idx", out / "tokenizer.vocab",
             *sorted((out / source / "deduped").glob("*.jsonl"))]
    return {p.name: p.read_bytes() for p in files}


def test_report_and_dedup(tmp_path, rng, make_doc, jsonl_writer):
    web_corpus(tmp_path / "in", rng, make_doc, jsonl_writer)
    build(tmp_path / "in", "--source", "web", "--out", tmp_path / "out", "--workers", "2")
    rep = json.loads((tmp_path / "out" / "web_report.json").read_text())
    assert rep["documents_in"] == 78 and rep["bytes_in"] > 0
    assert rep["dedup"]["removed"] == 6 and rep["steps"]["dedup"]["dropped:duplicate"] == 6
    assert set(kept_docs(tmp_path / "out")).isdisjoint({f"dup{k}" for k in range(6)})
    for step in ("clean", "language", "gopher_quality", "gopher_repetition", "c4", "fineweb", "url"):
        assert step in rep["steps"]
    assert rep["tokens"]["tokens"] > 0 and rep["tokens"]["documents"] == len(kept_docs(tmp_path / "out"))
    for stage in ("filter", "dedup", "write", "tokenizer", "tokenize"):
        assert rep["stages"][stage]["wall_s"] >= 0
    table = (tmp_path / "out" / "web_report.txt").read_text()
    assert "dedup: " in table and "tokens out:" in table


def test_bad_input_counted_and_strict(tmp_path, rng, make_doc, jsonl_writer):
    d = tmp_path / "in"
    d.mkdir()
    good = [make_doc(rng) for _ in range(9)]
    jsonl_writer(d / "a.jsonl", [{"text": t} for t in good[:3]])
    with open(d / "b.jsonl", "wb") as f:  # bad lines between good ones
        f.write(json.dumps({"text": good[3]}).encode() + b"\n{broken json\n" + b'{"text": "\xff\xfe"}\n'
                + json.dumps({"text": good[4]}).encode() + b"\n")
    (d / "c.jsonl").write_bytes(os.urandom(3000).replace(b"\n", b"x") + b"\n")   # binary garbage
    (d / "d.jsonl").write_bytes(b"")                                              # empty
    data = gzip.compress(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in good[5:]) * 30)
    (d / "e.jsonl.gz").write_bytes(data[: len(data) - 50])                      # truncated gzip
    (d / "f.xml.bz2").write_bytes(b"BZh91AY&SY" + os.urandom(100))                # corrupt bz2
    r = build(d, "--source", "web", "--out", tmp_path / "out", "--filters", "none")
    rep = json.loads((tmp_path / "out" / "web_report.json").read_text())
    c = rep["errors"]["counts"]
    assert c["bad_json"] == 1 and c["invalid_utf8"] >= 2 and c["empty_file"] == 1
    assert c["truncated"] == 2  # the cut gzip and the corrupt bz2 stream
    assert sum(c.values()) >= 6
    files = {Path(e["file"]).name for e in rep["errors"]["entries"]}
    assert {"b.jsonl", "c.jsonl", "d.jsonl", "e.jsonl.gz", "f.xml.bz2"} <= files
    assert all("offset" in e for e in rep["errors"]["entries"])
    kept = {json.loads(l)["text"] for p in (tmp_path / "out" / "web" / "deduped").glob("*.jsonl") for l in open(p)}
    assert kept == set(good)  # every good document kept (the gz copies are exact duplicates)
    assert "bad input:" in r.stdout
    strict = build(d, "--source", "web", "--out", tmp_path / "out2", "--filters", "none", "--strict", check=False)
    assert strict.returncode != 0 and "offset" in strict.stderr and "error:" in strict.stderr


@pytest.mark.parametrize("kill_at", ["filter:2", "write:2", "tokenize:3"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, rng, make_doc, jsonl_writer, kill_at):
    web_corpus(tmp_path / "in", rng, make_doc, jsonl_writer)
    build(tmp_path / "in", "--source", "web", "--out", tmp_path / "ref")
    r = build(tmp_path / "in", "--source", "web", "--out", tmp_path / "out",
              env={"DATA_TOOLS_KILL_AFTER": kill_at}, check=False)
    assert r.returncode == -9  # really killed mid-run
    assert not (tmp_path / "out" / "web_report.json").exists()
    build(tmp_path / "in", "--source", "web", "--out", tmp_path / "out")
    assert outputs(tmp_path / "out") == outputs(tmp_path / "ref")
    a = json.loads((tmp_path / "out" / "web_report.json").read_text())
    b = json.loads((tmp_path / "ref" / "web_report.json").read_text())
    assert a["steps"] == b["steps"] and a["documents_in"] == b["documents_in"]


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not on PATH")
def test_mpirun_two_ranks_same_kept_set(tmp_path, rng, make_doc, jsonl_writer):
    web_corpus(tmp_path / "in", rng, make_doc, jsonl_writer)
    build(tmp_path / "in", "--source", "web", "--out", tmp_path / "one")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    r = subprocess.run(["mpirun", "--oversubscribe", "-np", "2", *CLI, str(tmp_path / "in"), "--source", "web",
                        "--out", str(tmp_path / "two"), "--vocab-size", "500", "--no-progress"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert kept_docs(tmp_path / "two") == kept_docs(tmp_path / "one")
    # the planted cross-file duplicates sit on different ranks and were still found
    assert not {f"dup{k}" for k in range(6)} & set(kept_docs(tmp_path / "two"))
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")
    one, two = (json.loads((tmp_path / d / "web_report.json").read_text()) for d in ("one", "two"))
    assert one["dedup"] == two["dedup"] and one["steps"] == two["steps"] and one["tokens"] == two["tokens"]


def test_output_inside_input_dir_is_not_read_back(tmp_path, rng, make_doc, jsonl_writer):
    jsonl_writer(tmp_path / "a.jsonl", [{"id": f"d{i}", "text": make_doc(rng)} for i in range(5)])
    build(tmp_path, "--source", "web", "--out", tmp_path / "out")
    build(tmp_path, "--source", "web", "--out", tmp_path / "out2")  # out/ now sits inside the input dir
    assert kept_docs(tmp_path / "out2") == kept_docs(tmp_path / "out") == [f"d{i}" for i in range(5)]


def test_cross_source_cli(tmp_path, rng, make_doc, jsonl_writer):
    docs = [{"id": f"w{i}", "text": make_doc(rng)} for i in range(10)]
    jsonl_writer(tmp_path / "webtext.jsonl", docs)
    cc = [dict(docs[2], id="cc_copy"), {"id": "cc_own", "text": make_doc(rng)}]
    jsonl_writer(tmp_path / "cc.jsonl", cc)
    build(tmp_path / "webtext.jsonl", "--source", "webtext", "--out", tmp_path / "out")
    build(tmp_path / "cc.jsonl", "--source", "cc", "--out", tmp_path / "out",
          "--dedup-against", tmp_path / "out" / "work" / "webtext")
    assert kept_docs(tmp_path / "out", "cc") == ["cc_own"]
    rep = json.loads((tmp_path / "out" / "cc_report.json").read_text())
    assert rep["steps"]["dedup"]["dropped:cross_source_duplicate"] == 1


def test_filter_reasons_in_report(tmp_path, rng, make_doc, jsonl_writer):
    good = make_doc(rng)
    docs = [
        {"id": "ok", "url": "http://fine.org/a", "text": good},
        {"id": "blocked", "url": "http://spam.example/x", "text": make_doc(rng)},
        {"id": "german", "text": "Die Katze sitzt auf dem Tisch und schaut aus dem Fenster, weil draussen "
                                 "die Vögel singen. Es ist ein schöner Tag im Garten der Familie."},
        {"id": "short", "text": "The cat and the dog. The sun is up. We go to the park now. It is fun."},
        {"id": "repeat", "text": "\n".join([good.split("\n")[0]] * 4 + good.split("\n"))},
        {"id": "lorem", "text": make_doc(rng) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."},
        {"id": "menu", "text": "\n".join(" ".join(ws[i:i + 7]) for ws in [make_doc(rng, 5).replace(".", "").split()]
                                        for i in range(0, len(ws), 7))},  # no line ends a sentence
    ]
    long = make_doc(rng, paragraphs=30).split("\n")
    docs.append({"id": "dupline", "text": "\n".join(long + long[3:4])})  # passes Gopher's 0.2, fails FineWeb's 0.01
    jsonl_writer(tmp_path / "in.jsonl", docs)
    bl = tmp_path / "block.txt"
    bl.write_text("spam.example\n")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"url": {"blocklist_file": str(bl)}}))
    build(tmp_path / "in.jsonl", "--source", "web", "--out", tmp_path / "out", "--config", cfg)
    steps = json.loads((tmp_path / "out" / "web_report.json").read_text())["steps"]
    assert steps["url"]["dropped:blocked_domain"] == 1
    assert steps["language"]["dropped:lang_de"] == 1
    assert steps["gopher_quality"]["dropped:few_words"] == 1
    assert steps["gopher_repetition"]["dropped:dup_line_frac"] == 1
    assert steps["c4"]["dropped:lorem_ipsum"] == 1
    assert steps["c4"]["dropped:few_sentences"] == 1 and steps["c4"]["line_dropped:no_terminal_punct"] >= 10
    assert steps["fineweb"]["dropped:char_dup_ratio"] == 1
    assert kept_docs(tmp_path / "out") == ["ok"]
    table = (tmp_path / "out" / "web_report.txt").read_text()
    assert "dropped:lang_de" in table and "dropped:blocked_domain" in table


def test_configs_and_errors(tmp_path, rng, make_doc, jsonl_writer):
    from data_tools.build_source import make_config, parse_args
    for name in ("common_crawl", "webtext2", "books", "wikipedia"):
        cfg = make_config(parse_args(["x", "--source", name, "--out", "o", "--config",
                                      str(ROOT / "data_tools" / "configs" / f"{name}.yaml")]))
        assert cfg.source == name
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"gopher_quality": {"min_wordz": 3}}))
    jsonl_writer(tmp_path / "in.jsonl", [{"text": make_doc(rng)}])
    r = build(tmp_path / "in.jsonl", "--source", "s", "--out", tmp_path / "o", "--config", bad, check=False)
    assert r.returncode == 2 and "gopher_quality: unknown key 'min_wordz'; allowed keys are" in r.stderr
    build(tmp_path / "in.jsonl", "--source", "s", "--out", tmp_path / "o2", "--filters", "none")
    r = build(tmp_path / "in.jsonl", "--source", "s", "--out", tmp_path / "o2", "--filters", "c4", check=False)
    assert r.returncode != 0 and "differ from the run being resumed" in r.stderr


def test_books_dir_wiki_decontam_and_classifier_steps(tmp_path, rng, make_doc, jsonl_writer):
    """Books as a directory of .txt; the classifier and decontamination as pipeline steps."""
    from data_tools.classifier import QualityClassifier
    books = tmp_path / "books"
    books.mkdir()
    texts = [make_doc(rng, paragraphs=12) for _ in range(4)]
    ev = "the quick brown fox jumps over the lazy dog while the farmer watches from the old bridge today"
    texts[1] = texts[1] + "\n" + ev.capitalize() + ".\n" + make_doc(rng, paragraphs=6)
    for i, t in enumerate(texts):
        (books / f"book{i}.txt").write_text(t, encoding="utf-8")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": ev}) + "\n")

    def spam():
        return " ".join(rng.choice("buy cheap click here free casino win now".split()) for _ in range(80))

    clf = QualityClassifier().train([make_doc(rng) for _ in range(60)], [spam() for _ in range(60)])
    clf.save(tmp_path / "q.npz")
    build(books, "--source", "books1", "--out", tmp_path / "out", "--config",
          ROOT / "data_tools" / "configs" / "books.yaml", "--decontam", tmp_path / "eval.jsonl",
          "--classifier", tmp_path / "q.npz", "--shard-per-file")
    rep = json.loads((tmp_path / "out" / "books1_report.json").read_text())
    assert rep["documents_in"] == 4
    assert rep["steps"]["decontam"]["kept:cut"] == 1 and rep["steps"]["decontam"]["kept"] == 3
    assert rep["steps"]["quality_classifier"]["kept"] == 4
    kept = [json.loads(l) for p in sorted((tmp_path / "out" / "books1" / "deduped").glob("*.jsonl")) for l in open(p)]
    assert [k["title"] for k in kept] == ["book0", "book1", "book2", "book3"]
    assert "lazy dog" not in kept[1]["text"]
    from megagpt.data.indexed import IndexedDataset
    shards = sorted((tmp_path / "out" / "shards").glob("books1_*_text_document.idx"))
    assert len(shards) == 4 and all(len(IndexedDataset(str(p)[:-4])) == 1 for p in shards)


def test_nothing_left_is_a_clear_error(tmp_path, jsonl_writer):
    jsonl_writer(tmp_path / "in.jsonl", [{"text": "Too short to keep."}] * 3)
    r = build(tmp_path / "in.jsonl", "--source", "s", "--out", tmp_path / "o", check=False)
    assert r.returncode == 1 and "no documents left after filtering" in r.stderr
    rep = json.loads((tmp_path / "o" / "s_report.json").read_text())
    assert rep["steps"]["gopher_quality"]["dropped:few_words"] == 3
