"""The word vocabulary that explains SAE latents (eq. 2): frequent, content-bearing corpus words.

Counting streams over the corpus batch by batch, so memory grows with the number of distinct
words (the corpus vocabulary), never with the number of texts. Counters from separate workers
merge by addition, so the count can be split across shards and combined.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

WORD_PATTERN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})

STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are aren't as at be because been before
    being below between both but by can can't cannot could couldn't did didn't do does doesn't doing
    don't down during each even ever every few for from further get gets got had hadn't has hasn't
    have haven't having he he'd he'll he's her here here's hers herself him himself his how how's i
    i'd i'll i'm i've if in into is isn't it it's its itself just let's like made make many may me
    might more most much must mustn't my myself never no nor not now of off on once one only or other
    ought our ours ourselves out over own really same say says shan't she she'd she'll she's should
    shouldn't since so some still such than that that's the their theirs them themselves then there
    there's these they they'd they'll they're they've thing things this those though through to too
    under until up upon us use used using very was wasn't way we we'd we'll we're we've well were
    weren't what what's when when's where where's whether which while who who's whom why why's will
    with within without won't would wouldn't yet you you'd you'll you're you've your yours yourself
    yourselves br quot amp nbsp
    """.split()
)


def tokenize_words(text: str, min_length: int = 2) -> list[str]:
    """Lower-cased letter runs (inner apostrophes kept, a trailing possessive 's dropped)."""
    words = []
    for word in WORD_PATTERN.findall(text.lower().translate(APOSTROPHES)):
        if word.endswith("'s"):
            word = word[:-2]
        if len(word) >= min_length:
            words.append(word)
    return words


class WordCounter:
    """Streaming word counts with stop words removed; ``merge`` combines shard-local counters."""

    def __init__(self, stop_words: Iterable[str] = STOP_WORDS, min_length: int = 2) -> None:
        self.stop_words = frozenset(stop_words)
        self.min_length = min_length
        self.counts: Counter[str] = Counter()
        self.texts = 0

    def update(self, texts: Iterable[str]) -> None:
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"text #{self.texts} is {type(text).__name__}, expected str")
            self.texts += 1
            self.counts.update(w for w in tokenize_words(text, self.min_length) if w not in self.stop_words)

    def merge(self, other: WordCounter) -> None:
        self.counts.update(other.counts)
        self.texts += other.texts

    def add_counts(self, words: Iterable[str], counts: Iterable[int]) -> None:
        """Fold in (word, count) rows another worker produced."""
        for word, count in zip(words, counts, strict=True):
            self.counts[word] += count

    def top(self, size: int, min_count: int) -> list[tuple[str, int]]:
        """The ``size`` most frequent words seen at least ``min_count`` times, ties broken by word."""
        if size < 1:
            raise ValueError(f"vocabulary size={size} must be at least 1")
        if min_count < 1:
            raise ValueError(f"vocabulary min_count={min_count} must be at least 1")
        frequent = [(word, count) for word, count in self.counts.items() if count >= min_count]
        frequent.sort(key=lambda row: (-row[1], row[0]))
        return frequent[:size]
