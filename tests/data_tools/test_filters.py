"""Every filter rule: one kept and one dropped example, and the drop reason counted."""
import pytest

from data_tools.clean import clean, clean_text
from data_tools.document import Document, Stats
from data_tools.filters import (
    C4Filter,
    FineWebFilter,
    GopherQuality,
    GopherRepetition,
    LanguageFilter,
    UrlConfig,
    UrlFilter,
)
from data_tools.filters.gopher import GopherQualityConfig


def run(f, text, url=None):
    stats = Stats()
    out = list(f([Document(text=text, id="d", url=url)], stats))
    return out, dict(stats.counters[f.name])


def assert_rule(f, good, bad, reason, **kw):
    kept, c = run(f, good, kw.get("good_url"))
    assert len(kept) == 1 and c == {"kept": 1} | {k: v for k, v in c.items() if k.startswith("line_")}, c
    kept, c = run(f, bad, kw.get("bad_url"))
    assert kept == [] and c.get(f"dropped:{reason}") == 1, c


def test_clean_mojibake_nfc_whitespace():
    assert clean_text("The caf\u00c3\u00a9 is open") == "The caf\u00e9 is open"      # mojibake
    assert clean_text("cafe\u0301") == "caf\u00e9"                                   # NFC
    assert clean_text("  a \t b  \r\n\n\n\n c\u00a0 ") == "a b\n\nc"
    stats = Stats()
    assert list(clean([Document(" \n\t ", "x")], stats)) == []
    assert stats.counters["clean"]["dropped:empty"] == 1


def test_language(make_doc, rng):
    f = LanguageFilter()
    de = "Die Katze sitzt auf dem Tisch und schaut aus dem Fenster, weil draussen die Vögel singen."
    assert_rule(f, make_doc(rng), de, "lang_de")


@pytest.mark.parametrize("reason,bad", [
    ("few_words", "the cat and the dog. " * 4),
    ("mean_word_length", ("a an to of be the I it at " * 12)),
    ("symbol_word_ratio", "the word and # of that # with # " * 10),
    ("bullet_lines", "\n".join(f"- the beautiful item number {i} of garden and forest" for i in range(20))),
    ("ellipsis_lines", "\n".join(f"the long story of number {i} and then the garden with the river was quiet..."
                                  for i in range(20))),
    ("alpha_words", "the and of to 1234 5678 9012 3456 7890 " * 10),
    ("stop_words", "lovely garden flowers bloom brightly during warm sunny afternoons " * 10),
])
def test_gopher_quality(make_doc, rng, reason, bad):
    assert_rule(GopherQuality(), make_doc(rng), bad, reason)


def test_gopher_quality_bounds_configurable(make_doc, rng):
    doc = make_doc(rng)
    assert_rule(GopherQuality(GopherQualityConfig(max_words=10_000)), doc,
                doc + " word" * 10_001, "many_words")


@pytest.mark.parametrize("reason,bad", [
    ("dup_para_frac", "\n\n".join(["the same paragraph of text here."] * 3 + ["other one of them."] * 2)),
    ("dup_line_frac", "\n".join(["the same line of text here now"] * 5 + [f"the line {i} of it" for i in range(5)])),
    ("top_2gram", ("the cat " * 30) + " ".join(f"w{i}" for i in range(60))),
    ("dup_5gram", "alpha bravo charlie delta echo foxtrot golfing hotel " + " ".join(f"w{i}" for i in range(100))
     + " alpha bravo charlie delta echo foxtrot golfing hotel"),
])
def test_gopher_repetition(make_doc, rng, reason, bad):
    assert_rule(GopherRepetition(), make_doc(rng), bad, reason)


def test_gopher_repetition_char_fractions(make_doc, rng):
    long_par = "a much longer paragraph of text that repeats " * 5
    bad = "\n\n".join([long_par, long_par] + [f"short {i} of the." for i in range(6)])
    assert_rule(GopherRepetition(), make_doc(rng), bad, "dup_para_char_frac")


def test_c4_document_rules(make_doc, rng):
    f = C4Filter()
    good = make_doc(rng)
    assert_rule(f, good, good + "\nLorem ipsum dolor sit amet, consectetur.", "lorem_ipsum")
    assert_rule(f, good, good + "\nfunction f() { return the value of it. }", "curly_brace")
    assert_rule(f, good, "The first sentence is here. The second sentence is here.", "few_sentences")


def test_c4_line_rules(make_doc, rng):
    good = make_doc(rng)
    bad_lines = ["Home | About | Contact", "Too short line.", "Please enable javascript to view the page.",
                 "Read our privacy policy and terms of use.", "x" * 1001 + " is a very long word indeed."]
    doc = Document(text="\n".join([bad_lines[0], good.split("\n")[0], *bad_lines[1:], *good.split("\n")[1:]]), id="d")
    stats = Stats()
    kept = list(C4Filter()([doc], stats))
    assert kept[0].text == good
    c = stats.counters["c4"]
    assert c["kept"] == 1
    for reason in ("no_terminal_punct", "few_words", "boilerplate_phrase", "long_word"):
        assert c[f"line_dropped:{reason}"] >= 1, reason
    assert c["line_dropped:boilerplate_phrase"] == 2


@pytest.mark.parametrize("reason,bad", [
    ("line_punct_ratio", "\n".join(f"menu entry number {i} of the site without end" for i in range(20))),
    ("short_line_ratio", "\n".join(["A short line."] * 1 + [f"Line {i}." for i in range(10)]
                                    + ["A much longer line that goes on and on with words."])),
    ("char_dup_ratio", "The long line that appears twice in the document, which is bad.\n" * 2
     + "Other text that is fine and long enough to count here."),
    ("list_ratio", "\n".join(f"Item {i} is here and there in the garden." for i in range(5)) + "\n" * 15
     + "End of a long text here."),
])
def test_fineweb(make_doc, rng, reason, bad):
    assert_rule(FineWebFilter(), make_doc(rng), bad, reason)


def test_url_blocklist(tmp_path, make_doc, rng):
    bl = tmp_path / "block.txt"
    bl.write_text("# adult and spam domains\nbad.example.com\n")
    f = UrlFilter(UrlConfig(blocklist_file=str(bl), blocked_substrings=("/casino/",)),
                  hook=lambda u: "hook_says_no" if "hook" in u else None)
    text = make_doc(rng)
    assert_rule(f, text, text, "blocked_domain", good_url="http://good.com/a", bad_url="https://www.bad.example.com/x")
    assert_rule(f, text, text, "blocked_substring", good_url="http://good.com/a", bad_url="http://ok.com/casino/1")
    assert_rule(f, text, text, "hook_says_no", good_url="http://good.com/a", bad_url="http://hook.com/")


def _phrase_doc(phrase, reps, filler_words):
    """``phrase`` repeated ``reps`` times, unique 5-character filler words in between."""
    per = filler_words // reps
    out, k = [], 0
    for _ in range(reps):
        out.append(phrase)
        out.extend(f"x{k + j:04d}" for j in range(per))
        k += per
    return " ".join(out)


@pytest.mark.parametrize("reason,bad", [
    ("top_3gram", _phrase_doc("aaaa bbbb cccc", 10, 76)),              # 2-gram 0.16, 3-gram 0.24
    ("top_4gram", _phrase_doc("aaaa bbbb cccc dddd", 10, 128)),        # 3-gram 0.15, 4-gram 0.20
    ("dup_10gram", _phrase_doc(" ".join(f"s{i:04d}" for i in range(10)), 2, 170)),  # 0.105 covered
    ("dup_line_char_frac", "\n".join(["a much longer line of text that repeats itself " * 3] * 2
                                     + [f"short line {i} of the text." for i in range(8)])),
])
def test_gopher_repetition_ngram_fractions(make_doc, rng, reason, bad):
    assert_rule(GopherRepetition(), make_doc(rng), bad, reason)


def test_c4_bad_words_and_low_language_score(make_doc, rng):
    from data_tools.filters import C4Config, LanguageConfig
    good = make_doc(rng)
    assert_rule(C4Filter(C4Config(bad_words=("garbageword",))), good,
                good + "\nThis line has a garbageword in it here.", "bad_words")
    mixed = "The cat sat. Die Katze sass. Le chat assis. El gato sentado. Il gatto seduto."
    assert_rule(LanguageFilter(LanguageConfig(languages=(), min_score=0.99)), good, mixed, "low_lang_score")
