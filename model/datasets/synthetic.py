"""Synthetic chest X-ray studies with findings drawn in at known places, and reports that say exactly that.

Why: a decoder that ignores the image and writes the same fluent report for everyone still scores well
on BLEU and ROUGE-L. Here the findings of each study are drawn at random, independently of everything
else, so the only way to write its report is to read its image: a model's clinical F1 above an
image-blind model's is proof that it does (bench/conditioning.py, tests/model/test_conditioning.py).

A study has a frontal view (a real IU or NIH radiograph as the background, shifted and re-exposed at
random) and sometimes a lateral one; findings are painted on both as they would project:
- a patchy opacity (lobar airspace disease) in one of four lung zones (right/left, upper/lower),
- a pleural effusion at the right or left base (a dense band with a meniscus),
- an enlarged heart silhouette,
- or nothing. Right is the patient's right, on the viewer's left of a frontal view (radiological
  convention); a lateral view shows the level of an opacity but not its side.

The report is assembled from IU findings sentences, one for the heart, the lungs and the pleura: normal
sentences for what is absent. The laterality words of an abnormal sentence are filled in (IU has
"There is a right upper lobe opacity." but no verbatim sentence for every zone). Each data set uses one
phrasing per slot, drawn by its seed, so a report is a function of the findings: 30 possible truths.

Everything is seeded: `generate(out, seed=s, ...)` writes the same files for the same arguments. The
files have the IU layout (`indiana_reports.csv` columns, `indiana_projections.csv`, `r2gen_split.csv`,
`{uid}_IM-{series}-1001.png`), so `xrq train --split benchmark`, `xrq truth import` and `xrq submit`
read them on their real code paths.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from model.imaging.images import decode
from model.metrics.labeller import SENTENCE_BREAK, is_positive, label

ZONES = ("right upper", "right lower", "left upper", "left lower")
SIDES = ("right", "left")
LATERALISED = ("Lung Opacity", "Pleural Effusion")
OBSERVED = ("No Finding", "Cardiomegaly", "Lung Opacity", "Pleural Effusion")
"""The labeller's observations a synthetic report can be positive for (the rest are always absent)."""

# Prevalences below one half. Even so, saying every finding for everyone scores F1 2p/(1+p) on each
# (0.57 at p = 0.4): what reports that ignore the image can reach is `image_blind_f1_max` (about 0.45).
P_OPACITY, P_EFFUSION, P_CARDIOMEGALY, P_LATERAL = 0.4, 0.4, 0.35, 0.35

# Phrasings, from IU findings (counts in indiana_reports.csv); {side}/{level} filled in abnormal ones.
HEART_NORMAL = ("The heart is normal in size.", "Heart size is normal.", "Normal heart size.",
                "Heart size within normal limits.")
HEART_ENLARGED = ("The cardiac silhouette is enlarged.", "Cardiomegaly.", "There is moderate cardiomegaly.",
                  "Cardiomegaly is present.")
LUNGS_CLEAR = ("The lungs are clear.", "Lungs are clear.", "The lungs are clear bilaterally.")
OPACITY = ("There is a {side} {level} lobe opacity.", "There is {side} {level} lobe airspace disease.",
           "Patchy airspace opacities in the {side} {level} lobe.")
EFFUSION = ("There is a small {side} pleural effusion.", "Small {side} pleural effusion.",
            "{Side} pleural effusion is present.")
NO_EFFUSION = ("No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
               "No pneumothorax or pleural effusion.")
NO_PNEUMOTHORAX = ("No pneumothorax.", "There is no pneumothorax.")

# Background radiographs shipped in the repository: (path under the repository, projection).
BACKGROUNDS: tuple[tuple[str, str], ...] = (
    *((f"examples/iu/{name}", "Frontal") for name in (
        "1000_IM-0003-1001.dcm.png", "1000_IM-0003-3001.dcm.png", "1001_IM-0004-1001.dcm.png",
        "1002_IM-0004-1001.dcm.png", "1003_IM-0005-2002.dcm.png", "103_IM-0023-1001.dcm.png",
        "3_IM-1384-1001.dcm.png", "CXR25_IM-1024-2001.png", "CXR303_IM-1404-1001.png",
        "CXR54_IM-2145-1001.png", "CXR7_IM-2263-1001.png")),
    *((f"tests/data/xray/{name}", "Frontal") for name in ("00000001_000.png", "h0001.png", "tb0005.png")),
    *((f"examples/iu/{name}", "Lateral") for name in (
        "1000_IM-0003-2001.dcm.png", "1002_IM-0004-2001.dcm.png", "14_IM-0256-2001.dcm.png",
        "3_IM-1384-2001.dcm.png", "CXR54_IM-2145-1002.png", "CXR7_IM-2263-2001.png")),
)


@dataclass(frozen=True)
class Findings:
    """What is drawn in one study: opacity zone (one of ZONES) or None, effusion side or None, big heart."""

    opacity: str | None = None
    effusion: str | None = None
    cardiomegaly: bool = False

    @property
    def normal(self) -> bool:
        return self.opacity is None and self.effusion is None and not self.cardiomegaly


@dataclass(frozen=True)
class Phrasing:
    """One data set's choice of sentence per slot (indices into the tuples above)."""

    heart_normal: str
    heart_enlarged: str
    lungs_clear: str
    opacity: str
    effusion: str
    no_effusion: str
    no_pneumothorax: str

    @classmethod
    def from_seed(cls, seed: int) -> Phrasing:
        rng = random.Random(f"phrasing:{seed}")
        pools = (HEART_NORMAL, HEART_ENLARGED, LUNGS_CLEAR, OPACITY, EFFUSION, NO_EFFUSION, NO_PNEUMOTHORAX)
        return cls(*(rng.choice(pool) for pool in pools))


def report(findings: Findings, phrasing: Phrasing) -> str:
    """The findings section for `findings`: heart, lungs, pleura, in IU's usual order."""
    heart = phrasing.heart_enlarged if findings.cardiomegaly else phrasing.heart_normal
    lungs = phrasing.lungs_clear
    if findings.opacity is not None:
        side, level = findings.opacity.split()
        lungs = _capital(phrasing.opacity.format(side=side, level=level))
    if findings.effusion is None:
        pleura = phrasing.no_effusion
    else:
        side = findings.effusion
        effusion = phrasing.effusion.format(side=side, Side=side.capitalize())
        pleura = f"{_capital(effusion)} {phrasing.no_pneumothorax}"
    return f"{heart} {lungs} {pleura}"


def _capital(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def sample_findings(rng: random.Random) -> Findings:
    """Independent draws: an opacity (any zone), an effusion (either side), an enlarged heart."""
    opacity = rng.choice(ZONES) if rng.random() < P_OPACITY else None
    effusion = rng.choice(SIDES) if rng.random() < P_EFFUSION else None
    return Findings(opacity, effusion, rng.random() < P_CARDIOMEGALY)


# --- pictures -------------------------------------------------------------------------------------


def load_backgrounds(root: str | Path, size: int = 256) -> dict[str, list[np.ndarray]]:
    """{"Frontal": [...], "Lateral": [...]}: the repository's radiographs as (S, S) float arrays, S = size * 9/8.

    Squashed to a square (the model's input is square anyway); the extra eighth leaves room to shift.
    """
    out: dict[str, list[np.ndarray]] = {"Frontal": [], "Lateral": []}
    side = size + size // 8
    for relpath, projection in BACKGROUNDS:
        picture = decode(Path(root) / relpath)
        picture.draft("L", (side * 2, side * 2))
        out[projection].append(np.asarray(picture.resize((side, side), Image.Resampling.BILINEAR), np.float32))
    return out


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates in [0, 1) of a size × size picture, each (size, size)."""
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(ramp, ramp, indexing="ij")


def _soft(distance: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (distance < 1), 0 outside, a smooth edge `edge` wide: a blob, not a sticker."""
    return np.clip((1.0 - distance) / edge + 0.5, 0.0, 1.0)


def draw(background: np.ndarray, findings: Findings, projection: str, rng: random.Random, size: int) -> Image.Image:
    """One view: `background` shifted and re-exposed at random, with `findings` painted as they project."""
    margin = background.shape[0] - size
    top, left = rng.randrange(margin + 1), rng.randrange(margin + 1)
    pixels = background[top : top + size, left : left + size] * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    y, x = _grid(size)
    frontal = projection == "Frontal"
    if findings.cardiomegaly:  # a heart far wider than the background's own
        cy, cx = rng.uniform(0.64, 0.68), (rng.uniform(0.52, 0.56) if frontal else rng.uniform(0.36, 0.42))
        ry, rx = rng.uniform(0.12, 0.14), rng.uniform(0.19, 0.22)
        heart = _soft(np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2), 0.3)
        pixels += heart * (rng.uniform(205, 225) - pixels) * 0.85
    if findings.effusion is not None:  # a dense base with a meniscus rising laterally (posteriorly)
        right = findings.effusion == "right"
        lateral_x = (0.14 if right else 0.86) if frontal else 0.80  # image left is the patient's right
        medial_x = (0.44 if right else 0.56) if frontal else 0.50
        across = (x - medial_x) / (lateral_x - medial_x)  # 0 medially, 1 at the chest wall
        inside = np.clip(across / 0.15, 0.0, 1.0)  # a soft medial edge
        across = np.clip(across, 0.0, 1.0)
        level = rng.uniform(0.72, 0.76) - 0.1 * across**2  # the meniscus
        fluid = inside * _soft((level - y) / 0.02 + 1.0, 1.0) * (y < 0.93)
        pixels += fluid * (rng.uniform(200, 220) - pixels) * 0.85
    if findings.opacity is not None:  # lobar airspace disease: a patchy, soft-edged opacity filling much of a zone
        side, zone = findings.opacity.split()
        cy = (0.36 if zone == "upper" else 0.56) + rng.uniform(-0.02, 0.02)
        cx = (0.27 if side == "right" else 0.73) if frontal else 0.52
        patch = np.zeros_like(pixels)
        for _ in range(3):  # overlapping puffs, so no two opacities have the same outline
            py, px = cy + rng.uniform(-0.04, 0.04), cx + rng.uniform(-0.04, 0.04)
            radius = rng.uniform(0.05, 0.075)
            patch = np.maximum(patch, _soft(np.sqrt((y - py) ** 2 + (x - px) ** 2) / radius, 0.5))
        pixels += patch * (rng.uniform(175, 200) - pixels) * 0.9  # consolidation: as dense as soft tissue
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")


# --- a data set -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticStudy:
    uid: str
    split: str  # "train", "val" or "test"
    findings: Findings
    report: str
    images: tuple[tuple[str, str], ...]  # (relpath under the images folder, projection)


@dataclass
class SyntheticSet:
    """What `generate` wrote: the CSVs, the image folders (all, and each split's) and the studies."""

    root: Path
    seed: int
    phrasing: Phrasing
    studies: list[SyntheticStudy] = field(default_factory=list)

    @property
    def reports_csv(self) -> Path:
        return self.root / "indiana_reports.csv"

    @property
    def projections_csv(self) -> Path:
        return self.root / "indiana_projections.csv"

    @property
    def split_csv(self) -> Path:
        return self.root / "r2gen_split.csv"

    def images(self, blank: bool = False) -> Path:
        """The folder with every split's images (`xrq train --images`); `blank`: the uniform grey copies."""
        return self.root / ("blank" if blank else "images")

    def split_images(self, split: str, blank: bool = False) -> Path:
        """One split's images only (what `xrq submit` is given)."""
        return self.images(blank) / split

    def truth(self, split: str | None = None) -> dict[str, str]:
        return {s.uid: s.report for s in self.studies if split is None or s.split == split}


def generate(out: str | Path, *, seed: int, n_train: int, n_val: int, n_test: int, repository: str | Path,
             size: int = 256, blank: bool = True) -> SyntheticSet:
    """Write a seeded synthetic data set into `out` (which must not exist or be empty).

    Layout: indiana_reports.csv, indiana_projections.csv, r2gen_split.csv; images/{train,val,test}/ with
    `{uid}_IM-{uid:04d}-1001.png` (frontal) and `-2001.png` (lateral); with `blank`, blank/ holds the same
    file names as uniform grey pictures, for an image-blind run of the same training.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    backgrounds = load_backgrounds(repository, size)
    rng = random.Random(f"studies:{seed}")
    data = SyntheticSet(root, seed, Phrasing.from_seed(seed))
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    grey = Image.new("L", (size, size), 128)
    for number, split in enumerate(splits, start=1):
        uid = str(number)
        findings = sample_findings(rng)
        projections = ["Frontal"] + (["Lateral"] if rng.random() < P_LATERAL else [])
        images = []
        for projection in projections:
            name = f"{split}/{uid}_IM-{number:04d}-{1001 if projection == 'Frontal' else 2001}.png"
            background = rng.choice(backgrounds[projection])
            picture = draw(background, findings, projection, rng, size)
            for folder, content in ((data.images(), picture), *(((data.images(True), grey),) if blank else ())):
                (folder / split).mkdir(parents=True, exist_ok=True)
                content.save(folder / name, optimize=False, compress_level=1)
            images.append((name, projection))
        data.studies.append(SyntheticStudy(uid, split, findings, report(findings, data.phrasing), tuple(images)))
    _write_csvs(data)
    return data


def _mesh(findings: Findings) -> str:
    """IU-style MeSH terms: "normal", or the findings joined by ";"."""
    terms = []
    if findings.opacity:
        side, zone = findings.opacity.split()
        terms.append(f"Opacity/lung/{zone} lobe/{side}")
    if findings.effusion:
        terms.append(f"Pleural Effusion/{findings.effusion}")
    if findings.cardiomegaly:
        terms.append("Cardiomegaly")
    return ";".join(terms) or "normal"


def _write_csvs(data: SyntheticSet) -> None:
    with data.reports_csv.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"])
        for s in data.studies:
            mesh = _mesh(s.findings)
            impression = "No acute cardiopulmonary abnormality." if s.findings.normal else mesh.replace(";", ". ")
            view = "Xray Chest PA and Lateral" if len(s.images) > 1 else "Xray Chest PA"
            out.writerow([s.uid, mesh, mesh, view, "Synthetic study.", "None.", s.report, impression])
    with data.projections_csv.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["uid", "filename", "projection"])
        out.writerows([s.uid, Path(name).name, projection] for s in data.studies for name, projection in s.images)
    with data.split_csv.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["uid", "r2gen_id", "split"])
        out.writerows([s.uid, f"synthetic_{s.uid}", s.split] for s in data.studies)


# --- laterality -----------------------------------------------------------------------------------

_SIDE_WORDS = {"right": ("right",), "left": ("left",), "bilateral": ("right", "left"),
               "bilaterally": ("right", "left"), "both": ("right", "left")}
_LEVEL_WORDS = {"upper": "upper", "apex": "upper", "apical": "upper", "lower": "lower", "base": "lower",
                "basilar": "lower", "basal": "lower"}


def lateral_findings(text: str) -> dict[str, frozenset[str]]:
    """{finding: the sides (and "upper"/"lower" levels) said of it} for each positive lateralised finding.

    Read sentence by sentence: a sentence the labeller finds positive (or uncertain) for Lung Opacity
    or Pleural Effusion contributes the side words it contains ("bilateral" is both sides). A positive
    finding with no side word maps to the empty set: said, but not where.
    """
    found: dict[str, set[str]] = {}
    for sentence in SENTENCE_BREAK.split(text.lower()):
        labels = label(sentence)
        words = sentence.replace("-", " ").replace(".", " ").replace(",", " ").split()
        sides = {s for w in words for s in _SIDE_WORDS.get(w, ())}
        levels = {_LEVEL_WORDS[w] for w in words if w in _LEVEL_WORDS}
        for finding in LATERALISED:
            if is_positive(labels[finding]):
                found.setdefault(finding, set()).update(sides | (levels if finding == "Lung Opacity" else set()))
    return {k: frozenset(v) for k, v in found.items()}


def laterality(references: Mapping[str, str], hypotheses: Mapping[str, str]) -> dict[str, object]:
    """How often a lateralised finding that both texts report is put on the right side.

    Counted over (study, finding) pairs where the reference and the hypothesis are both positive for
    Lung Opacity or Pleural Effusion (detection itself is what clinical F1 measures): correct when the
    sides agree exactly; for opacities `zone_accuracy` also asks the level (upper/lower) to agree.
    Accuracies are None when there is no such pair.
    """
    pairs = correct = zones = 0
    per: dict[str, list[int]] = {f: [0, 0] for f in LATERALISED}
    for uid, hypothesis in hypotheses.items():
        ref, hyp = lateral_findings(references[uid]), lateral_findings(hypothesis)
        for finding in LATERALISED:
            if finding in ref and finding in hyp:
                same = _sides(ref[finding]) == _sides(hyp[finding])
                pairs, correct = pairs + 1, correct + same
                per[finding][0] += 1
                per[finding][1] += same
                zones += finding == "Lung Opacity" and ref[finding] == hyp[finding]
    opacities = per["Lung Opacity"][0]
    return {
        "accuracy": correct / pairs if pairs else None, "n": pairs,
        "per_finding": {f: {"accuracy": c / n if n else None, "n": n} for f, (n, c) in per.items()},
        "zone_accuracy": zones / opacities if opacities else None,
    }


def _sides(words: frozenset[str]) -> frozenset[str]:
    return frozenset(w for w in words if w in SIDES)


def distinct_ratio(references: Mapping[str, str], hypotheses: Mapping[str, str]) -> dict[str, float | int]:
    """Distinct reports written over distinct truths among the same studies (texts compared as given).

    Variety alone is not reading the image (random reports are all distinct), so `truths_written` also
    counts the distinct truths written word for word for a study that has them, and `written_ratio`
    sets that over the distinct truths.
    """
    uids: Sequence[str] = sorted(hypotheses)
    truths = len({references[u] for u in uids})
    written = len({hypotheses[u] for u in uids})
    right = len({references[u] for u in uids if hypotheses[u] == references[u]})
    return {"distinct_reports": written, "distinct_truths": truths, "ratio": written / truths if truths else 0.0,
            "truths_written": right, "written_ratio": right / truths if truths else 0.0}


def image_blind_f1_max(support: Mapping[str, int], studies: int) -> float:
    """The best clinical F1-macro (over the `OBSERVED` labels with support) that reports written without
    the image can expect, where `support` counts the studies positive for each label.

    A label said for a share q of studies regardless of the image has precision p (its prevalence) and
    recall q: F1 2pq/(p+q), which grows with q. So the best such system says No Finding for a share t
    of studies, picked at random, and every finding for the rest; the best t is searched on a grid.
    """
    present = [o for o in OBSERVED if support.get(o, 0) > 0]
    if not present or studies <= 0:
        return 0.0

    def f1(label: str, q: float) -> float:
        p = support[label] / studies
        return 2 * p * q / (p + q) if p + q else 0.0

    def macro(t: float) -> float:
        normal = f1("No Finding", t) if "No Finding" in present else 0.0
        return (normal + sum(f1(o, 1 - t) for o in present if o != "No Finding")) / len(present)

    return max(macro(i / 1000) for i in range(1001))
