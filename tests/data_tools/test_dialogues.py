"""Dialogue threads: reconstruction from mail headers and from parent ids (orphans, cycles and
duplicate ids counted, never fatal), root-to-leaf sessions, and DialoGPT's filters."""
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from data_tools.dialogues import (
    DialogueFilter,
    build_forest,
    clean_session,
    read_mail,
    read_reddit,
    read_turn_lists,
    sessions,
)


def _paths(forest):
    return sorted(tuple(m.id for m in s) for s in sessions(forest))


def test_mail_threads_from_headers(tmp_path):
    msgs = {
        "a": ("<a@x>", "", "", "Has anyone seen the launch of the new probe this week?"),
        "b": ("<b@x>", "<a@x>", "<a@x>", "> Has anyone seen the launch\nIn article <a@x> bob writes:\n"
              "Yes, it went up on Tuesday and the pictures are great.\n-- \nBob's signature"),
        "c": ("<c@x>", "<a@x> <b@x>", "", "I missed it, is there a recording of the launch?"),
        "d": ("<d@x>", "<a@x>", "<a@x>", "It was delayed by a day because of the weather."),
    }
    for name, (mid, refs, irt, body) in msgs.items():
        head = f"From: {name}@x\nSubject: probe\nMessage-ID: {mid}\n"
        head += (f"References: {refs}\n" if refs else "") + (f"In-Reply-To: {irt}\n" if irt else "")
        (tmp_path / name).write_text(head + "\n" + body + "\n")
    forest = build_forest(read_mail(sorted(tmp_path.iterdir())))
    assert _paths(forest) == [("<a@x>", "<b@x>", "<c@x>"), ("<a@x>", "<d@x>")]
    b = forest.messages["<b@x>"].text
    assert b == "Yes, it went up on Tuesday and the pictures are great."  # quote, intro and signature gone


def test_reddit_trees_orphans_cycles_duplicates(tmp_path):
    rows = [{"id": "s1", "title": "What is your favourite book?", "selftext": ""},
            {"id": "c1", "parent_id": "t3_s1", "body": "The one I read last summer."},
            {"id": "c2", "parent_id": "t1_c1", "body": "Which one was that?"},
            {"id": "c3", "parent_id": "t3_s1", "body": "Anything by that author."},
            {"id": "c3", "parent_id": "t3_s1", "body": "a duplicate id"},
            {"id": "c4", "parent_id": "t1_gone", "body": "a reply to a deleted comment"},
            {"id": "c5", "parent_id": "t1_c6", "body": "one half of a loop"},
            {"id": "c6", "parent_id": "t1_c5", "body": "the other half"}]
    path = tmp_path / "rc.jsonl"
    broken = '{"id": "c7", "body": "cut\n[1, 2]\n{"body": "no id"}\n'  # a cut line, a non-object, no id
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + broken)
    bad = Counter()
    forest = build_forest(read_reddit(path, bad))
    assert bad == Counter(bad_record=3)  # a cut line, a JSON list, an object without id: skipped
    assert forest.counts == Counter(duplicate_id=1, orphan=1, cycle=1)
    assert _paths(forest) == sorted([("t3_s1", "t1_c1", "t1_c2"), ("t3_s1", "t1_c3"), ("t1_c4",),
                                     ("t1_c5", "t1_c6")])


def test_turn_lists(tmp_path):
    y = tmp_path / "c.yml"
    y.write_text("categories: [x]\nconversations:\n- - Hello there\n  - Hi, how are you?\n"
                 "- - 你好\n  - 你好，很高兴认识你\n")
    assert list(read_turn_lists(y)) == [["Hello there", "Hi, how are you?"], ["你好", "你好，很高兴认识你"]]
    j = tmp_path / "d.jsonl"
    j.write_text(json.dumps({"turns": ["a b", "c d"]}) + "\n" + '{"turns": "x"}\n{"turn\n')
    bad = Counter()
    assert list(read_turn_lists(j, bad)) == [["a b", "c d"]] and bad == Counter(bad_record=2)


def test_orphan_reply_gets_its_parent_from_the_quote(tmp_path):
    """A Usenet reply whose parent is missing from the input but quoted in it becomes a two-turn
    session (the quote, then the reply); an orphan that quotes nothing stays a lone root."""
    (tmp_path / "r").write_text("From: r@x\nMessage-ID: <r@x>\nReferences: <gone@x>\n\n"
                                "In article <gone@x> ann writes:\n> Is the probe still sending\n> pictures home?\n"
                                ">> an older quote\nYes, every day since March.\n")
    (tmp_path / "s").write_text("From: s@x\nMessage-ID: <s@x>\nReferences: <gone2@x>\n\nNo quote in this one.\n")
    forest = build_forest(read_mail(sorted(tmp_path.iterdir())))
    assert forest.counts == Counter(parent_from_quote=1, orphan=1)
    turns = sorted([m.text for m in s] for s in sessions(forest))
    assert turns == [["Is the probe still sending pictures home?", "Yes, every day since March."],
                     ["No quote in this one."]]


EN = DialogueFilter()
ZH = DialogueFilter(language="zh", offensive=frozenset({"笨蛋"}))


@pytest.mark.parametrize("filt, source, keep, drop, reason", [
    (EN, ["hi"], "I think it is a good idea.", "[deleted]", "deleted"),
    (EN, ["hi"], "I think it is a good idea.", "see https://example.org/page for it", "url"),
    (EN, ["see www.example.com"], None, "I think it is a good idea.", "url"),
    (EN, ["hi"], "I think it is a good idea.", "I am a bot and this action was performed automatically", "bot"),
    (EN, ["hi"], "I think it is a good idea.", "the " + "word " * 200, "too_long"),
    (EN, ["hi"], "I think it is a good idea.", "lol", "too_short_or_bland"),
    (EN, ["hi"], "I think it is a good idea.", "go go go team go go go team go go go team", "repeated_3gram"),
    (EN, ["hi"], "I think it is a good idea.", "Bonjour mes amis, comment allez-vous", "not_language"),
    (DialogueFilter(offensive=frozenset({"idiot"})), ["hi"], "I think it is a good idea.", "you are an idiot",
     "offensive"),
    (ZH, ["你好"], "我也很高兴认识你", "hello my friend how are you", "not_language"),
    (ZH, ["你好"], "我也很高兴认识你", "你是笨蛋吧", "offensive"),
])
def test_every_filter_keeps_and_drops(filt, source, keep, drop, reason):
    if keep is not None:
        assert filt.check(source, keep) is None, keep
    if drop is not None:
        assert filt.check(source, drop) == reason


def test_repeated_3gram_needs_three_repeats():
    assert EN.check(["hi"], "go go go team go go go team") is None  # twice is fine
    assert EN.check(["hi"], "go go go team go go go team go go go") == "repeated_3gram"


def test_clean_session_cuts_at_the_first_bad_turn():
    counts = Counter()
    assert clean_session(["How was the game?", "It was a great game for us.", "lol", "we won"], EN, counts) == \
        ["How was the game?", "It was a great game for us."]
    assert clean_session(["How was the game?", "[removed]"], EN, counts) is None
    assert counts == Counter(too_short_or_bland=1, deleted=1)


def test_build_dialogues_masks_exactly_the_responses(tmp_path):
    """Shards from chatterbot-corpus's English conversations: the mask sidecar has the text shard's
    sizes and is 1 on exactly the tokens of turns 2..n (each with its EOD)."""
    import chatterbot_corpus

    from data_tools.build_dialogues import main
    from data_tools.tokenizer import TokenizerConfig, train
    from megagpt.data.indexed import IndexedDataset
    from megagpt.data.tokenizer import Tokenizer

    ymls = sorted((Path(chatterbot_corpus.__file__).parent / "data" / "english").glob("*.yml"))
    convs = [c for y in ymls for c in read_turn_lists(y)]
    tok_path = train([" ".join(t for c in convs for t in c)], tmp_path / "tok.model",
                     TokenizerConfig(vocab_size=600, sample_bytes=2_000_000))
    tok = Tokenizer(tok_path)
    for reverse in (False, True):
        name = "bwd" if reverse else "fwd"
        args = ["--turns", *map(str, ymls), "--tokenizer", str(tok_path), "--out", str(tmp_path), "--name", name]
        assert main(args + (["--reverse"] if reverse else [])) == 0
        rep = json.loads((tmp_path / f"{name}_report.json").read_text())
        text = IndexedDataset(tmp_path / f"{name}_text_document")
        mask = IndexedDataset(tmp_path / f"{name}_mask_document")
        assert rep["sessions_kept"] == len(text) == len(mask) > 100 and rep["sessions_in"] == len(convs)
        assert sum(rep["dropped_or_cut"].values()) > 0
        for i in range(0, len(text), 37):
            ids, m = text[i].tolist(), mask[i].tolist()
            assert len(ids) == len(m) and ids[-1] == tok.eod_id
            first = ids.index(tok.eod_id) + 1  # the opening turn and its EOD are context
            assert m == [0] * first + [1] * (len(ids) - first)


def test_heldout_threads_are_the_same_forward_and_reverse(tmp_path):
    """--heldout takes whole threads (every session of an opening turn) out of both the forward
    and the reversed shards, and writes them front to back."""
    from data_tools.build_dialogues import main, split_heldout
    from data_tools.tokenizer import TokenizerConfig, train
    from megagpt import jsonl
    from megagpt.data.indexed import IndexedDataset

    convs = [[f"opening number {i} about the weather", f"a reply {j} to it", "and one more turn"]
             for i in range(30) for j in range(3)]
    train_s, held = split_heldout(convs, 10)
    assert len(held) == 12 and len(train_s) == 78  # four whole threads of three
    assert not {s[0] for s in held} & {s[0] for s in train_s}
    src = tmp_path / "c.jsonl"
    jsonl.write(src, ({"turns": c} for c in convs))
    tok = train([" ".join(t for c in convs for t in c)], tmp_path / "tok.model",
                TokenizerConfig(vocab_size=300, sample_bytes=1_000_000))
    for name, extra in (("fwd", []), ("bwd", ["--reverse"])):
        assert main(["--turns", str(src), "--tokenizer", str(tok), "--out", str(tmp_path), "--name", name,
                     "--heldout", "10", *extra]) == 0
        assert len(IndexedDataset(tmp_path / f"{name}_text_document")) == 78
    fwd, bwd = ([o["turns"] for _, _, o in jsonl.objects(tmp_path / f"{n}_heldout.jsonl")] for n in ("fwd", "bwd"))
    assert fwd == bwd == held


USENET = Path(__file__).parent / "usenet"  # four real posts from the 20 Newsgroups sample in gensim's wheel


def test_parents_rebuilt_from_real_quotes():
    """Each reply whose parent is missing gets the parent as it quoted it: a '> >' line is a
    second-level quote (not the parent's text), the parent's own attribution line is dropped, and
    two replies to one missing post each keep the part they quoted."""
    forest = build_forest(read_mail(sorted(USENET.iterdir())))
    assert forest.counts == Counter(parent_from_quote=4)
    pairs = {s[1].text.split()[0]: s[0].text for s in sessions(forest)}
    assert len(pairs) == 4 and all(len(s) == 2 for s in sessions(forest))
    # post 129: "> >Adaptation Trainer (PAT)..." quotes the grandparent
    assert pairs["When"] == "Now is that an aptly named person or what?"
    # post 0: the quoted parent opened with its own "In article <16BA7F16C...> ... writes:"
    assert pairs["Another"] == ("I didn't have time to read the rest of the posting, but I had to respond to this. "
                                "I am absolutely NOT a \"Messianic Jew\".")
    # posts 160 and 197 answer the same missing <1qn4bgINN4s7@mimi.UU.NET>, quoting different parts
    assert pairs["It"] == "Background: The Orion spacedrive was a theoretical concept."
    assert pairs["The"].startswith("Would this work? I can't see the EM radiation impelling very much momentum")
    assert not any(">" in t or "In article" in t or "writes:" in t for t in pairs.values())


def test_quote_depth():
    from data_tools.dialogues import quote_depth

    assert [quote_depth(x) for x in ("plain", "> one", ">>two", "> > two", " > >> three", ">")] == [0, 1, 2, 2, 3, 1]


QUOTES = Path(__file__).parent / "usenet_quotes"  # more real posts from the same sample, one per quoting style


@pytest.mark.parametrize("post, reply, parent", [
    # '}' quotes the parent, '}:' the grandparent, and '}Herb Huston (...) wrote:' is an attribution behind '}'
    ("post015", "Did something happen while I wasn't looking?", "Fair enough - I'm pretty well aware"),
    # '#' and '#>': the '#In article <id>, x (Frank' / "#O'Dwyer) says:" attribution over two lines
    ("post019", 'True, by "correct" I mean', "[ . . .] I am a relativist who would like to answer"),
    # tin's ': ' after 'x@y wrote:'
    ("post034", "Dave, Can you explain the purpose of your post", "Upon arriving at home, Joseph"),
    # rn's '|> ' is one level: '|> |>' and '|> >' are the grandparent
    ("post068", "So when they took the time to *copy*", "Reading newspapers to learn about this kind of stuff"),
    # nested mixtures: '> ' the parent, '> |>' the grandparent (with its 'x wrote:'), '> |>:' one more
    ("post085", "Probably because it IS rape.", "But if He/She did you would probably consider it rape."),
    # a bare '|' is the parent here, so '|>' is the grandparent
    ("post101", "Someone from NASA posted that there were very significant mass margins",
     "Has someone actually verified that mass is the predominant constraint"),
])
def test_every_quote_prefix_of_real_posts(post, reply, parent):
    """Real posts (gensim's 20 Newsgroups sample) quoting with '}', '#', ':', '|>', '> |>' and '|':
    neither the reply's turn nor the parent rebuilt from its quote holds quoted lines or attributions."""
    (m,) = read_mail([QUOTES / f"{post}.eml"])
    assert m.text.startswith(reply) and m.quoted.startswith(parent)
    for text in (m.text, m.quoted):
        assert not re.search(r"(^|\s)([>|#}]|: )\S*|In article|wrote:|writes:|says:", text), text[:300]
    forest = build_forest([m])
    assert [[t.text for t in s] for s in sessions(forest)] == [[m.quoted, m.text]]


def test_quote_depth_of_every_mark():
    from data_tools.dialogues import quote_depth

    assert [quote_depth(x) for x in ("|> one", "> |> two", "|> |> two", "#> one", ">> |> three")] == [1, 2, 2, 1, 3]
    # read alone, ':' and '}' are not quotes (no attribution before them), nor is a box row
    assert [quote_depth(x) for x in (": not one", "} not one", "| a | b |", "> |>: two")] == [0, 0, 0, 2]
