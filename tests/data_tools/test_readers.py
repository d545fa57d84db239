"""Readers: documents read equal documents written, in the real formats; bad input is counted
with file and offset and never stops the run."""
import bz2
import gzip
import io
import json
import os

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from data_tools.document import ErrorLog, InputError
from data_tools.readers import read_file, wikitext_to_text

TEXTS = ["First page.\nIt has two lines.", "Zweite Seite mit Umlauten: äöü ß.", "第三页，中文文本。"]


def write_warc(path, texts, wet):
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=str(path).endswith(".gz"))
        for i, t in enumerate(texts):
            url = f"http://example{i}.com/page"
            if wet:
                rec = w.create_warc_record(url, "conversion", payload=io.BytesIO(t.encode()),
                                           warc_content_type="text/plain")
            else:
                body = t.replace(chr(10), "</p><p>")
                html = f"<html><head><title>x</title><script>var a=1;</script></head><body><p>{body}</p></body></html>"
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
                rec = w.create_warc_record(url, "response", payload=io.BytesIO(html.encode()), http_headers=http)
            w.write_record(rec)
            # a request record between responses must be skipped
            w.write_record(w.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))


@pytest.mark.parametrize("wet,gz", [(True, True), (False, True), (True, False), (False, False)])
def test_warc_wet_roundtrip(tmp_path, wet, gz):
    p = tmp_path / (("a.warc.wet" if wet else "a.warc") + (".gz" if gz else ""))
    write_warc(p, TEXTS, wet)
    errors = ErrorLog()
    docs = list(read_file(p, "cc", errors))
    assert [d.text for d in docs] == TEXTS
    assert [d.url for d in docs] == [f"http://example{i}.com/page" for i in range(3)]
    assert len({d.id for d in docs}) == 3 and all(d.source == "cc" for d in docs)
    assert not errors.counts


def test_truncated_gzip_warc_keeps_good_records(tmp_path):
    p = tmp_path / "t.warc.wet.gz"
    write_warc(p, TEXTS * 20, wet=True)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    errors = ErrorLog()
    docs = list(read_file(p, "cc", errors))
    assert 10 < len(docs) < 60 and all(d.text in TEXTS for d in docs)
    assert errors.counts["bad_warc"] == 1
    e = errors.entries[0]
    assert e["file"] == str(p) and isinstance(e["offset"], int) and e["offset"] > 0
    garbage = tmp_path / "g.warc.gz"
    garbage.write_bytes(bytes(range(256)) * 10)
    assert list(read_file(garbage, "cc", errors)) == [] and errors.counts["bad_warc"] == 2


WIKI = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">
  <siteinfo><sitename>Wikipedia</sitename><base>https://en.wikipedia.org/wiki/Main_Page</base></siteinfo>
  <page><title>Anarchism</title><ns>0</ns><id>12</id><revision><id>1</id>\
<text xml:space="preserve">{{Short description|Political philosophy}}
{{Infobox ideology|name=Anarchism|image=x.png}}
'''Anarchism''' is a [[political philosophy]] and [[Social movement|movement]] that is skeptical of authority.\
&lt;ref&gt;{{cite book|title=Secret}}&lt;/ref&gt;
[[File:Flag.svg|thumb|A flag caption]]
== History ==
It began in the ''19th century''.&lt;ref name="a"/&gt;
{| class="wikitable"
|-
| cell one || cell two
|}
See also [[Peter Kropotkin]].
[[Category:Political ideologies]]</text></revision></page>
  <page><title>AccessibleComputing</title><ns>0</ns><id>10</id><redirect title="Computer accessibility"/>\
<revision><id>2</id><text xml:space="preserve">#REDIRECT [[Computer accessibility]]</text></revision></page>
  <page><title>Talk:Anarchism</title><ns>1</ns><id>13</id>\
<revision><id>3</id><text xml:space="preserve">talk page</text></revision></page>
  <page><title>Albedo</title><ns>0</ns><id>39</id><revision><id>4</id><text xml:space="preserve">\
'''Albedo''' is the fraction of [[sunlight]] that is [[Diffuse reflection|diffusely reflected]].\
</text></revision></page>
</mediawiki>"""


def test_wikipedia_bz2(tmp_path):
    p = tmp_path / "enwiki-pages-articles.xml.bz2"
    p.write_bytes(bz2.compress(WIKI.encode()))
    errors = ErrorLog()
    docs = list(read_file(p, "wiki", errors))
    assert [d.title for d in docs] == ["Anarchism", "Albedo"]
    a = docs[0].text
    assert "Anarchism is a political philosophy and movement that is skeptical of authority." in a
    assert "History" in a and "It began in the 19th century." in a and "See also Peter Kropotkin." in a
    for gone in ("Short description", "Infobox", "cite", "Secret", "caption", "cell one", "Category",
                 "{{", "[[", "<ref"):
        assert gone not in a, gone
    assert docs[1].text == "Albedo is the fraction of sunlight that is diffusely reflected."
    assert docs[0].url == "https://en.wikipedia.org/wiki/Anarchism"
    assert not errors.counts


def test_wikipedia_malformed_xml_keeps_earlier_pages(tmp_path):
    p = tmp_path / "bad.xml.bz2"
    broken = WIKI.replace("<page><title>Albedo</title>", "<page><title>Albedo</titl>")
    p.write_bytes(bz2.compress(broken.encode()))
    errors = ErrorLog()
    docs = list(read_file(p, "wiki", errors))
    assert [d.title for d in docs] == ["Anarchism"]
    assert errors.counts["bad_xml"] == 1 and "line" in errors.entries[0]["offset"]


def test_jsonl_webtext_and_bad_lines(tmp_path):
    p = tmp_path / "webtext.jsonl"
    good = [{"url": f"http://r{i}.com", "text": f"text {i} ü", "score": i} for i in range(4)]
    lines = [json.dumps(good[0]).encode(), b'{"url": "x", "text": "unterminated', json.dumps(good[1]).encode(),
             b'{"text": "bad \xff\xfe utf8"}', json.dumps(good[2]).encode(), b'{"no_text": 1}',
             b"\x00\x01\x02\x89PNG garbage", b'{"text": "lone \\ud800 surrogate"}',
             json.dumps(good[3], ensure_ascii=False).encode()]
    p.write_bytes(b"\n".join(lines) + b"\n")
    errors = ErrorLog()
    docs = list(read_file(p, "webtext", errors))
    assert [(d.url, d.text, d.meta["score"]) for d in docs] == [(g["url"], g["text"], g["score"]) for g in good]
    assert errors.counts == {"bad_json": 1, "invalid_utf8": 2, "bad_record": 1, "invalid_unicode": 1}
    offsets = {e["kind"]: e for e in errors.entries}
    assert offsets["bad_json"]["offset"] == len(lines[0]) + 1 and "line 2" in offsets["bad_json"]["message"]
    with pytest.raises(InputError, match=r"webtext.jsonl: offset \d+: bad_json: line 2"):
        list(read_file(p, "webtext", ErrorLog(strict=True)))


def test_jsonl_gz_truncated(tmp_path):
    p = tmp_path / "g.jsonl.gz"
    data = b"".join(json.dumps({"text": f"document number {i} " * 20}).encode() + b"\n" for i in range(300))
    p.write_bytes(gzip.compress(data)[:-200])
    errors = ErrorLog()
    docs = list(read_file(p, "x", errors))
    assert 0 < len(docs) < 300 and errors.counts["truncated"] == 1


def test_parquet_roundtrip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    p = tmp_path / "d.parquet"
    rows = {"id": [f"r{i}" for i in range(2500)], "text": [f"row {i} text" for i in range(2500)],
            "url": [f"http://p{i}.org" for i in range(2500)]}
    pq.write_table(pa.table(rows), p, row_group_size=700)
    docs = list(read_file(p, "pq", ErrorLog()))
    assert [d.text for d in docs] == rows["text"] and [d.id for d in docs] == rows["id"]
    assert docs[5].url == "http://p5.org"
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(os.urandom(500))
    errors = ErrorLog()
    assert list(read_file(bad, "pq", errors)) == [] and errors.counts["bad_parquet"] == 1


def test_books_txt_and_empty_files(tmp_path):
    (tmp_path / "books").mkdir()
    b1 = "CHAPTER ONE\n\nIt was a dark night.\n"
    (tmp_path / "books" / "moby.txt").write_text(b1, encoding="utf-8")
    docs = list(read_file(tmp_path / "books" / "moby.txt", "books1", ErrorLog()))
    assert len(docs) == 1 and docs[0].text == b1 and docs[0].title == "moby"
    errors = ErrorLog()
    for name in ("e.txt", "e.jsonl", "e.warc.gz", "e.xml.bz2", "e.parquet"):
        (tmp_path / name).write_bytes(b"")
        assert list(read_file(tmp_path / name, "s", errors)) == []
    assert errors.counts["empty_file"] == 5
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok text \xc3\x28 more")
    assert list(read_file(bad, "s", errors)) == [] and errors.counts["invalid_utf8"] == 1
    assert errors.entries[-1]["offset"] == 8


def test_wikitext_links_keep_text():
    assert wikitext_to_text("See [[Paris|the capital]] and [[Lyon]].{{citation needed}}") == \
        "See the capital and Lyon."
