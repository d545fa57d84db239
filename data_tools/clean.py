"""Cleaning step: mojibake repair (ftfy), Unicode NFC, whitespace normalisation."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from data_tools import native
from data_tools.document import Document, Stats

# the blanks a run of which becomes one space, spelled out (the compiled kernel takes the string)
_SPACES = " \t\u00a0" + "".join(map(chr, range(0x2000, 0x200B))) + "\u3000\u202f\u205f"
_SPACE_CLASS = "".join(map(re.escape, _SPACES))
# the runs whose replacement by one space changes something: not a lone plain space
_SPACE_RUNS = re.compile(f" [{_SPACE_CLASS}]+|[{''.join(map(re.escape, _SPACES[1:]))}][{_SPACE_CLASS}]*")
_BLANKS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# characters one of ftfy's fixes may act on; an ASCII segment without them comes back unchanged
_FTFY_NEEDED = re.compile(r"[^\t\n\x20-\x7e]|&")


@dataclass
class CleanConfig:
    fix_mojibake: bool = True
    nfc: bool = True
    whitespace: bool = True


_FTFY_INERT = None  # (characters one of ftfy's fixers rewrites, its mojibake test), built on first use


def _ftfy_inert():
    """What decides, exactly, that ``ftfy.fix_and_explain`` returns a segment unchanged: none of the
    characters its character-level fixers act on (taken from ftfy's own tables: HTML's '&', C1
    controls, ligatures, width forms, curly quotes, line separators, surrogates, terminal escapes,
    control characters) and no mojibake by its ``is_bad`` (the gate of its encoding fix)."""
    global _FTFY_INERT
    if _FTFY_INERT is None:
        from ftfy import chardata, fixes
        from ftfy.badness import is_bad

        chars = set("&\r\u2028\u2029\x85\x1b") | {chr(c) for c in range(0x80, 0xA0)}
        for table in (chardata.LIGATURES, chardata.WIDTH_MAP, chardata.CONTROL_CHARS):
            chars.update(map(chr, table))
        pattern = "[" + "".join(map(re.escape, sorted(chars))) + "]|" + "|".join(
            r.pattern for r in (chardata.SINGLE_QUOTE_RE, chardata.DOUBLE_QUOTE_RE, fixes.SURROGATE_RE))
        trigger = _mojibake_trigger()
        _FTFY_INERT = (re.compile(pattern), lambda s: trigger.search(s) is not None and is_bad(s))
    return _FTFY_INERT


def _mojibake_trigger() -> re.Pattern:
    """A class of characters every match of ftfy's mojibake pattern (``badness.BADNESS_RE``, the
    regex ``is_bad`` searches) consumes at least one of: for each alternative of the pattern, the
    characters of one item it must match (a literal or a set of literals and ranges, not under a
    repeat), the item least likely in real text (fewest letters, lowercase counted heaviest, so
    'É' or '€' rather than 'é'). A segment without any of them has no mojibake, and ``is_bad``, at
    ~200 ns a character, is not run on it. Read from ftfy's own pattern; where its shape is not
    the expected one (another ftfy), the class matches every character."""
    from ftfy.badness import BADNESS_RE, is_bad

    try:
        from re import _constants as sc
        from re import _parser as sp
    except ImportError:  # Python 3.10
        import sre_constants as sc
        import sre_parse as sp

    every = re.compile(r"[\s\S]")
    if BADNESS_RE.flags & re.IGNORECASE or not {"BADNESS_RE", "search"} <= set(is_bad.__code__.co_names):
        return every  # is_bad is not (only) this pattern's search: no shortcut
    tree = sp.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    alternatives = tree.data[0][1][1] if len(tree.data) == 1 and tree.data[0][0] is sc.BRANCH else [tree]

    def literals(item) -> set[int] | None:
        op, av = item
        if op is sc.LITERAL:
            return {av}
        if op is not sc.IN:
            return None
        out = set()
        for o, a in av:
            if o is sc.LITERAL:
                out.add(a)
            elif o is sc.RANGE:
                out.update(range(a[0], a[1] + 1))
            else:  # a negation or a category (\s, \w): could be anything
                return None
        return out

    def weight(chars: set[int]) -> int:
        cat = [unicodedata.category(chr(c)) for c in chars]
        return sum(10 if k == "Ll" else 3 if k == "Lu" else 1 for k in cat) + 1000 * any(c < 128 for c in chars)

    trigger: set[int] = set()
    for alternative in alternatives:
        items = [c for c in map(literals, alternative.data) if c]
        if not items:
            return every
        trigger |= min(items, key=weight)
    return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(trigger)) + "]")


def _ftfy_would_keep(segment: str, normalization: str | None) -> bool:
    acted_on, is_bad = _ftfy_inert()
    return (acted_on.search(segment) is None and not is_bad(segment)
            and (normalization is None or unicodedata.is_normalized(normalization, segment)))


def fix_text(text: str, normalization: str | None = "NFC") -> str:
    """``ftfy.fix_text(text, normalization=...)``, segment by segment exactly as ftfy walks the
    text (a line, or ``max_decode_length`` characters, at a time; HTML unescaping off from the
    first segment holding '<'), but handing ftfy only the segments it could change: plain ASCII
    lines without '&', escapes or control characters, most of real text, are taken as they are, and
    so are lines that ``_ftfy_would_keep`` shows ftfy would return unchanged."""
    import ftfy

    config = ftfy.TextFixerConfig(normalization=normalization, explain=False)
    no_html = config._replace(unescape_html=False) if config.unescape_html == "auto" else config
    chunk, first_lt = config.max_decode_length, text.find("<")
    out, pos, n = [], 0, len(text)
    # jump from one segment that needs ftfy to the next: the segment holding a match is its line,
    # or, in a line longer than max_decode_length, that line's piece of the match
    while (m := _FTFY_NEEDED.search(text, pos)) is not None:
        line_start = text.rfind("\n", 0, m.start()) + 1
        line_end = text.find("\n", m.start()) + 1 or n
        start = line_start + (m.start() - line_start) // chunk * chunk
        end = min(start + chunk, line_end)
        out.append(text[pos:start])
        segment = text[start:end]
        if _ftfy_would_keep(segment, normalization):  # most lines with accents or dashes
            out.append(segment)
        else:
            # HTML unescaping is off from the first segment holding '<' on, that segment included
            out.append(ftfy.fix_and_explain(segment, no_html if 0 <= first_lt < end else config)[0])
        pos = end
    out.append(text[pos:])
    return "".join(out)


_CONTROL_BYTES = bytes(c for c in range(128) if _CONTROL.match(chr(c)))
_CONTROLS = _CONTROL_BYTES.decode()  # the same set as a string, for the compiled kernel


def _shrink(b: bytes, run: bytes, to: bytes) -> bytes:
    while run in b:
        b = b.replace(run, to)
    return b


def _ascii_whitespace(text: str) -> str:
    """The whitespace normalisation below for ASCII text, with bytes operations (each a memchr-speed
    pass): once the controls are gone the only blanks left are ' ', tab and the line breaks."""
    b = text.encode().replace(b"\r\n", b"\n").replace(b"\r", b"\n").translate(None, _CONTROL_BYTES)
    b = _shrink(b.replace(b"\t", b" "), b"  ", b" ")  # every run of blanks is one space now
    b = b.replace(b" \n", b"\n").replace(b"\n ", b"\n")  # each line stripped
    return _shrink(b, b"\n\n\n", b"\n\n").strip().decode()


def clean_text(text: str, cfg: CleanConfig = CleanConfig()) -> str:
    if cfg.fix_mojibake and not text.isascii():
        # ftfy only matters for non-ASCII text; skipping it for ASCII saves most of its cost
        text = fix_text(text, "NFC" if cfg.nfc else None)
    elif cfg.nfc and not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if cfg.whitespace and native.kernels is not None:  # the steps below in one compiled pass
        return native.kernels.normalize_whitespace(text, _SPACES, _CONTROLS)
    if cfg.whitespace and text.isascii():
        return _ascii_whitespace(text)
    if cfg.whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        # every run of spaces becomes one space (one pass over the whole text), then each line's
        # ends are stripped
        text = "\n".join([line.strip() for line in _SPACE_RUNS.sub(" ", text).split("\n")])
        text = _BLANKS.sub("\n\n", text).strip()
    return text


class Clean:
    """Step: cleaned documents (``clean_text``); ones left empty are dropped with reason ``empty``."""
    name = "clean"

    def __init__(self, cfg: CleanConfig = CleanConfig()):
        self.cfg = cfg

    def __call__(self, docs: Iterator[Document], stats: Stats) -> Iterator[Document]:
        for doc in docs:
            before = doc.text
            doc.text = clean_text(doc.text, self.cfg)
            if doc.text != before:
                stats.count(self.name, "changed")
            if not doc.text:
                stats.count(self.name, "dropped:empty")
                continue
            stats.count(self.name, "kept")
            yield doc


clean = Clean()  # the step with the default configuration: ``clean(docs, stats)``
