"""Checks that an evaluation set is written apart from the training corpus.

A held-out figure means something only if the held-out texts are not the training texts in
other clothes. `near_duplicates` finds, for each evaluation text, the corpus text that shares
the most with it, after normalising both (Unicode NFKC, case, accents, punctuation and spaces
removed): an exact match of the normalised texts, or a text that contains at least
`MAX_SHARED` of the evaluation text's word `N`-grams. `modstream models build` refuses to
evaluate on a set with any such text.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

N = 3  # word n-grams
MAX_SHARED = 0.4  # share of an evaluation text's n-grams that one corpus text may contain


@dataclass(frozen=True)
class Overlap:
    text: str
    corpus_text: str
    shared: float  # share of the text's n-grams in the corpus text; 1.0 for a normalised exact match


def normalise(text: str) -> str:
    """Words only, without case or accents; a text without words (emoji only) keeps its symbols,
    so that two different emoji-only posts are not taken for the same text."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = " ".join(re.findall(r"\w+", letters))
    if words:
        return words
    return "".join(c for c in letters if not c.isspace() and unicodedata.category(c) not in ("Mn", "Cf"))


def ngrams(words: Sequence[str], n: int = N) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def near_duplicates(texts: Sequence[str], corpus: Sequence[str]) -> list[Overlap]:
    """The texts of `texts` too close to a text of `corpus`, with the closest one."""
    normal = [normalise(t) for t in corpus]
    exact = {n: t for n, t in zip(normal, corpus, strict=True)}
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, n in enumerate(normal):
        for gram in ngrams(n.split()):
            index[gram].append(i)
    found = []
    for text in texts:
        key = normalise(text)
        if key in exact:
            found.append(Overlap(text, exact[key], 1.0))
            continue
        grams = ngrams(key.split())
        counts = Counter(i for gram in grams for i in index.get(gram, ()))
        if counts:
            best, shared = counts.most_common(1)[0]
            if shared / len(grams) >= MAX_SHARED:
                found.append(Overlap(text, corpus[best], shared / len(grams)))
    return found
