"""Small generated corpora in the real formats, shared by the data_tools tests."""
import json
import random

import pytest

WORDS = ("the be to of and a in that have it for not on with he as you do at this but his by from "
         "they we say her she or an will my one all would there their what so up out if about who get "
         "which go me when make can like time no just him know take people into year your good some "
         "could them see other than then now look only come its over think also back after use two how "
         "our work first well way even new want because any these give day most us river mountain "
         "garden village teacher market window history science music letter morning winter summer "
         "island kitchen forest doctor engine bridge harbor library painter farmer soldier student "
         "valley station museum theater factory journey weather ocean castle meadow pencil blanket "
         "carried walked opened studied painted built visited noticed remembered followed answered "
         "quickly slowly carefully quietly early late often never always together almost nearly").split()


def sentence(rng, n=None):
    n = n or rng.randint(8, 16)
    w = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(w).capitalize() + "."


def english_doc(rng, paragraphs=3):
    return "\n".join(" ".join(sentence(rng) for _ in range(rng.randint(3, 5)))
                     for _ in range(paragraphs))


@pytest.fixture
def rng():
    return random.Random(1234)


@pytest.fixture
def make_doc():
    return english_doc


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return path


@pytest.fixture
def jsonl_writer():
    return write_jsonl
