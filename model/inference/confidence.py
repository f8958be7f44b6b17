"""How sure the model was: the log-probability of every token a report was written with.

Each generated token gets the natural log of its probability under the distribution the model
drew it from, after generate's logits processors (as `compute_transition_scores` gives them:
`normalize_logits=True` for greedy search, the beam scores as they are for beam search, which are
already log-softmaxed before the processors). The end-of-text token counts when it was generated.
A report's `confidence` is exp(mean log-probability): the geometric mean of its tokens' probabilities.

The cost is kept off the decoding loop: a logits processor (run last, once per step) keeps a (B,)
vector for greedy search, or each beam's top candidates (B*beams, K) for beam search, on the device,
and the returned sequences pick theirs out after generation, with the `beam_indices` generate
returns anyway. Nothing here reads the GPU inside the loop; the one copy to the host happens with
the sequences'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerFast

from model.imaging.preprocess import pixel_values
from model.inference.generate import GenerationSettings, decode_reports, generate_ids, on_the_trainers_path
from model.metrics.sections import split_sections
from model.network.bundle import Bundle

__all__ = ["Draft", "TokenRecorder", "confidence", "draft", "drafts", "drafts_from_pixels", "generate_drafts"]


@dataclass(frozen=True)
class Draft:
    """One generated report with the evidence of how it was written.

    token_ids: the generated tokens (the start token excluded, the end-of-text token included when
    generated); token_logprobs: one natural-log probability per token id; confidence: exp(mean).
    """

    text: str
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]

    @property
    def confidence(self) -> float | None:
        return confidence(self.token_logprobs)

    def record(self) -> dict[str, Any]:
        """The report columns this draft fills besides its text (its sections: None without markers)."""
        return {"confidence": self.confidence, "token_logprobs": list(self.token_logprobs),
                "token_ids": list(self.token_ids), **split_sections(self.text).record()}


def confidence(logprobs: Sequence[float]) -> float | None:
    """exp(mean log-probability), in (0, 1]; None for a report of no tokens."""
    if not logprobs:
        return None
    return math.exp(sum(logprobs) / len(logprobs))


class TokenRecorder(LogitsProcessor):
    """Keeps, at every decoding step, what is needed to know the chosen tokens' log-probabilities.

    Appended after generate's own processors, so it sees the scores tokens are chosen from. Greedy:
    the chosen token is the arg-max, so its log-probability is max - logsumexp of the scores (what
    `compute_transition_scores` normalizes to, up to fp32 rounding, without a (B, vocab) copy), (B,)
    a step. Beams: the scores are log-probabilities already; a token a beam keeps is among its row's
    `top` best (generate keeps max(2, 1 + end tokens) x beams candidates per study, and a row's
    candidates come in its own order), so (rows, top) values and ids a step suffice. Returns the
    scores untouched.
    """

    def __init__(self, num_beams: int, eos_tokens: int = 1) -> None:
        self.num_beams = num_beams
        self.top = max(2, 1 + eos_tokens) * num_beams  # generate's candidates per study: none ranks lower in its row
        self.steps: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.num_beams == 1:
            best = scores.amax(dim=-1) - scores.logsumexp(dim=-1)  # (B,): log-softmax at the arg-max
            self.steps.append((best, None))
        else:
            values, ids = scores.topk(min(self.top, scores.shape[-1]), dim=-1)  # (B*beams, top)
            self.steps.append((values, ids))
        return scores

    def logprobs(self, sequences: torch.Tensor, beam_indices: torch.Tensor | None) -> torch.Tensor:
        """(N, L-1) log-probabilities of `sequences`' generated tokens (N, L), on the host.

        Positions after the end of a sequence hold whatever the step gave; callers cut at its end.
        """
        generated = sequences[:, 1:].cpu()  # (N, L-1)
        n, length = generated.shape
        if not self.steps or length == 0:
            return torch.zeros(n, length)
        if self.num_beams == 1:
            stacked = torch.stack([best for best, _ in self.steps], dim=1).float().cpu()  # (B, steps)
            return stacked[:, :length]
        assert beam_indices is not None, "beam search returns beam_indices with return_dict_in_generate"
        values = torch.stack([v for v, _ in self.steps], dim=0).float().cpu()  # (steps, rows, top)
        ids = torch.stack([cast(torch.Tensor, i) for _, i in self.steps], dim=0).cpu()  # (steps, rows, top)
        rows = beam_indices[:, :length].long().cpu().clamp(min=0)  # (N, L-1): the row each token came from
        steps = torch.arange(length)[None, :].expand(n, length)  # (N, L-1)
        row_ids, row_values = ids[steps, rows], values[steps, rows]  # (N, L-1, top)
        hit = row_ids == generated[:, :, None]  # (N, L-1, top)
        picked = torch.where(hit, row_values, torch.zeros_like(row_values)).sum(-1)  # (N, L-1)
        return torch.where(hit.any(-1), picked, torch.full_like(picked, float("nan")))


def generate_drafts(
    model: Any,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    settings: GenerationSettings,
    tokenizer: PreTrainedTokenizerFast,
    **generate_kwargs: Any,
) -> list[Draft]:
    """`generate.generate_ids` with each token's log-probability recorded; one Draft per study.

    Same tokens as `generate_ids` (the recorder changes no score). Call under `torch.inference_mode()`.
    """
    eos = model.generation_config.eos_token_id
    recorder = TokenRecorder(settings.num_beams, len(eos) if isinstance(eos, list) else 1)
    out = cast(Any, generate_ids(model, pixels, mask, settings, logits_processor=LogitsProcessorList([recorder]),
                                 return_dict_in_generate=True, **generate_kwargs))
    sequences = cast(torch.Tensor, out.sequences)  # (B, 1 + new tokens)
    logprobs = recorder.logprobs(sequences, getattr(out, "beam_indices", None))
    return drafts(tokenizer, sequences, logprobs)


def drafts(tokenizer: PreTrainedTokenizerFast, sequences: torch.Tensor, logprobs: torch.Tensor) -> list[Draft]:
    """Drafts from (N, L) sequences (start token first) and (N, L-1) log-probabilities of their tokens.

    A sequence ends at its first end-of-text token (kept, it was generated) or at its last column.
    """
    texts = decode_reports(tokenizer, sequences)
    eos = tokenizer.eos_token_id
    out = []
    for text, row, scores in zip(texts, sequences[:, 1:].tolist(), logprobs.tolist(), strict=True):
        end = row.index(eos) + 1 if eos in row else len(row)
        out.append(Draft(text, tuple(row[:end]), tuple(scores[:end])))
    return out


def draft(
    bundle: Bundle,
    studies: Sequence[Sequence[Any]],
    settings: GenerationSettings = GenerationSettings(),  # noqa: B008  # frozen, so a shared default is safe
    *,
    device: str | torch.device | None = None,
) -> list[Draft]:
    """`generate.generate` with evidence: one Draft per study (a study is 1..N PIL images)."""
    if not studies:
        return []
    pixels, mask = pixel_values(bundle.processor, studies, bundle.max_views)  # (B, V, 3, H, W), (B, V)
    return drafts_from_pixels(bundle, pixels, mask, settings, device=device)


def drafts_from_pixels(
    bundle: Bundle,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    settings: GenerationSettings = GenerationSettings(),  # noqa: B008  # frozen, so a shared default is safe
    *,
    device: str | torch.device | None = None,
    bf16: bool = True,
) -> list[Draft]:
    """`generate.generate_from_pixels` (the trainer's path: fp32 weights, bf16 autocast on CUDA) with evidence."""
    if not len(pixels):
        return []
    return on_the_trainers_path(bundle, pixels, settings, lambda model, on_device: generate_drafts(
        model, on_device, mask, settings, bundle.tokenizer), device=device, bf16=bf16)
