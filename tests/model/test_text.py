"""Normalisation must match R2Gen's clean_report_iu_xray token for token; these pin its quirks."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.metrics.text import MAX_REFERENCE_TOKENS, UNK, Vocabulary, normalise, tokenize, truncate
from tests.conftest import IU_CSV as IU_DIR


def need_iu() -> Path:
    """The IU CSV folder shipped in the repository (data/iu)."""
    return IU_DIR


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (  # the most frequent IU training report
            "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
            "the heart is normal in size . the mediastinum is unremarkable . the lungs are clear .",
        ),
        ("1. No acute disease. 2. Stable cardiomegaly.", "no acute disease . stable cardiomegaly ."),
        ("Chest 1. No active disease 2. Right shoulder.", "chest no active disease . right shoulder ."),
        ("A 3.5 cm nodule.", "a 35 cm nodule ."),  # digits stay, the dot goes
        ("Normal chest x-XXXX.", "normal chest x-xxxx ."),  # the hyphen stays
        ("Heart size normal.. Lungs clear", "heart size normal . lungs clear ."),
        ("Stable left chest dual XXXX ICD/pacemaker.", "stable left chest dual xxxx icdpacemaker ."),
        ('The patient\'s "heart" (PA view): normal; ok!', "the patients heart pa view normal ok ."),
        ("a <b> c=d @e [f] {g} h*i^j&k_l+m%n?", "a b cd e f g hijklmn ."),
        ("Within normal limits. .", "within normal limits . ."),  # R2Gen keeps the empty sentence
        ("  Lungs\nclear.  ", "lungs clear ."),
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalise_matches_r2gen(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


def test_tokenize_keeps_the_full_stop_as_a_token() -> None:
    assert tokenize("No effusion. Clear lungs.") == ["no", "effusion", ".", "clear", "lungs", "."]


def test_normalise_is_idempotent_on_every_iu_section() -> None:
    import pandas as pd

    frame = pd.read_csv(need_iu() / "indiana_reports.csv", dtype=str, keep_default_na=False)
    for text in [*frame["findings"], *frame["impression"]]:
        once = normalise(text)
        assert normalise(once) == once
        assert "  " not in once


def test_vocabulary_keeps_words_seen_min_count_times() -> None:
    vocab = Vocabulary.from_reports(["heart normal.", "heart normal.", "heart big."], min_count=3)
    assert "heart" in vocab and "." in vocab
    assert "normal" not in vocab and "big" not in vocab
    assert len(vocab) == 3  # heart, ".", <unk>
    assert vocab.counts["normal"] == 2


def test_reference_maps_unknown_words_and_cuts_to_59_tokens() -> None:
    vocab = Vocabulary.from_reports(["the lungs are clear."] * 3)
    assert vocab.reference("The lungs are hyperinflated.") == f"the lungs are {UNK} ."
    long_report = " ".join(["the lungs are clear."] * 20)  # 100 tokens
    cut = vocab.reference(long_report)
    assert len(cut.split()) == MAX_REFERENCE_TOKENS == 59
    assert cut.split() == tokenize(long_report)[:59]
    assert len(vocab.reference(long_report, max_tokens=None).split()) == 100


def test_reference_does_not_pass_through_normalise_twice() -> None:
    # normalise() would turn "<unk>" into "unk"; the reference must keep the marker.
    vocab = Vocabulary.from_reports(["clear."] * 3)
    assert vocab.reference("Opaque.") == "<unk> ."


def test_truncate() -> None:
    assert truncate("a b c", 2) == "a b"
    assert truncate("a  b c", None) == "a b c"
