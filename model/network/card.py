"""What a model is, in words: its model card (README.md, with Hugging Face's metadata block) and
the facts `xrq model info` prints, both read from the bundle and its xrq.json.

The card says how the model was made (architecture, initialisation or training command, data,
tokenizer, preprocessing), its validation scores, what it is not for, and how to run it with xrq or
with plain transformers (the modelling code is saved beside the weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.network.bundle import Bundle

CARD_FILE = "README.md"
REMOTE_CODE_FILE = "multiview.py"  # model/network/multiview.py, copied by save_pretrained
IU_DATASET = "Indiana University chest X-ray collection (Open-i)"
IU_LICENCE = "cc-by-nc-nd-4.0"  # Demner-Fushman et al., JAMIA 2016: the collection's terms
CODE_LICENCE = "apache-2.0"  # xrq's own; an untrained model is code and random numbers
_METRICS = {"bleu_4": ("bleu", "BLEU-4"), "rouge_l": ("rouge", "ROUGE-L"), "cider": ("cider", "CIDEr")}


def architecture(config: Any) -> dict[str, Any]:
    """The sizes that matter, from the encoder-decoder config."""
    enc, dec = config.encoder, config.decoder
    return {
        "encoder": {"type": enc.model_type, "layers": enc.num_hidden_layers, "hidden": enc.hidden_size,
                    "heads": enc.num_attention_heads, "image_size": enc.image_size, "patch_size": enc.patch_size},
        "decoder": {"type": dec.model_type, "layers": dec.num_hidden_layers, "hidden": dec.hidden_size,
                    "heads": dec.num_attention_heads, "vocab_size": dec.vocab_size,
                    "positions": getattr(dec, "n_positions", None) or getattr(dec, "max_position_embeddings", None)},
    }


def architecture_text(config: Any) -> str:
    """"ViT 2 layers × 64 (224 px, 16-px patches) + GPT-2 2 layers × 64 with cross-attention"."""
    a = architecture(config)
    enc, dec = a["encoder"], a["decoder"]
    return (f"{_pretty(enc['type'])} {enc['layers']} layers × {enc['hidden']} ({enc['image_size']} px, "
            f"{enc['patch_size']}-px patches) + {_pretty(dec['type'])} {dec['layers']} layers × {dec['hidden']} "
            "with cross-attention")


def summary(bundle: Bundle) -> dict[str, Any]:
    """Everything the card and `xrq model info` say about a model, as plain data."""
    meta, proc, tok = bundle.meta, bundle.processor, bundle.tokenizer
    training = meta.training or None
    sources = meta.sources
    return {
        "name": bundle.name,
        "fingerprint": bundle.fingerprint,
        "recorded_fingerprint": meta.fingerprint,
        "preset": meta.preset,
        "parameters": sum(p.numel() for p in bundle.model.parameters()),
        "architecture": architecture(bundle.model.config),
        "architecture_text": architecture_text(bundle.model.config),
        "max_views": bundle.max_views,
        "tokenizer": {"class": type(tok).__name__, "size": len(tok), "source": sources.get("tokenizer") or
                      "GPT-2's byte-level BPE vocabulary", "eos": tok.eos_token},
        "preprocessing": {"class": type(proc).__name__, "size": dict(getattr(proc, "size", {}) or {}),
                          "resample": _resample_name(getattr(proc, "resample", None)),
                          "rescale_factor": getattr(proc, "rescale_factor", None),
                          "image_mean": list(getattr(proc, "image_mean", []) or []),
                          "image_std": list(getattr(proc, "image_std", []) or [])},
        "sources": {"encoder": sources.get("encoder"), "decoder": sources.get("decoder")},
        "seed": meta.seed,
        "training": training,
        "scores": meta.scores,
        "generation": meta.generation,
        "created_at": meta.created_at,
        "transformers_version": meta.transformers_version,
    }


def write_card(bundle: Bundle, out: Path) -> Path:
    """Write README.md, the model card, into the saved model directory `out`."""
    file = out / CARD_FILE
    file.write_text(card_text(bundle, out.name))
    return file


def card_text(bundle: Bundle, name: str | None = None) -> str:
    """The model card: Hugging Face's metadata block, then what the model is and is not.

    `name` is the model's directory name; a trainer's temporary one (`.best.tmp`) is read as `best`.
    """
    s = summary(bundle)
    s["name"] = (name or s["name"]).lstrip(".").removesuffix(".tmp")
    return _front_matter(s) + "\n".join([
        f"# {s['name']}: a chest X-ray report drafter made with xrq", "",
        "**Not for clinical use.** This model drafts free-text findings from 1 to "
        f"{s['max_views']} views of a chest X-ray study. Its drafts are not diagnoses; they can be wrong, "
        "miss findings or describe findings that are not there. It is not a medical device and must not "
        "be used to decide anyone's care without a radiologist reading the images.", "",
        "## How it was made", "",
        *_made(s), "",
        *_trained(s),
        "## What it is not for", "",
        "- Diagnosis, triage or any decision about a patient.",
        "- Images other than chest X-rays, or from populations and machines unlike its training data.",
        "- Judging radiologists or hospitals: its scores measure word overlap with reference reports, "
        "not clinical correctness.", "",
        "## Use it", "",
        "With xrq (reports for every study of a folder, stored in SQL):", "",
        "```console", "$ xrq submit FOLDER --model path/to/this/model", "$ xrq model info path/to/this/model", "```",
        "",
        "With plain transformers (no xrq installed; the multi-view modelling code is the `multiview.py` "
        "beside the weights, hence `trust_remote_code`):", "",
        "```python", usage_code(s), "```", "",
        f"Fingerprint (what xrq knows this model by): `{s['fingerprint']}`.", "",
    ])


def usage_code(s: dict[str, Any]) -> str:
    """The plain-transformers program the card shows: one study of several views → one report."""
    tokens = int(s["generation"].get("max_new_tokens", 60))
    return f"""import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

path = "path/to/this/model"
files = ["frontal.png", "lateral.png"]  # one study: 1 to {s['max_views']} views

model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)

views = [Image.open(f).convert("L").convert("RGB") for f in files]  # xrq reads X-rays as 8-bit grey
pixels = processor(images=views, return_tensors="pt")["pixel_values"][None]  # (1, V, 3, H, W)
view_mask = torch.ones(pixels.shape[:2], dtype=torch.bool)  # (1, V); False marks a padded view
with torch.inference_mode():
    ids = model.generate(pixel_values=pixels, attention_mask=view_mask, max_new_tokens={tokens}, num_beams=1)
print(" ".join(tokenizer.decode(ids[0], skip_special_tokens=True).split()))"""


def _made(s: dict[str, Any]) -> list[str]:
    enc, dec = s["sources"]["encoder"], s["sources"]["decoder"]
    parts = [f"- Architecture: {s['architecture_text']}; {s['parameters'] / 1e6:.2f} M parameters"
             + (f" (the `{s['preset']}` preset's sizes)." if s["preset"] and not (enc or dec) else ".")]
    if enc or dec:
        parts.append(f"- Pretrained parts: encoder {enc or 'random (' + str(s['preset']) + ' preset)'}, "
                     f"decoder {dec or 'random (' + str(s['preset']) + ' preset)'}; the cross-attention starts random.")
    parts.append(f"- Initial random weights from seed {s['seed']}." if s["seed"] is not None else "")
    tok = s["tokenizer"]
    parts += [f"- Tokenizer: {tok['source']}" + ("." if f"{tok['size']} tokens" in tok["source"]
                                                 else f" ({tok['size']} tokens)."),
              f"- Preprocessing: {_preprocessing_text(s['preprocessing'])}; up to {s['max_views']} views per "
              "study, their encoder outputs joined for cross-attention, padded views masked.",
              f"- Made with transformers {s['transformers_version']} on {s['created_at']}."]
    return [p for p in parts if p]


def _trained(s: dict[str, Any]) -> list[str]:
    t = s["training"]
    if not t:
        return ["**Untrained**: its weights are random (or pretrained parts never trained together), so its "
                "reports are noise. Train it with `xrq train`.", ""]
    data, config = t.get("data") or {}, t.get("config") or {}
    lines = ["## Training", "", "```console", f"$ {t.get('command') or '(command not recorded)'}", "```", "",
             f"- Data: {_dataset(config)}; {data.get('train', '?')} studies to train on, {data.get('val', '?')} to "
             f"validate on (split `{config.get('split', '?')}`).",
             f"- {t.get('step', '?')} of {t.get('total_steps', '?')} steps on {t.get('device', '?')}"
             f"{' in bf16' if t.get('bf16') else ''}, torch {t.get('torch_version', '?')}."]
    scores = s["scores"]
    if scores:
        shown = ", ".join(f"{k} {v}" for k, v in scores.items() if k.startswith("val_"))
        lines += [f"- Validation scores (split {scores.get('split')}, step {scores.get('step')}): {shown}."]
        if str(scores.get("split", "")).startswith("all"):
            lines += ["- Validated on its own training studies: these scores measure recall of the training "
                      "set, not how it does on new studies."]
    return [*lines, ""]


def _front_matter(s: dict[str, Any]) -> str:
    """Hugging Face's metadata block (YAML; every value written as JSON, which YAML reads as is)."""
    t = s["training"] or {}
    config = t.get("config") or {}
    base = [p for p in (s["sources"]["encoder"], s["sources"]["decoder"]) if p and not Path(p).expanduser().exists()]
    meta: list[str] = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text",
                       f"license: {_licence(config) if t else CODE_LICENCE}",
                       "tags: [xrq, radiology, chest-x-ray, report-generation, vision-encoder-decoder, custom_code]"]
    if base:
        meta.append(f"base_model: {json.dumps(base)}")
    if t:
        meta.append(f"datasets: {json.dumps([_dataset(config)])}")
    values = [(_METRICS[k[4:]], v) for k, v in s["scores"].items() if k[4:] in _METRICS and v is not None]
    if values:
        meta += [f"metrics: {json.dumps([m[0] for m, _ in values])}", "model-index:",
                 f"- name: {json.dumps(s['name'])}", "  results:",
                 "  - task: {type: image-text-to-text, name: chest X-ray report generation}",
                 f"    dataset: {{name: {json.dumps(_dataset(config))}, type: {json.dumps(_dataset(config))}, "
                 f"split: {json.dumps(str(s['scores'].get('split')))}}}",
                 "    metrics:"]
        meta += [f"    - {{type: {kind}, name: {json.dumps(name + ' (validation)')}, value: {value}}}"
                 for (kind, name), value in values]
    return "\n".join([*meta, "---", ""]) + "\n"


def _dataset(config: dict[str, Any]) -> str:
    reports = str(config.get("reports") or "")
    return IU_DATASET if Path(reports).name == "indiana_reports.csv" else (Path(reports).name or "unrecorded")


def _licence(config: dict[str, Any]) -> str:
    """Trained weights follow their data's terms: the IU collection's, else unknown to xrq ("other")."""
    return IU_LICENCE if _dataset(config) == IU_DATASET else "other"


def _preprocessing_text(p: dict[str, Any]) -> str:
    size = p["size"]
    shape = f"{size.get('height')}×{size.get('width')}" if "height" in size else json.dumps(size)
    factor = p["rescale_factor"]
    rescale = f"{factor:.6g}" if isinstance(factor, float | int) else "nothing"
    return (f"grey X-ray copied to RGB, resized to {shape} ({p['resample']}), rescaled by "
            f"{rescale}, normalised with mean {p['image_mean']} and std {p['image_std']}")


def _resample_name(value: Any) -> str:
    from PIL import Image

    try:
        return Image.Resampling(int(value)).name.lower()
    except (TypeError, ValueError):
        return str(value)


def _pretty(model_type: str) -> str:
    return {"vit": "ViT", "gpt2": "GPT-2"}.get(model_type, model_type)
