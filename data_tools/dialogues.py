"""Conversation threads -> dialogue sessions, with DialoGPT's filters (Zhang et al. 2020, section 2).

Three kinds of input become the same thing, a forest of messages with parent links:
  * mail / Usenet messages (``Message-ID``, ``References``, ``In-Reply-To``), one RFC 822 message
    per file or an mbox;
  * Reddit-style JSON lines (``id``, ``parent_id`` with its ``t1_``/``t3_`` prefix, ``body``);
  * plain dialogues (chatterbot-corpus YAML ``conversations``, or JSONL ``{"turns": [...]}``),
    which are already linear.
Every root-to-leaf path of a tree is a session. A mail reply whose parent is not in the input but
which quotes it (``> `` lines, or ``|>``, ``#``, ``:``, ``}`` ones: see ``quote_levels``) gets that parent back
from the quote, as its first turn; other orphans start their own tree, duplicate ids keep the first
message, and a cycle is broken where it closes; each is counted, none stops the run.
"""
from __future__ import annotations

import email
import email.policy
import json
import mailbox
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Usenet quotes a line with '>' and, depending on the newsreader, with '|' or rn's '|> ', '#', tin's
# ': ' or '}', nested in any mixture ('> |>', '}:', '#>>'); a line is quoted when its first
# character past any indentation is such a mark that its body quotes with (``quote_levels``)
_MARKS = ">|#:}"
_MARK = re.compile(r"^\s*([>|#:}])")
_OVER_QUOTE = re.compile(r"^\s*[|#] ?>")  # '|>', '# >': the mark quoting a '>' quote
# the attribution a quote opens with: "In article <id>, x writes:", "On <date>, x wrote:", and
# "x@y wrote:" or "Name (x@y) says:" (prose may end a line in "says:" too: an address or a closing
# bracket before it marks an attribution, and so does an "In article" line before it)
_QUOTE_INTRO = re.compile(r"^(In article|On .{0,80}wrote:|.{0,80}\bwrites?:\s*$"
                          r"|.{0,80}[@)>].{0,80}\b(?:wrote|says):\s*$)", re.I)
_INTRO_END = re.compile(r"^.{0,80}\b(?:writes?|wrote|says):\s*$", re.I)
_URL = re.compile(r"(https?://|www\.)\S+|\b\S+\.(com|org|net|edu|gov)\b", re.I)
_CJK = re.compile(r"[\u4e00-\u9fff]")

# the most frequent English words (function words): a response with none of them is not English
# prose (DialoGPT drops responses without any of the top-50 English words)
ENGLISH_COMMON = set("""the be to of and a in that have i it for not on with he as you do at this but his by from
they we say her she or an will my one all would there their what so up out if about who get which go me when
make can like time no just him know take people into year your good some could them see other than then now
look only come its over think also back after use two how our work first well way even new want because any
these give day most us is are was were am""".split())
# the most frequent Chinese characters (function characters of everyday text, from common character
# frequency lists): a Chinese response with none of them is dropped the same way
CHINESE_COMMON = set("的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家学对"
                     "可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同"
                     "三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定"
                     "女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化"
                     "由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应"
                     "路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许"
                     "八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带"
                     "花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻"
                     "程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形"
                     "委早房音火际则首单吗")
BLAND = {"i don't know", "i dont know", "idk", "lol", "ok", "okay", "yes", "no", "thanks", "thank you", "haha",
         "me too", "same", "this", "what", "ya", "yep", "nope", "agreed", "exactly", "true", "nice", "cool"}
BOT_MARKS = re.compile(r"\b(i am a bot|i'm a bot|this (comment|message) was (posted|written) by a bot|"
                       r"action was performed automatically|beep boop)\b", re.I)


@dataclass
class Message:
    id: str
    parent: str | None
    text: str
    author: str = ""
    where: str = ""  # file:line or file, for reports
    quoted: str = ""  # mail: the parent's text as this reply quotes it (its first-level quoted lines)


@dataclass
class Forest:
    """Messages by id with children lists, plus the anomalies met while linking them."""

    messages: dict[str, Message] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def build_forest(messages: Iterable[Message]) -> Forest:
    f = Forest()
    for m in messages:
        if m.id in f.messages:
            f.counts["duplicate_id"] += 1
            continue
        f.messages[m.id] = m
    for m in list(f.messages.values()):
        if m.parent is not None and m.parent not in f.messages and m.quoted:
            # each reply gets the parent as it quoted it: replies to one missing post quote different
            # parts of it, and each part is the context of that reply only
            quoted = Message(f"{m.parent} (as quoted in {m.id})", None, m.quoted, "", f"{m.where} (quoted)")
            f.messages[quoted.id] = quoted
            m.parent = quoted.id
            f.counts["parent_from_quote"] += 1
    for mid, m in f.messages.items():
        if m.parent is None:
            f.roots.append(mid)
        elif m.parent not in f.messages:
            f.counts["orphan"] += 1  # its parent is not in the input: it starts a tree
            f.roots.append(mid)
        else:
            f.children.setdefault(m.parent, []).append(mid)
    # a cycle has no root: walk what was not reached and cut each cycle at its smallest id
    reached = set()
    stack = list(f.roots)
    while stack:
        mid = stack.pop()
        if mid in reached:
            continue
        reached.add(mid)
        stack.extend(f.children.get(mid, []))
    for mid in sorted(f.messages):
        if mid in reached:
            continue
        cycle, cur = [], mid
        seen = set()
        while cur not in seen and cur in f.messages and cur not in reached:
            seen.add(cur)
            cycle.append(cur)
            cur = f.messages[cur].parent
        if cur in seen:  # cur closes the cycle: make its smallest member a root
            ring = cycle[cycle.index(cur):]
            head = min(ring)
            parent = f.messages[head].parent
            f.children[parent].remove(head)
            f.roots.append(head)
            f.counts["cycle"] += 1
        stack = [r for r in f.roots if r not in reached]
        while stack:
            x = stack.pop()
            if x not in reached:
                reached.add(x)
                stack.extend(f.children.get(x, []))
    return f


def sessions(forest: Forest) -> Iterator[list[Message]]:
    """Every root-to-leaf path (a lone root is a one-turn session)."""
    for root in forest.roots:
        stack = [(root, [forest.messages[root]])]
        while stack:
            mid, path = stack.pop()
            kids = forest.children.get(mid, [])
            if not kids:
                yield path
            for k in reversed(kids):
                stack.append((k, path + [forest.messages[k]]))


# --- readers -------------------------------------------------------------------------------------
def quote_levels(lines: list[str]) -> dict[str, str]:
    """The quote marks a body's lines use, each with the prefix one level of quoting adds with it.
    '>' always; '|', '#', ':' and '}' where the body shows them quoting: a line '|>' or '#>' (the
    mark over a '>' quote), an attribution behind the mark ('#In article <id>, x writes:'), or the
    first line after an attribution. '|' and '#' are one level together with the '>' after them
    (rn's '|> ') where every line they start goes on with '>'; otherwise each mark is a level."""
    starts = [m.group(1) if (m := _MARK.match(line)) and not _box_row(line, m.group(1)) else "" for line in lines]
    levels, after_intro = {">": ">"}, False
    for line, mark in zip(lines, starts):
        if mark and mark not in levels and (after_intro or _attribution(line) or _OVER_QUOTE.match(line)):
            levels[mark] = mark
        if line.strip():
            after_intro = _attribution(line)
    for mark in set(levels) & set("|#"):
        if all(line.lstrip()[1:2] == ">" for line, m in zip(lines, starts) if m == mark):
            levels[mark] = mark + ">"
    return levels


def _box_row(line: str, mark: str) -> bool:
    """'|  Adda Wainwright  |  eczcaw@...  |': a row of a signature box or a table, not a quote."""
    s = line.strip()
    return mark != ">" and len(s) > 1 and s.endswith(mark) and s[1] != ">"


def _attribution(line: str, before: str = "") -> bool:
    """An attribution line (``before``: the line above it), also behind quote marks."""
    line, before = (x.lstrip(" \t" + _MARKS).strip() for x in (line, before))
    return bool(_QUOTE_INTRO.match(line) or before.startswith("In article") and _INTRO_END.match(line))


def _unquote(line: str, levels: dict[str, str]) -> str | None:
    """``line`` with one level of quoting taken off (see ``quote_levels``); None when not quoted."""
    m = _MARK.match(line)
    prefix = levels.get(m.group(1)) if m else None
    if prefix is None or not line.startswith(prefix, m.start(1)) or _box_row(line, prefix[0]):
        return None
    return line[m.start(1) + len(prefix):]


def mail_body(body: str) -> str:
    """The text a poster wrote in a plain-text body: quoted lines, the quote's introduction and
    the signature removed."""
    lines = body.splitlines()
    levels = quote_levels(lines)
    kept = []
    for i, line in enumerate(lines):
        if line.strip() == "--" or line.startswith("-- "):
            break  # signature
        if _unquote(line, levels) is None and not _attribution(line, lines[i - 1] if i else ""):
            kept.append(line)
    return " ".join(" ".join(kept).split())


def quote_depth(line: str) -> int:
    """How many levels deep a line read alone is quoted: ``>`` and ``|>`` are 1, ``>>``, ``> >`` and
    ``> |>`` are 2."""
    depth = 0
    while (line := _unquote(line, quote_levels([line]))) is not None:
        depth += 1
    return depth


def quoted_text(body: str) -> str:
    """The parent's own words as a reply quotes them, as one line of text: the quoted lines with one
    level of quoting taken off (so ``> >``, ``>>`` and ``> |>`` lines stay quotes of the
    grandparent), then read as the parent's body, which drops its quotes, its quote introduction
    (``In article <...>, X writes:``) and its signature."""
    lines = body.splitlines()
    levels = quote_levels(lines)
    return mail_body("\n".join(u for line in lines if (u := _unquote(line, levels)) is not None))


def _plain(msg) -> str:
    part = msg.get_body(preferencelist=("plain",)) if msg.is_multipart() else msg
    try:
        return str(part.get_content()) if part is not None else ""
    except (LookupError, ValueError):
        return (part.get_payload(decode=True) or b"").decode("latin-1")


def read_mail(paths: Iterable[Path]) -> Iterator[Message]:
    """Messages from files holding one RFC 822 message each, or from mbox files."""
    for p in paths:
        if p.suffix == ".mbox":
            msgs = [(f"{p}#{i}", m) for i, m in enumerate(mailbox.mbox(str(p), create=False))]
        else:
            with open(p, "rb") as f:
                msgs = [(str(p), email.message_from_binary_file(f, policy=email.policy.default))]
        for where, m in msgs:
            mid = (m.get("Message-ID") or "").strip()
            if not mid:
                continue
            refs = (m.get("References") or "").split()
            parent = (m.get("In-Reply-To") or "").strip().split()[-1:] or refs[-1:]
            body = _plain(m)  # decoded once, for the reply's own text and for its quote
            yield Message(mid, parent[0] if parent else None, mail_body(body), str(m.get("From") or ""), where,
                          quoted_text(body) if parent else "")


def read_reddit(path: Path, counts: Counter | None = None) -> Iterator[Message]:
    """Reddit dump lines: comments (``parent_id`` t1_ = a comment, t3_ = the submission) and
    submissions (``title`` + ``selftext``, no parent). A line that is not such a JSON object is
    skipped and counted as ``bad_record``."""
    counts = Counter() if counts is None else counts
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                oid = str(obj["id"])
            except (ValueError, KeyError, TypeError):
                counts["bad_record"] += 1
                continue
            if "body" in obj:
                pid = obj.get("parent_id") or ""
                yield Message("t1_" + oid, pid or None, str(obj["body"]), str(obj.get("author", "")), f"{path}:{n}")
            else:
                text = " ".join(str(x) for x in (obj.get("title"), obj.get("selftext")) if x)
                yield Message("t3_" + oid, None, text, str(obj.get("author", "")), f"{path}:{n}")


def read_turn_lists(path: Path, counts: Counter | None = None) -> Iterator[list[str]]:
    """Linear dialogues: chatterbot-corpus YAML (``conversations``) or JSONL (``{"turns": [...]}``).
    A JSONL line without a list of turns is skipped and counted as ``bad_record``."""
    counts = Counter() if counts is None else counts
    if path.suffix in (".yml", ".yaml"):
        import yaml

        for conv in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []:
            yield [str(t) for t in conv]
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    turns = json.loads(line)["turns"]
                    if not isinstance(turns, list):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    counts["bad_record"] += 1
                    continue
                yield [str(t) for t in turns]


# --- filters -------------------------------------------------------------------------------------
@dataclass
class DialogueFilter:
    """DialoGPT's rules; ``check(source, response)`` returns None (keep) or the reason to drop."""

    language: str = "en"          # "en" or "zh": which common-word list, words or characters
    max_words: int = 200
    min_words: int = 1            # responses shorter than this (in words, or characters for zh) are dropped
    offensive: frozenset = frozenset()

    def words(self, text: str) -> list[str]:
        if self.language == "zh":
            return _CJK.findall(text)
        return re.findall(r"[a-z']+", text.lower())

    def check(self, source: list[str], response: str) -> str | None:
        text = response.strip()
        if text.lower() in ("[deleted]", "[removed]"):
            return "deleted"
        if any(_URL.search(t) for t in source + [text]):
            return "url"
        if BOT_MARKS.search(text):
            return "bot"
        w = self.words(text)
        if self.language == "zh" and not w and text:
            return "not_language"  # no Chinese character at all
        if len(w) > self.max_words:
            return "too_long"
        if len(w) < self.min_words or text.lower().strip(" .!?") in BLAND:
            return "too_short_or_bland"
        grams = Counter(zip(w, w[1:], w[2:]))
        if grams and max(grams.values()) >= 3:
            return "repeated_3gram"
        common = CHINESE_COMMON if self.language == "zh" else ENGLISH_COMMON
        if not any(x in common for x in w):
            return "not_language"
        if self.offensive and any(x in self.offensive for x in (w if self.language != "zh" else [text])):
            return "offensive"
        if self.offensive and self.language == "zh" and any(o in text for o in self.offensive):
            return "offensive"
        return None


def clean_session(turns: list[str], filt: DialogueFilter, counts: Counter) -> list[str] | None:
    """The session up to (not including) the first turn that fails a filter; None when fewer
    than two turns remain. Each cut is counted under its reason."""
    kept = [turns[0].strip()] if turns and turns[0].strip() else []
    if not kept:
        counts["empty_first_turn"] += 1
        return None
    for t in turns[1:]:
        reason = filt.check(kept, t)
        if reason:
            counts[reason] += 1
            break
        kept.append(t.strip())
    return kept if len(kept) >= 2 else None
