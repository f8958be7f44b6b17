"""The serving engine: batched report generation built to keep a GPU busy.

`model.inference.generate.generate_from_pixels` is the trainer's path: fp32 weights under bf16 autocast, so
training and validation share one model. Serving owns its bundle, so `Engine` makes the choices
that only pay there:

- on CUDA the weights are cast to bf16 once (autocast re-casts every weight at every step);
- pixels go from pinned host memory with an asynchronous copy, already in the model's dtype on arrival;
- the cross-attention mask is built once per batch, on a decision read from the host mask (no mask
  at all when every view is real), never per decoding step;
- optionally (`EngineOptions.compile`) a static KV cache and a `torch.compile`d decoding step, with
  CUDA graphs on CUDA, which removes the per-step Python and kernel-launch overhead (greedy search
  only: transformers compiles no beam-search step);
- `auto_batch_size` sizes a batch from the free memory (the GPU's, or the host's on a CPU).

The tokens are exactly those of `generate_from_pixels` in fp32 (both call `generate.generate_ids`).
Imports nothing from worker/ or db/.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import CompileConfig

from model.defaults import MAX_SEQUENCES, GenerationSettings
from model.inference.confidence import Draft, generate_drafts
from model.inference.generate import check_fits, decode_reports, generate_ids
from model.network.bundle import Bundle

# A CPU's throughput rises with the batch too (bench/generate.py, base preset, 60 tokens, 2 threads:
# 1.40 reports/s at 8, 2.01 at 16, 2.48 at 32, 2.72 at 64, as much as transformers' own batched
# generate at 64); past 64 a batch gains little and only waits longer for its images.
CPU_BATCH_SIZE = 64
MEMORY_FRACTION = 0.8  # of the free GPU memory: room for the allocator's fragmentation and the graphs' pools
CPU_MEMORY_FRACTION = 0.25  # of the host's available memory: a CPU host decodes images and runs the database too
ESTIMATE_SLACK = 1.5  # the per-study estimate counts the big tensors only; temporaries ride on this


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs; the defaults are what a worker gets.

    compile: static KV cache and a torch.compile'd decoding step ("reduce-overhead", i.e. CUDA graphs,
    on CUDA). Each new (batch size, views) shape compiles once, so it pays off for long runs of
    equal batches; off by default (XRQ_COMPILE).
    max_batch_size: the most studies `auto_batch_size` ever proposes.
    bf16: cast the weights to bf16 on CUDA; False keeps fp32 there (to compare, or for exactness).
    """

    compile: bool = False
    max_batch_size: int = 1024
    bf16: bool = True


class Engine:
    """Generates reports for batches of preprocessed studies on the bundle's device; inference only.

    Takes over `bundle`: on CUDA its weights become bf16 in place, so the same bundle must not be
    trained afterwards (the trainer keeps `generate_from_pixels`). `fingerprint` is the one of the
    weights as loaded, taken before the cast (the bf16 weights hash differently).
    """

    def __init__(self, bundle: Bundle, options: EngineOptions = EngineOptions()) -> None:
        self.bundle = bundle
        self.options = options
        self.fingerprint = bundle.fingerprint  # before the cast: what the database knows this model by
        model = cast(torch.nn.Module, bundle.model)
        if self.device.type == "cuda" and options.bf16:
            model.to(dtype=torch.bfloat16)
        model.eval()
        self._compile_config = _compile_config(self.device) if options.compile else None

    @property
    def device(self) -> torch.device:
        return self.bundle.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype: bf16 on CUDA (unless options.bf16 is off), fp32 elsewhere."""
        return next(self.bundle.model.parameters()).dtype

    def generate(self, pixels: torch.Tensor, mask: torch.Tensor, settings: GenerationSettings) -> list[str]:
        """One report per study: pixels (B, V, 3, H, W) float on the host, mask (B, V) bool, real views True.

        On CUDA the pixels are pinned (when they are not already) so the copy runs asynchronously,
        and cast to the model's dtype on the device. Reports come back in the order of the studies.
        """
        if not len(pixels):
            return []
        with torch.inference_mode():
            ids = generate_ids(self.bundle.model, self._on_device(pixels, settings), mask.cpu(), settings,
                               **self._cache_kwargs(settings))
        return decode_reports(self.bundle.tokenizer, ids)

    def drafts(self, pixels: torch.Tensor, mask: torch.Tensor, settings: GenerationSettings) -> list[Draft]:
        """`generate`, each report with its tokens and their log-probabilities (`model.inference.confidence`).

        The same tokens as `generate`; what workers store. The recording stays on the device until
        the sequences come back (bench/generate.py measures both: `engine` and `engine-drafts`).
        """
        if not len(pixels):
            return []
        with torch.inference_mode():
            return generate_drafts(self.bundle.model, self._on_device(pixels, settings), mask.cpu(), settings,
                                   self.bundle.tokenizer, **self._cache_kwargs(settings))

    def _on_device(self, pixels: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
        """Check the settings fit, then (B, V, 3, H, W) pixels on the device in the weights' dtype."""
        check_fits(self.bundle, settings)
        if self.device.type == "cuda" and not pixels.is_pinned():
            pixels = pixels.pin_memory()
        return pixels.to(self.device, non_blocking=True).to(self.dtype)

    def auto_batch_size(self, settings: GenerationSettings, views: int) -> int:
        """Studies per batch: the most that fit the free memory now; on a CPU at most CPU_BATCH_SIZE.

        Free memory is measured at the call (other processes and earlier batches count), and only a
        fraction of it is planned for: MEMORY_FRACTION of the GPU's, CPU_MEMORY_FRACTION of the host's
        available memory on a CPU. The per-study need is `study_bytes`. At least 1, at most
        `options.max_batch_size`.
        """
        cap = max(1, min(self.options.max_batch_size, MAX_SEQUENCES // settings.num_beams))
        per_study = study_bytes(self.bundle.model.config, settings, views, self.dtype.itemsize)
        if self.device.type != "cuda":
            fits = int(available_memory() * CPU_MEMORY_FRACTION) // per_study
            return max(1, min(cap, CPU_BATCH_SIZE, fits))
        free, _total = torch.cuda.mem_get_info(self.device)
        fits = int(free * MEMORY_FRACTION) // per_study
        return max(1, min(cap, fits))

    def _cache_kwargs(self, settings: GenerationSettings) -> dict[str, Any]:
        """What `generate` needs on top of the settings: nothing, or the static cache and compile config.

        Greedy only: transformers (5.24) runs beam search's steps uncompiled whatever the cache, and
        an uncompiled static cache only adds work (a full-length mask per step), so beams keep the
        dynamic cache. The tokens are the same either way.
        """
        if self._compile_config is None or settings.num_beams > 1:
            return {}
        return {"cache_implementation": "static", "compile_config": self._compile_config}


def study_bytes(config: Any, settings: GenerationSettings, views: int, itemsize: int) -> int:
    """Peak GPU bytes one study of `views` views adds to a batch, from the model's config.

    Counts what grows with the batch: per beam, the self-attention KV cache (every layer, 1 +
    max_new_tokens positions), the cross-attention K/V and the encoder outputs (V*T tokens, copied
    per beam); per study, one encoder layer's activations over its views, the pixels (fp32 copy and
    its cast) and the fp32 logits/scores over the vocabulary. Then ESTIMATE_SLACK for temporaries.
    An over-estimate on purpose: a batch too small costs a little speed, one too large a crash.
    """
    enc, dec = config.encoder, config.decoder
    tokens = views * ((enc.image_size // enc.patch_size) ** 2 + 1)  # V*T: patches + CLS per view
    positions = 1 + settings.max_new_tokens
    per_beam = (2 * dec.num_hidden_layers * (positions + tokens) * dec.hidden_size  # self + cross K/V
                + tokens * enc.hidden_size)  # encoder outputs (expanded per beam by generate)
    encoder = tokens * (enc.intermediate_size + 4 * enc.hidden_size)  # the widest layer's activations
    pixels = views * 3 * enc.image_size**2 * (4 + itemsize)  # fp32 as copied, then cast
    logits = settings.num_beams * dec.vocab_size * 4 * 4  # logits, their fp32 copy, scores, log-softmax
    total = (settings.num_beams * per_beam + encoder) * itemsize + pixels + logits
    return int(total * ESTIMATE_SLACK)


def available_memory() -> int:
    """Bytes the host can give without swapping: MemAvailable on Linux, else the free physical pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _compile_config(device: torch.device) -> CompileConfig:
    """CUDA graphs on CUDA ("reduce-overhead"); plain inductor elsewhere, where graphs do not exist.

    transformers compiles the decoding step only on accelerators unless told otherwise: on a CPU
    (tests, and correctness checks without a GPU) `_compile_all_devices` tells it.
    """
    config = CompileConfig(mode="reduce-overhead" if device.type == "cuda" else "default")
    if device.type != "cuda":
        config._compile_all_devices = True  # type: ignore[assignment]  # declared as None
    return config
