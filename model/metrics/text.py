"""The field's report normalisation and tokenisation for the IU X-ray benchmark.

Every published IU X-ray number since R2Gen (Chen et al., EMNLP 2020) is computed on text cleaned by
R2Gen's `Tokenizer.clean_report_iu_xray` and, for the ground truth, re-encoded with its vocabulary:
words seen fewer than 3 times in the training reports become `<unk>`, and the id sequence
`[bos] + tokens + [eos]` is cut to `max_seq_length` = 60 ids, so at most 59 report tokens survive.
The reference that R2Gen scores is `decode(ids[1:])`: the unk-mapped, truncated tokens joined by single
spaces. Hypotheses are only cleaned (a model can only emit vocabulary words anyway).

We reproduce that exactly, because a different cleaning moves BLEU and METEOR by more than the gaps
between published models. Two deliberate differences, neither of which changes a token sequence:
the result is single-spaced (R2Gen leaves double spaces inside the cleaned string, which its
`decode` loses anyway, but pycocoevalcap's ROUGE-L splits on " " and would count empty tokens), and
blank input gives "" rather than R2Gen's lone " .".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

UNK = "<unk>"
MAX_SEQ_LENGTH = 60
"""R2Gen's `max_seq_length` for IU X-ray: ids including the leading bos (id 0)."""
MAX_REFERENCE_TOKENS = MAX_SEQ_LENGTH - 1
"""Report tokens left in a reference after R2Gen's truncation (the bos takes one slot)."""
MIN_COUNT = 3
"""R2Gen's `threshold`: a training word must occur this often to enter the vocabulary."""

# R2Gen's character class, verbatim. Its ':-\[' is a RANGE (":" to "["), so it also removes
# ; < = > ? @ and A-Z (already lower-cased), but NOT the hyphen and NOT digits: "x-ray" keeps its
# hyphen and "3.5" becomes "35". Do not "fix" it; the published numbers depend on it.
_DROPPED_CHARS = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")
_DROPPED_STRINGS = ('"', "/", "\\", "'")


def _split_sentences(text: str) -> list[str]:
    """R2Gen's `report_cleaner`: fix doubled dots and list numbering, lower-case, split at '. '."""
    for _ in range(3):  # R2Gen replaces '..' three times, so '....' and longer runs shrink too.
        text = text.replace("..", ".")
    text = text.replace("1. ", "")
    for n in "2345":
        text = text.replace(f". {n}. ", ". ")
    for n in "2345":
        text = text.replace(f" {n}. ", ". ")
    return text.strip().lower().split(". ")


def _clean_sentence(sentence: str) -> str:
    """R2Gen's `sent_cleaner`: drop quotes, slashes and punctuation; keep words, digits, hyphens."""
    for s in _DROPPED_STRINGS:
        sentence = sentence.replace(s, "")
    return _DROPPED_CHARS.sub("", sentence.strip().lower())


def normalise(text: str) -> str:
    """Clean one report the way R2Gen's `clean_report_iu_xray` does, single-spaced.

    Sentences are joined with " . " and the report ends with " .". R2Gen's filter on empty
    sentences (`sent_cleaner(sent) != []`) compares a string with a list and so never drops one:
    "limits. ." gives "limits . ." here as there. Blank text gives "".
    """
    if not text or not text.strip():
        return ""
    sentences = [_clean_sentence(s) for s in _split_sentences(text)]
    return " ".join((" . ".join(sentences) + " .").split())


def tokenize(text: str) -> list[str]:
    """The normalised report as tokens ("." is a token)."""
    return normalise(text).split()


@dataclass(frozen=True)
class Vocabulary:
    """The words a benchmark model may emit: training words seen at least `min_count` times.

    Built from the normalised training reports only, like R2Gen's `create_vocabulary`; `<unk>`
    stands for every other word.
    """

    words: frozenset[str]
    min_count: int = MIN_COUNT
    counts: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_reports(cls, train_texts: Iterable[str], min_count: int = MIN_COUNT) -> Vocabulary:
        """Count tokens of the normalised training reports and keep those seen `min_count`+ times."""
        counts = Counter(tok for text in train_texts for tok in tokenize(text))
        words = frozenset(w for w, c in counts.items() if c >= min_count)
        return cls(words=words, min_count=min_count, counts=dict(counts))

    def __contains__(self, word: object) -> bool:
        return word in self.words

    def __len__(self) -> int:
        """Vocabulary size including `<unk>`, as R2Gen counts it."""
        return len(self.words | {UNK})

    def map_unknown(self, tokens: Iterable[str]) -> list[str]:
        """Replace every token outside the vocabulary with `<unk>`."""
        return [t if t in self.words else UNK for t in tokens]

    def reference(self, text: str, max_tokens: int | None = MAX_REFERENCE_TOKENS) -> str:
        """The ground truth as R2Gen scores it: normalised, unk-mapped, cut to `max_tokens` tokens.

        R2Gen cuts `[bos] + tokens + [eos]` to 60 ids and decodes from index 1 until the first 0, so a
        long report keeps its first 59 tokens and loses its eos; a short one keeps all its tokens.
        `max_tokens=None` keeps everything.
        """
        tokens = self.map_unknown(tokenize(text))
        return " ".join(tokens if max_tokens is None else tokens[:max_tokens])


def truncate(text: str, max_tokens: int | None) -> str:
    """The first `max_tokens` whitespace tokens of `text` (all of them when None)."""
    tokens = text.split()
    return " ".join(tokens if max_tokens is None else tokens[:max_tokens])
