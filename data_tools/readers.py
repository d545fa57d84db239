"""Streaming readers: each yields ``Document`` records from one input file and logs bad input.

Formats: Common Crawl WET and WARC (gzip or plain, via warcio), JSONL (WebText-style url/text/score
or generic; optionally gzip), Parquet (pyarrow, read in record batches), a book per ``.txt`` file,
and MediaWiki XML dumps (``.xml.bz2``; wikitext reduced to plain text with mwparserfromhell).
Nothing is loaded whole: every reader walks its file record by record, so memory stays bounded.
A bad record is logged with file and offset and skipped; a file that cannot be read further is
logged and closed, keeping every document already read from it.
"""
from __future__ import annotations

import bz2
import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree as ET

from data_tools.document import Document, ErrorLog

FORMATS = ("wet", "warc", "jsonl", "parquet", "txt", "wiki")


def detect_format(path: str | Path) -> str:
    """Format from the file name; the one-line error says which endings are understood."""
    name = str(path).lower()
    if name.endswith((".wet.gz", ".wet")):
        return "wet"
    if name.endswith((".warc.gz", ".warc")):
        return "warc"
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt"):
        return "txt"
    if name.endswith((".xml.bz2", ".xml")) or (name.endswith(".bz2") and ".xml" in name):
        return "wiki"  # dump parts are named like enwiki-...-pages-articles1.xml-p10p30302.bz2
    raise ValueError(f"{path}: unknown input format; use one of .wet(.gz), .warc(.gz), "
                     f".jsonl(.gz), .parquet, .txt, .xml(.bz2), or pass --format {{{','.join(FORMATS)}}}.")


def list_inputs(inputs: list[str], exclude: Path | None = None) -> list[Path]:
    """Files named on the command line; a directory stands for the readable files under it
    (except those under ``exclude``: an output directory placed inside an input directory)."""
    out: list[Path] = []
    skip = Path(exclude).resolve() if exclude is not None else None
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if skip is not None and f.resolve().is_relative_to(skip):
                    continue
                if f.is_file() and not f.name.startswith("."):
                    try:
                        detect_format(f)
                        out.append(f)
                    except ValueError:
                        continue
        else:
            out.append(p)
    return out


def _open(path: Path):
    name = str(path).lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _empty(path: Path, errors: ErrorLog) -> bool:
    if os.path.getsize(path) == 0:
        errors.add(path, 0, "empty_file", "file is empty")
        return True
    return False


# --------------------------------------------------------------------------- JSONL
def read_jsonl(path: Path, source: str, errors: ErrorLog, text_key: str = "text") -> Iterator[Document]:
    """One JSON object per line; ``url``, ``title``, ``id`` and ``score`` (WebText) kept when present."""
    if _empty(path, errors):
        return
    offset = 0
    lineno = 0
    stem = path.name
    with _open(path) as f:
        while True:
            try:
                raw = f.readline()
            except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt gzip
                errors.add(path, offset, "truncated", f"line {lineno + 1}: {e}")
                return
            if not raw:
                return
            lineno += 1
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                errors.add(path, start + e.start, "invalid_utf8", f"line {lineno}: {e.reason}")
                continue
            except json.JSONDecodeError as e:
                errors.add(path, start, "bad_json", f"line {lineno}: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get(text_key), str):
                errors.add(path, start, "bad_record", f"line {lineno}: no string field '{text_key}'")
                continue
            try:  # JSON may escape a lone surrogate ("\ud800"): not text, and unwritable as UTF-8
                obj[text_key].encode("utf-8")
            except UnicodeEncodeError as e:
                errors.add(path, start, "invalid_unicode", f"line {lineno}: {e.reason} in '{text_key}'")
                continue
            meta = {"score": obj["score"]} if "score" in obj else {}
            yield Document(text=obj[text_key], id=_field(obj.get("id")) or f"{stem}:{lineno}",
                           source=source, url=_field(obj.get("url")), title=_field(obj.get("title")),
                           meta=meta)


def _field(v) -> str | None:
    """A metadata field as writable text, or None (numbers become strings; lone surrogates drop)."""
    if v is None or isinstance(v, (dict, list)):
        return None
    v = str(v)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return v


# --------------------------------------------------------------------------- Parquet
def read_parquet(path: Path, source: str, errors: ErrorLog, text_key: str = "text") -> Iterator[Document]:
    """Record batches of a Parquet file; only the columns needed are read."""
    import pyarrow.parquet as pq
    if _empty(path, errors):
        return
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a non-Parquet file
        errors.add(path, 0, "bad_parquet", str(e).splitlines()[0])
        return
    names = set(pf.schema_arrow.names)
    if text_key not in names:
        errors.add(path, 0, "bad_record", f"no column '{text_key}' (columns: {sorted(names)})")
        return
    cols = [c for c in (text_key, "id", "url", "title") if c in names]
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=cols):
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                text = data[text_key][i]
                if not isinstance(text, str):
                    errors.add(path, row, "bad_record", f"row {row}: '{text_key}' is null")
                else:
                    yield Document(text=text, id=str(data["id"][i]) if "id" in data else f"{path.name}:{row}",
                                   source=source, url=data.get("url", [None] * (i + 1))[i],
                                   title=data.get("title", [None] * (i + 1))[i])
                row += 1
    except Exception as e:
        errors.add(path, row, "bad_parquet", f"row {row}: {str(e).splitlines()[0]}")


# --------------------------------------------------------------------------- books
def read_txt(path: Path, source: str, errors: ErrorLog) -> Iterator[Document]:
    """A whole ``.txt`` file is one book; the title is the file name."""
    if _empty(path, errors):
        return
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.add(path, e.start, "invalid_utf8", e.reason)
        return
    if "\x00" in text:
        errors.add(path, text.index("\x00"), "binary", "NUL byte in a text file")
        return
    yield Document(text=text, id=path.name, source=source, title=path.stem)


# --------------------------------------------------------------------------- WARC / WET
class _HTMLText(HTMLParser):
    """Visible text of an HTML page: script/style dropped, block elements end lines."""
    SKIP = {"script", "style", "noscript", "head", "template", "svg"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
             "article", "header", "footer", "blockquote", "pre", "table", "ul", "ol", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    p = _HTMLText()
    p.feed(html)
    p.close()
    lines = (" ".join(line.split()) for line in "".join(p.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def read_warc(path: Path, source: str, errors: ErrorLog, wet: bool) -> Iterator[Document]:
    """WET ``conversion`` records (already text) or WARC ``response`` records (HTML -> text)."""
    from warcio.archiveiterator import ArchiveIterator
    if _empty(path, errors):
        return
    want = "conversion" if wet else "response"
    offset = 0
    with open(path, "rb") as f:
        it = ArchiveIterator(f)
        try:
            for rec in it:
                body = rec.content_stream().read() if rec.rec_type == want else b""
                # offset of this record; the next one starts after it (where a failure is reported)
                here = it.get_record_offset()
                offset = here + it.get_record_length()
                if rec.rec_type != want:
                    continue
                url = rec.rec_headers.get_header("WARC-Target-URI")
                rid = rec.rec_headers.get_header("WARC-Record-ID") or f"{path.name}@{here}"
                if wet:
                    try:
                        text = body.decode("utf-8")
                    except UnicodeDecodeError as e:
                        errors.add(path, here, "invalid_utf8", f"record {rid}: {e.reason}")
                        continue
                else:
                    ctype = (rec.http_headers.get_header("Content-Type") or "") if rec.http_headers else ""
                    if ctype and "html" not in ctype and not ctype.startswith("text/"):
                        continue
                    # web pages routinely carry stray bytes; replace them rather than drop the page
                    text = html_to_text(body.decode(_charset(ctype), errors="replace"))
                yield Document(text=text, id=rid.strip("<>"), source=source, url=url)
        except Exception as e:  # warcio: ArchiveLoadFailed, zlib/EOF on truncated gzip
            first = str(e).splitlines()[0] if str(e) else "unreadable"
            errors.add(path, offset, "bad_warc", f"{type(e).__name__}: {first}")
            return
    # warcio ends quietly at a truncated gzip member: bytes left after the last whole record
    size = os.path.getsize(path)
    if 0 < size - offset <= 16:  # uncompressed WARC: the record's trailing CRLFs are not counted
        with open(path, "rb") as f:
            f.seek(offset)
            if not f.read().strip():
                offset = size
    if offset < size:
        errors.add(path, offset, "bad_warc", f"truncated: {size - offset} bytes after the last whole record")


def _charset(ctype: str) -> str:
    for part in ctype.split(";"):
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            try:
                "".encode(v.strip('"'))
                return v.strip('"')
            except LookupError:
                break
    return "utf-8"


# --------------------------------------------------------------------------- Wikipedia
_DROP_TAGS = {"ref", "references", "table", "gallery", "math", "timeline", "imagemap", "score",
              "syntaxhighlight", "source", "chem", "graph", "mapframe", "templatedata", "nowiki"}
_DROP_LINK = {"file", "image", "category", "media", "wikipedia", "wp", "help", "template", "portal",
              "special", "user", "talk", "draft", "module", "wiktionary", "wikt", "s", "commons"}
_LANG_PREFIX = re.compile(r"[a-z]{2,3}(-[a-z]+)*")
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of an article: templates, refs, tables, files, categories and interlanguage
    links dropped; links keep their visible text; headings kept as lines. One walk over the parse
    tree (removing nodes one by one from mwparserfromhell's tree is quadratic on long articles)."""
    import mwparserfromhell as mw
    # refs first, by pattern: the parser leaves a ref as plain text when its markup is unbalanced
    wikitext = _REF.sub("", wikitext)
    out: list[str] = []
    _walk(mw.parse(wikitext).nodes, out, mw.nodes)
    kept, in_table = [], 0
    for line in "".join(out).replace("'''", "").replace("''", "").split("\n"):
        line = " ".join(line.split())
        # tables the parser could not structure come through as raw {| ... |} lines
        if line.startswith("{|"):
            in_table += 1
        elif line.startswith("|}"):
            in_table = max(0, in_table - 1)
        elif line.startswith("[[") and line[2:].split(":", 1)[0].strip().lower() in _DROP_LINK:
            continue  # a file/category link the parser left as text (nested markup in a caption)
        elif line and not in_table and not line.startswith(("|", "!")):
            kept.append(line)
    return "\n".join(kept)


def _walk(nodes, out, n) -> None:
    for node in nodes:
        if isinstance(node, n.Text):
            out.append(str(node.value))
        elif isinstance(node, n.Wikilink):
            title = str(node.title).strip()
            prefix, colon, _ = title.lstrip(":").partition(":")
            prefix = prefix.strip().lower()
            if colon and (prefix in _DROP_LINK or _LANG_PREFIX.fullmatch(prefix)):
                continue
            if node.text is not None:
                _walk(node.text.nodes, out, n)
            else:
                out.append(title.lstrip(":").split("#")[0] or title)
        elif isinstance(node, n.Tag):
            tag = str(node.tag).strip().lower()
            if tag in _DROP_TAGS:
                continue
            if tag in ("br", "p", "div", "li", "dd", "dt"):
                out.append("\n")
            if node.contents is not None:
                _walk(node.contents.nodes, out, n)
        elif isinstance(node, n.Heading):
            out.append("\n")
            _walk(node.title.nodes, out, n)
            out.append("\n")
        elif isinstance(node, n.ExternalLink):
            if node.title is not None:
                _walk(node.title.nodes, out, n)
        elif isinstance(node, n.HTMLEntity):
            out.append(node.normalize())
        # Template, Comment, Argument: dropped


def read_wiki(path: Path, source: str, errors: ErrorLog) -> Iterator[Document]:
    """``<page>`` elements of a MediaWiki export, main namespace only, redirects skipped."""
    if _empty(path, errors):
        return
    base_url = None
    n = 0
    with _open(path) as f:
        ctx = ET.iterparse(f, events=("start", "end"))
        root = None
        try:
            for event, el in ctx:
                tag = el.tag.rsplit("}", 1)[-1]
                if event == "start":
                    if root is None:
                        root = el
                    continue
                if tag == "base" and el.text:
                    base_url = el.text.rsplit("/", 1)[0] + "/"
                if tag != "page":
                    continue
                n += 1
                fields = {c.tag.rsplit("}", 1)[-1]: c for c in el}
                title = (fields["title"].text or "") if "title" in fields else ""
                ns = (fields["ns"].text or "0") if "ns" in fields else "0"
                pid = fields["id"].text if "id" in fields else str(n)
                rev = fields.get("revision")
                text_el = None
                if rev is not None:
                    text_el = next((c for c in rev if c.tag.rsplit("}", 1)[-1] == "text"), None)
                wikitext = text_el.text if text_el is not None and text_el.text else ""
                redirect = "redirect" in fields or wikitext.lstrip().lower().startswith("#redirect")
                if ns.strip() == "0" and not redirect and wikitext:
                    url = (base_url or "https://en.wikipedia.org/wiki/") + title.replace(" ", "_")
                    yield Document(text=wikitext_to_text(wikitext), id=f"{path.name}:{pid}",
                                   source=source, url=url, title=title)
                el.clear()
                if root is not None:
                    root.clear()  # drop finished pages so memory stays flat over a 20 GB dump
        except ET.ParseError as e:
            line, col = e.position
            errors.add(path, f"line {line} column {col}", "bad_xml", str(e))
        except (EOFError, OSError) as e:
            errors.add(path, f"page {n}", "truncated", str(e))


def read_file(path, source: str, errors: ErrorLog, fmt: str | None = None,
              text_key: str = "text") -> Iterator[Document]:
    """Documents of one input file in its format (detected from the name unless ``fmt``)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        return read_jsonl(path, source, errors, text_key)
    if fmt == "parquet":
        return read_parquet(path, source, errors, text_key)
    if fmt == "txt":
        return read_txt(path, source, errors)
    if fmt in ("wet", "warc"):
        return read_warc(path, source, errors, wet=fmt == "wet")
    if fmt == "wiki":
        return read_wiki(path, source, errors)
    raise ValueError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}.")
