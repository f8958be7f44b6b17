"""Natural-language metrics for generated reports, computed the way the IU X-ray literature does.

`score` mirrors R2Gen's `compute_scores`: pycocoevalcap's Bleu(4), Meteor(), Rouge() and Cider() are
called directly on {study: [text]} dicts of already-normalised strings, with NO PTB tokenizer (R2Gen
never runs it; its text is cleaned and space-separated already). BLEU is corpus-level ("closest"
reference length), ROUGE-L and METEOR are pycocoevalcap's per-report means, CIDEr is CIDEr-D's
corpus-idf version. NLTK's corpus BLEU on the same whitespace tokens is reported beside it, under
its own keys, because other papers use it and the two differ (brevity penalty, smoothing).

METEOR runs Java (meteor-1.5.jar). Without Java, or when the jar fails, METEOR is None with a
reason, never 0, so a missing dependency cannot pass for a bad model.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycocoevalcap.meteor.meteor as meteor_module
from nltk.translate.bleu_score import corpus_bleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from model.errors import ScoringError
from model.metrics.text import Vocabulary, normalise, truncate

BLEU_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
NLTK_BLEU_KEYS = ("nltk_bleu_1", "nltk_bleu_2", "nltk_bleu_3", "nltk_bleu_4")
CORPUS_KEYS = (*BLEU_KEYS, "meteor", "rouge_l", "cider", *NLTK_BLEU_KEYS)
PER_STUDY_KEYS = (*BLEU_KEYS, "meteor", "rouge_l", "cider")

Gts = dict[str, list[str]]


@dataclass
class Scores:
    """One evaluation: corpus scores, per-study scores, and what was scored.

    `corpus` holds every key of CORPUS_KEYS; `corpus["meteor"]` is None when METEOR could not run
    (`meteor_error` says why). `per_study[study_id]` holds PER_STUDY_KEYS as pycocoevalcap returns
    them (sentence-level BLEU with its own brevity penalty; METEOR absent when unavailable).
    """

    corpus: dict[str, float | None]
    per_study: dict[str, dict[str, float]]
    n_studies: int
    distinct_reports: int
    meteor_error: str | None = None
    references: dict[str, str] = field(default_factory=dict, repr=False)
    hypotheses: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def distinct_ratio(self) -> float:
        """Distinct normalised hypotheses per study: 1/n for a constant report, 1.0 if all differ."""
        return self.distinct_reports / self.n_studies

    def to_dict(self) -> dict[str, Any]:
        """Corpus scores and counts as plain JSON-ready values (per-study scores left out)."""
        return {
            **self.corpus,
            "meteor_error": self.meteor_error,
            "n_studies": self.n_studies,
            "distinct_reports": self.distinct_reports,
            "distinct_ratio": self.distinct_ratio,
        }


def prepare(
    references: Mapping[str, str],
    hypotheses: Mapping[str, str],
    vocabulary: Vocabulary | None = None,
    max_reference_tokens: int | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """The exact strings that get scored, for the studies in `hypotheses`, in sorted id order.

    Hypotheses are normalised. References are normalised, then (with a vocabulary) unk-mapped, then cut
    to `max_reference_tokens`: the benchmark protocol is `vocabulary=<train vocabulary>,
    max_reference_tokens=59`. References without a hypothesis are ignored; a hypothesis without a
    reference is an error, because silently dropping it would flatter the system.
    """
    if not hypotheses:
        raise ScoringError("Nothing to score: no hypotheses were given.")
    missing = sorted(set(hypotheses) - set(references))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ScoringError(
            f"{len(missing)} studies have a generated report but no ground truth ({shown}). "
            "Import their ground truth or leave them out of the evaluation."
        )
    ids = sorted(hypotheses)
    if vocabulary is not None:
        refs = {i: vocabulary.reference(references[i], max_reference_tokens) for i in ids}
    else:
        refs = {i: truncate(normalise(references[i]), max_reference_tokens) for i in ids}
    return refs, {i: normalise(hypotheses[i]) for i in ids}


def score(
    references: Mapping[str, str],
    hypotheses: Mapping[str, str],
    *,
    vocabulary: Vocabulary | None = None,
    max_reference_tokens: int | None = None,
    with_meteor: bool = True,
) -> Scores:
    """Score generated reports against ground truth; both are raw text keyed by study id.

    See `prepare` for which studies count and how texts are normalised. `with_meteor=False` skips the
    Java scorer (reported as unavailable with that reason).
    """
    refs, hyps = prepare(references, hypotheses, vocabulary, max_reference_tokens)
    ids = list(hyps)
    gts: Gts = {i: [refs[i]] for i in ids}
    res: Gts = {i: [hyps[i]] for i in ids}
    corpus: dict[str, float | None] = {}
    per_study: dict[str, dict[str, float]] = {i: {} for i in ids}

    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n, key in enumerate(BLEU_KEYS):
        corpus[key] = float(bleu[n])
        _spread(per_study, ids, key, bleu_each[n])
    if with_meteor:
        meteor, meteor_each, meteor_error = run_meteor(gts, res)
    else:
        meteor, meteor_each, meteor_error = None, None, "METEOR not requested"
    corpus["meteor"] = meteor
    if meteor_each is not None:
        _spread(per_study, ids, "meteor", meteor_each)
    for key, scorer in (("rouge_l", Rouge()), ("cider", Cider())):
        value, each = scorer.compute_score(gts, res)
        corpus[key] = float(value)
        _spread(per_study, ids, key, each)
    corpus.update(nltk_bleu(refs.values(), hyps.values()))
    return Scores(
        corpus={k: corpus[k] for k in CORPUS_KEYS},
        per_study=per_study,
        n_studies=len(ids),
        distinct_reports=len(set(hyps.values())),
        meteor_error=meteor_error,
        references=refs,
        hypotheses=hyps,
    )


def _spread(per_study: dict[str, dict[str, float]], ids: list[str], key: str, values: Iterable[Any]) -> None:
    """Put a scorer's per-study list (in `ids` order, as pycocoevalcap returns it) under `key`."""
    for i, v in zip(ids, values, strict=True):
        per_study[i][key] = float(v)


def nltk_bleu(references: Iterable[str], hypotheses: Iterable[str]) -> dict[str, float]:
    """NLTK corpus BLEU-1..4 on whitespace tokens, one reference per study, no smoothing."""
    refs = [[r.split()] for r in references]
    hyps = [h.split() for h in hypotheses]
    out = {}
    with warnings.catch_warnings():
        # NLTK warns (and returns 0) when a higher-order n-gram never matches; 0 is the honest answer.
        warnings.simplefilter("ignore")
        for n, key in enumerate(NLTK_BLEU_KEYS, start=1):
            out[key] = float(corpus_bleu(refs, hyps, weights=tuple([1.0 / n] * n)))
    return out


def run_meteor(gts: Gts, res: Gts) -> tuple[float | None, list[float] | None, str | None]:
    """pycocoevalcap's METEOR as (corpus, per-study, None), or (None, None, reason) if it can't run.

    The scorer keeps a Java process open; it is always closed here rather than left to `__del__`
    (which would deadlock on the scorer's lock if `compute_score` had failed while holding it).
    """
    if shutil.which("java") is None:
        return None, None, "METEOR unavailable: Java is not installed (no `java` on PATH)."
    jar = Path(meteor_module.__file__).parent / meteor_module.METEOR_JAR
    if not jar.is_file():
        return None, None, f"METEOR unavailable: {jar} is missing (reinstall pycocoevalcap)."
    try:
        meteor = Meteor()
    except OSError as exc:
        return None, None, f"METEOR unavailable: could not start Java ({exc})."
    try:
        value, each = meteor.compute_score(gts, res)
        return float(value), [float(v) for v in each], None
    except (OSError, ValueError) as exc:
        return None, None, f"METEOR unavailable: the METEOR jar failed ({_stderr_tail(meteor) or exc})."
    finally:
        _close_meteor(meteor)


def _close_meteor(meteor: Meteor) -> None:
    """Stop the scorer's Java process and free its lock so its `__del__` is a harmless no-op."""
    if meteor.lock.locked():
        meteor.lock.release()
    proc = meteor.meteor_p
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):  # a JVM ignoring SIGKILL: give up waiting
        proc.wait(timeout=10)


def _stderr_tail(meteor: Meteor) -> str:
    """The last line Java wrote to stderr, once the process has died, for the error message."""
    proc = meteor.meteor_p
    if proc.poll() is None or proc.stderr is None:
        return ""
    try:
        lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
    except (OSError, ValueError):
        return ""
    return lines[-1] if lines else ""


def most_frequent_report(train_texts: Iterable[str]) -> str:
    """The most frequent normalised non-blank training report: the constant baseline's output.

    Ties go to the alphabetically first text, so the answer does not depend on input order.
    """
    counts = Counter(n for n in (normalise(t) for t in train_texts) if n)
    if not counts:
        raise ScoringError("No training reports: cannot pick a most frequent report.")
    best = max(counts.values())
    return min(t for t, c in counts.items() if c == best)
