"""`xrq show --attention`: where the model looked for each sentence, and the words it was unsure of.

The report's stored tokens go back through the model that wrote them (the worker's XRQ_MODEL when it
holds those very weights, else the path the model was recorded with), once, teacher-forced, with the
views as the job found them: `model.inference.attention.attention_maps`. Nothing is regenerated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from db.evidence import report_evidence
from db.queries import StudyDetail
from model.defaults import ATTENTION_METHODS
from worker import runtime
from worker.errors import NoEvidenceError
from worker.settings import Settings

if TYPE_CHECKING:
    from PIL.Image import Image

DEFAULT_THRESHOLD = 0.5  # a word the model gave less than even odds is marked
DEFAULT_METHOD = ATTENTION_METHODS[0]  # the raw cross-attention


@dataclass(frozen=True)
class AttentionShown:
    picture: Path
    marked_report: str  # the report, words below the threshold in [brackets]
    unsure_words: int
    threshold: float
    confidence: float | None
    sentences: int


def draw_attention(settings: Settings, detail: StudyDetail, views: list[Image | str], out: Path,
                   threshold: float = DEFAULT_THRESHOLD, method: str = DEFAULT_METHOD) -> AttentionShown:
    """Write the attention picture of the study's report to `out` (PNG); say which words were unsure.

    `method`: "attention", the decoder's raw cross-attention; "relevance", that attention weighted by
    its gradient and carried back through the encoder to the patches it came from; "occlusion", how far
    each sentence's probability falls with each window painted over (`model.inference.attention`)."""
    from model.figures.attention import render_attention
    from model.inference.attention import attention_maps, marked_words

    if detail.report_id is None:
        raise NoEvidenceError(f"study {detail.uid} has no report to show the attention of")
    evidence = report_evidence(runtime.database(settings.database_url), detail.report_id)
    if not evidence.token_ids or evidence.token_logprobs is None:
        raise NoEvidenceError(f"the report of study {detail.uid} was stored before xrq kept the tokens it was "
                              "written with, so there is nothing to replay; reports written since have them")
    readable = [v for v in views if not isinstance(v, str)]
    if len(readable) != len(views):
        raise NoEvidenceError(f"study {detail.uid} has a view that cannot be read now: "
                                   + next(v for v in views if isinstance(v, str)))
    bundle = runtime.job_bundle(settings, evidence.model)
    attention = attention_maps(bundle, readable, evidence.token_ids, method=method)
    marked, unsure = marked_words(bundle.tokenizer, evidence.token_ids, evidence.token_logprobs, threshold)
    sure = "" if evidence.confidence is None else f", confidence {evidence.confidence:.2f}"
    title = f"Study {detail.uid}: where the model ({evidence.model.name}) looked, sentence by sentence{sure}"
    report = f"{marked}   ([word]: probability below {threshold:g})"
    render_attention(out, readable, attention, title=title, report=report)
    return AttentionShown(out, marked, unsure, threshold, evidence.confidence, len(attention.sentences))


def attention_path(picture: Path) -> Path:
    """Where the attention picture of `picture` goes: beside it, `NAME-attention.png`."""
    return picture.with_name(f"{picture.stem}-attention.png")
