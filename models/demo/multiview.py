"""The multi-view encoder-decoder: VisionEncoderDecoder taught that a study has 1..N views.

All views of a batch go through the ViT in one pass; each study's views are joined into one
sequence for cross-attention, and padded views are masked out with a (B, V*T) encoder attention
mask built from a (B, V) `view_mask`. transformers' VisionEncoderDecoderModel hard-codes
`encoder_attention_mask = None`, hence this subclass.

Nothing here reads a mask's values on the host: a decoding step must never wait for the GPU. Whether
a batch needs a mask at all (does it have padded views?) is decided by the caller on the CPU mask,
before the copy (`generate.device_view_mask`).

This file is also the modelling code saved beside every model's weights (`register_for_auto_class`
at the end makes `save_pretrained` copy it and write `auto_map`), so that plain transformers loads a
saved model with `AutoModelForImageTextToText.from_pretrained(dir, trust_remote_code=True)` and
`generate(pixel_values=(B, V, 3, H, W), attention_mask=(B, V) view mask)` writes xrq's reports. Hence it
stays self-contained: it imports torch and transformers only, never the rest of xrq. Its config,
`XrqEncoderDecoderConfig`, is VisionEncoderDecoder's plus `max_views`, so plain transformers sees how
many views of a study the model takes too.

A config with `view_join` (the small-v2 preset) also marks each view's tokens after the encoder, before
the join (`ViewJoin`): which view slot they came from, and where in the view each patch lies. Without
it (every older model, models/demo) the views are joined exactly as before.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.vision_encoder_decoder.modeling_vision_encoder_decoder import shift_tokens_right


class XrqEncoderDecoderConfig(VisionEncoderDecoderConfig):
    """VisionEncoderDecoder's config plus `max_views`: the views of a study the model looks at (the first
    `max_views` of a study are kept, the rest dropped). The same `model_type`, so configs saved without it
    load (as 4 views) and plain VisionEncoderDecoder reads ours."""

    max_views: int = 4


class XrqEncoderDecoder(VisionEncoderDecoderModel):
    """VisionEncoderDecoder over studies of 1..V views, with padded views masked in cross-attention.

    Training entry point: `model(pixel_values=(B, V, 3, H, W), view_mask=(B, V) bool, labels=(B, L))`
    returns a `Seq2SeqLMOutput` whose `.loss` is token cross-entropy (labels -100 are ignored).
    A 4-D `pixel_values` (B, 3, H, W) is read as one view per study. Same weight names as
    `VisionEncoderDecoderModel`, so its checkpoints load here and ours load there (without the mask).
    With `config.view_join` the encoder's outputs go through a `ViewJoin` (its `view_join.*` weights).
    """

    config_class = XrqEncoderDecoderConfig

    def __init__(self, config: Any = None, encoder: Any = None, decoder: Any = None) -> None:
        super().__init__(config=config, encoder=encoder, decoder=decoder)
        settings = getattr(self.config, "view_join", None)
        if settings:
            self.view_join = ViewJoin(int(cast(Any, self.config).encoder.hidden_size), **settings)

    def encode_views(
        self, pixel_values: torch.Tensor, view_mask: torch.Tensor | None = None
    ) -> BaseModelOutput:
        """Encode every real view of the batch in one ViT pass and join each study's views.

        Padded views are not encoded at all; their slots stay zero and are masked later. With no
        mask (every view real) the views are encoded as they lie, without the boolean indexing that
        waits for the GPU to count the real views.
        """
        if pixel_values.ndim == 4:
            pixel_values = pixel_values[:, None]  # (B, 1, 3, H, W)
        b, v = pixel_values.shape[:2]
        if view_mask is None:
            flat = pixel_values.reshape(b * v, *pixel_values.shape[2:])  # (B*V, 3, H, W)
            tokens = self.encoder(pixel_values=flat, return_dict=True).last_hidden_state  # (B*V, T, C)
            if hasattr(self, "view_join"):
                tokens = self.view_join(tokens.reshape(b, v, *tokens.shape[1:]))  # (B, V, T, C)
            return BaseModelOutput(last_hidden_state=tokens.reshape(b, -1, tokens.shape[-1]))  # (B, V*T, C)
        view_mask = view_mask.bool()
        real = pixel_values[view_mask]  # (N, 3, H, W), N = real views in the batch
        tokens = self.encoder(pixel_values=real, return_dict=True).last_hidden_state  # (N, T, C)
        t, c = tokens.shape[1:]
        joined = tokens.new_zeros(b, v, t, c)  # (B, V, T, C)
        joined[view_mask] = tokens
        if hasattr(self, "view_join"):
            joined = self.view_join(joined)  # padded slots get marks too, but stay masked out
        return BaseModelOutput(last_hidden_state=joined.reshape(b, v * t, c))  # (B, V*T, C)

    def cross_attention_mask(self, view_mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
        """(B, V) view mask → the decoder's ready-made (B, 1, 1, V*T) cross-attention mask; None without one.

        Built in the form the decoder's attention implementation takes (bool for sdpa, additive for
        eager), so the decoder passes it through as is: given the (B, V*T) mask instead, transformers
        rebuilds it at every step and asks `mask.all()` on the host each time. One query row, broadcast
        over the decoder's positions, so one mask serves every step of a batch (`generate` builds it once).
        """
        tokens = _token_mask(view_mask, hidden)  # (B, V*T)
        if tokens is None:
            return None
        return create_bidirectional_mask(
            config=self.decoder.config,
            inputs_embeds=hidden[:, :1],  # only its batch size, one query position, dtype and device are read
            attention_mask=tokens,
            encoder_hidden_states=hidden,
            allow_is_bidirectional_skip=False,  # the skip test is a host sync; the caller already decided
        )

    def get_encoder(self, modality: str | None = None) -> _ViewEncoder:
        """What `generate` calls to encode: takes `pixel_values` and `view_mask` (see `encode_views`)."""
        return _ViewEncoder(self)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' `generate`, with the decoder's start token marked real, as xrq's own callers do.

        Without decoder inputs, a (B, 1) `decoder_attention_mask` of ones says the start token (which
        is also the pad token) is no padding: that spares GPT-2 its "may be padded" warning and its
        per-step look at the ids. Plain transformers callers pass `pixel_values` (B, V, 3, H, W) and
        `attention_mask` (B, V), the view mask.
        """
        if "decoder_input_ids" not in kwargs and "decoder_attention_mask" not in kwargs:
            inputs = kwargs.get("pixel_values", args[0] if args else None)
            encoded = kwargs.get("encoder_outputs")
            if inputs is None and encoded is not None:
                inputs = encoded[0] if isinstance(encoded, tuple) else encoded.last_hidden_state
            if isinstance(inputs, torch.Tensor):
                kwargs["decoder_attention_mask"] = torch.ones(len(inputs), 1, dtype=torch.long, device=inputs.device)
        return super().generate(*args, **kwargs)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Any = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        """Decode against the joined views; `view_mask` (B, V) masks padded views (None: all real).

        `attention_mask` is the same (B, V) mask under transformers' name for an encoder-decoder's
        encoder-side mask: `generate(attention_mask=view_mask)` expands it per beam and hands it to
        every decoding step by itself. `view_mask` wins when both are given. `cross_attention_mask`
        is `cross_attention_mask(view_mask, hidden)` made once per batch; it wins over both, and saves
        rebuilding the mask at every step.
        """
        view_mask = view_mask if view_mask is not None else attention_mask
        if encoder_outputs is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values or encoder_outputs")
            encoder_outputs = self.encode_views(pixel_values, view_mask)
        elif isinstance(encoder_outputs, tuple):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        hidden = cast(torch.Tensor, encoder_outputs.last_hidden_state)  # (B, V*T, C_enc)
        cross_mask = cross_attention_mask  # (B, 1, 1, V*T)
        if cross_mask is None:
            cross_mask = self.cross_attention_mask(view_mask, hidden)
        if hasattr(self, "enc_to_dec_proj"):
            hidden = self.enc_to_dec_proj(hidden)  # (B, V*T, C_dec)
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(
                labels, self.config.pad_token_id, self.config.decoder_start_token_id
            )
        decoder_kwargs = {k[len("decoder_"):]: v for k, v in kwargs.items() if k.startswith("decoder_")}
        out = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=hidden,
            encoder_attention_mask=cross_mask,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
            **decoder_kwargs,
        )
        loss = None
        if labels is not None:
            logits = out.logits  # (B, L, vocab)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return Seq2SeqLMOutput(
            loss=loss,
            logits=out.logits,
            cache=out.cache,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
        )


class ViewJoin(torch.nn.Module):
    """Marks each view's encoder tokens with which view slot they are from and where each patch lies.

    (B, V, T, C) → (B, V, T, C): adds a learned embedding of the view's slot (its place in the study's
    order: frontal and lateral views are otherwise concatenated with nothing saying which is which), and
    fixed 2-D sin-cos encodings of each patch's row and column (the class token, first, gets none), so
    cross-attention keys say *where* directly rather than through whatever the encoder kept of its
    input positions. Either part can be off (`embedding`, `positions`), for ablations.
    """

    def __init__(self, channels: int, views: int = 4, embedding: bool = True, positions: str | None = "sincos") -> None:
        super().__init__()
        if positions not in (None, "sincos"):
            raise ValueError(f"view_join positions must be 'sincos' or None, not {positions!r}")
        self.views, self.positions = views, positions
        self.slots = torch.nn.Parameter(torch.randn(views, channels) * 0.02) if embedding else None  # (V, C)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        v, t, c = tokens.shape[1:]
        if self.slots is not None:
            if v > self.views:
                raise ValueError(f"a study of {v} views, but this model has {self.views} view slots")
            tokens = tokens + self.slots[:v, None, :].to(tokens.dtype)  # (V, 1, C) over every token
        if self.positions == "sincos":
            tokens = tokens + _sincos_2d(t, c, tokens.device).to(tokens.dtype)  # (T, C)
        return tokens


def _sincos_2d(tokens: int, channels: int, device: torch.device) -> torch.Tensor:
    """(T, C): zeros for the class token, then each patch's row (first half) and column (second half),
    as sines and cosines of geometric frequencies, on a square grid of T - 1 patches (MAE's layout)."""
    grid = round((tokens - 1) ** 0.5)  # standard library only: this file stands alone
    if grid * grid != tokens - 1 or channels % 4:
        raise ValueError(f"sin-cos positions need a square patch grid and channels divisible by 4, got "
                         f"{tokens - 1} patches of {channels}")
    frequencies = 1.0 / 10000 ** (torch.arange(channels // 4, dtype=torch.float64) / (channels // 4))  # (C/4,)
    steps = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    angles_y, angles_x = rows.reshape(-1, 1) * frequencies, cols.reshape(-1, 1) * frequencies  # (G*G, C/4) each
    values = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)  # (G*G, C)
    return torch.cat([values.new_zeros(1, channels), values]).to(device=device, dtype=torch.float32)  # (T, C)


class _ViewEncoder:
    """The encoder as `generate` sees it: a callable that takes the (B, V) view mask.

    `generate` filters its kwargs by this signature, so the mask reaches the encoder here; it also
    stays in the model kwargs (expanded per beam) and so reaches every decoding step's `forward`.
    """

    main_input_name = "pixel_values"

    def __init__(self, model: XrqEncoderDecoder) -> None:
        self.model = model

    def forward(
        self,
        pixel_values: torch.Tensor,
        view_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput:
        return self.model.encode_views(pixel_values, view_mask if view_mask is not None else attention_mask)

    __call__ = forward


def _token_mask(view_mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor | None:
    """(B, V) view mask → (B, V*T) token mask; None without a view mask.

    Never reads the mask's values (that would wait for the GPU at every decoding step): dropping
    an all-real mask is the caller's decision, made on the host. expand + reshape, not
    repeat_interleave, whose output size can cost a sync.
    """
    if view_mask is None:
        return None
    b, v = view_mask.shape
    t = hidden.shape[1] // v
    return view_mask.bool()[:, :, None].expand(b, v, t).reshape(b, v * t)  # (B, V*T)


# Saved models carry this file and `auto_map` (see the module docstring); loading ignores both.
XrqEncoderDecoderConfig.register_for_auto_class()  # "AutoConfig"
XrqEncoderDecoder.register_for_auto_class("AutoModelForImageTextToText")
