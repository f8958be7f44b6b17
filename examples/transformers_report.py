"""Draft a report for one study with plain transformers, no xrq installed (what the README quotes).

    python examples/transformers_report.py [MODEL_DIR] [IMAGE ...]

An xrq model directory carries its multi-view modelling code (multiview.py), which transformers runs
with trust_remote_code=True: read that file first, as with any model that ships code. The report is
xrq's, token for token (greedy, the same preprocessing); by default study 7 of the bundled examples.
"""

import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
folder = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "models" / "demo")
files = sys.argv[2:] or [REPO / "examples" / "iu" / name for name in ("CXR7_IM-2263-1001.png", "CXR7_IM-2263-2001.png")]

# --- quoted in README.md from here ---
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder)
tokenizer = AutoTokenizer.from_pretrained(folder)
views = [Image.open(f).convert("L").convert("RGB") for f in files]              # one study, 1 to 4 views
pixels = processor(images=views, return_tensors="pt")["pixel_values"][None]    # (1, V, 3, H, W)
with torch.inference_mode():
    ids = model.generate(pixel_values=pixels, attention_mask=torch.ones(pixels.shape[:2], dtype=torch.bool),
                         max_new_tokens=128)                                    # (1, T)
report = tokenizer.decode(ids[0], skip_special_tokens=True).strip()
# --- to here ---
print(report)
