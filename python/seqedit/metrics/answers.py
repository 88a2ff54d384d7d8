"""Judging generated answers: normalisation, prefix match, n-gram entropy (fluency).

Generation-based metrics decode greedily and ask whether the answer is *there*, the way a user
reading the output would, instead of teacher-forcing the answer's tokens (which leaks its content
and length: arXiv 2502.11177 measures single-edit success falling from 96.8% to 38.5%).
"""
from __future__ import annotations

import collections
import math
import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "“”‘’«»—–"})
_WORDS = re.compile(r"\w+|[^\w\s]")


def normalise(text: str) -> str:
    """SQuAD-style: NFKC, lower case, punctuation and articles dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def starts_with_answer(generated: str, answers: str | list[str]) -> bool:
    """True when the normalised generation begins with one normalised answer as whole words
    ("English. The…" holds "English"; "Englishman" does not)."""
    text = normalise(generated)
    for answer in [answers] if isinstance(answers, str) else answers:
        want = normalise(answer)
        if want and (text == want or text.startswith(want + " ")):
            return True
    return False


def ngram_entropy(text: str, orders: tuple[int, ...] = (2, 3),
                  weights: tuple[float, ...] = (2 / 3, 4 / 3)) -> float:
    """The fluency measure of ROME/EasyEdit: the mean over n of weightₙ·Hₙ, Hₙ the entropy
    (bits) of the n-gram distribution of the text's word tokens. Degenerate, repetitive text
    scores low. Words are split by a regex (\\w+ or one punctuation mark), not NLTK."""
    words = _WORDS.findall(text.lower())
    terms = []
    for n, w in zip(orders, weights):
        grams = collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        terms.append(w * h)
    return sum(terms) / len(terms)
