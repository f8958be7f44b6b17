"""Does `xrq train` learn to read the image? A synthetic conditioning benchmark, on a CPU, in minutes.

A decoder that ignores the image and writes the same few fluent reports for everyone still scores well
on BLEU and ROUGE-L. This generates a seeded synthetic data set (model/datasets/synthetic.py: findings drawn at
random into real radiographs, reports built from IU sentences that say exactly those findings), then,
as a user would, in a temporary folder:

    xrq truth import  reports.csv projections.csv --split-file split.csv
    xrq train         --images images/ --split benchmark ...      (the model)
    xrq train         --images blank/  --split benchmark ...      (the same training, images blanked)
    xrq submit        images/test --model model/best;  xrq submit blank/test --model blind/best
    xrq evaluate      --job ... --split test;  xrq evaluate --baseline most-frequent --split test

and prints the three side by side (the model's confidence and attention below): BLEU-1..4, ROUGE-L,
CIDEr, clinical findings F1 from xrq's labeller (macro over the observations a synthetic report can be
positive for, and per finding), laterality accuracy of the lateralised findings, and distinct reports
over distinct truths (and how many truths were written word for word). The image-blind run is what
the decoder alone can learn; the constant is the most frequent training report; `image_blind_f1_max`
is the best clinical F1 that any reports written without the image can expect on this test set
(every finding for most studies, "normal" for a few).

    python -m bench.conditioning --seed 0            # a table
    python -m bench.conditioning --seed 1 --json     # the same as JSON
    python -m bench.conditioning --size small        # the slow margin test's version (3.5 minutes)
    python -m bench.conditioning --seeds 100-109 --preset small-v2 --train-arg=--augment --json \
        --record bench/results/small-v2.jsonl          # fresh seeds in turn, each appended as it ends
    python -m bench.conditioning --size small --attention-picture effusion.png

Below the table: how well the model's confidence tells right reports from wrong ones (AUROC of the
stored confidence for "the findings are right": the same findings as the truth, on the same sides),
and where the sentences about an effusion looked (the share of their frontal attention map on the
half where the effusion was painted), with `xrq show --attention`'s picture of one such study.

Training is budgeted in steps, not seconds, so a seed gives the same numbers on any CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parent.parent

from model.datasets.synthetic import LATERALISED, OBSERVED, distinct_ratio, generate, image_blind_f1_max, laterality  # noqa: E402
from worker.resources import core_share, fixed_torch_threads  # noqa: E402

TARGETS = {"f1_macro": 0.8, "blind_f1_macro_max": 0.4, "laterality": 0.9, "distinct_ratio": 0.8}


@dataclass(frozen=True)
class Size:
    """How big a run is: studies per split and the training budget (identical for model and blind run)."""

    n_train: int
    n_val: int
    n_test: int
    steps: int
    preset: str = "small"
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 30
    max_tokens: int = 40
    init_std: float = 0.0  # the trainer's default: the preset's own


SIZES = {
    "full": Size(n_train=3000, n_val=32, n_test=160, steps=4500),
    "small": Size(n_train=1200, n_val=16, n_test=80, steps=1000),
}


def run(seed: int, size: Size, work: Path, device: str | None = None, train_args: tuple[str, ...] = (),
        blind: bool = True, picture: Path | None = None, trained_model: Path | None = None) -> dict[str, Any]:
    """Generate, train twice, report and score in `work`; the benchmark's whole result as a dict.

    `train_args` go to both trainings as they are (e.g. --augment); without `blind` there is no
    image-blind run (ablations: half the CPU), and the targets that need it are left out. `picture`:
    where to copy `xrq show --attention`'s picture of a test study with a painted effusion.
    `trained_model`: score this model (trained on this seed's data, e.g. a kept run's `model/best`)
    instead of training one; there is no image-blind run then."""
    timings: dict[str, float] = {}
    tic = time.perf_counter()
    data = generate(work / "data", seed=seed, n_train=size.n_train, n_val=size.n_val, n_test=size.n_test,
                    repository=REPO)
    timings["generate_s"] = time.perf_counter() - tic
    xrq = _Xrq(work)
    on = ("--device", device) if device else ()
    xrq("truth", "import", data.reports_csv, data.projections_csv, "--split-file", data.split_csv,
        "--collection", "synthetic", "--json")
    systems: dict[str, dict[str, Any]] = {}
    trainings = (("model", False), ("image_blind", True)) if blind and trained_model is None else (("model", False),)
    # The trainings run side by side, each on its share of the cores (never more threads than cores:
    # two trainings at OMP_NUM_THREADS=2 on a 2-core host took 3.5 h a seed instead of 0.5 h).
    threads = min(core_share(len(trainings)), fixed_torch_threads() or core_share(len(trainings)))
    tic = time.perf_counter()
    if trained_model is not None:
        (work / "model").mkdir()
        (work / "model" / "best").symlink_to(trained_model.resolve(), target_is_directory=True)
    running = {} if trained_model is not None else {name: xrq.start_threads(threads,
        "train", "--reports", data.reports_csv, "--projections", data.projections_csv, "--images", data.images(blank),
        "--split", "benchmark", "--split-file", data.split_csv, "--out", work / name, "--preset", size.preset,
        "--tokenizer", "train",
        "--seed", seed, "--max-steps", size.steps, "--batch-size", size.batch_size, "--lr", size.lr,
        "--warmup", size.warmup, "--init-std", size.init_std, "--dropout", 0, "--max-tokens", size.max_tokens,
        "--eval-every", size.steps, *on, *train_args, "--json") for name, blank in trainings}
    trained = {name: xrq.finish(process) for name, process in running.items()} or {"model": {"scores": {}}}
    timings["train_s"] = time.perf_counter() - tic
    jobs = {}
    for name, blank in trainings:
        tic = time.perf_counter()
        job = xrq("submit", data.split_images("test", blank), "--model", work / name / "best", *on, "--json")
        jobs[name] = job["job_id"]
        timings[f"submit_{name}_s"] = time.perf_counter() - tic
        systems[name] = _evaluate(xrq, work / "eval" / name, "--job", job["job_id"])
        systems[name]["val_loss"] = trained[name]["scores"].get("val_loss")
        systems[name]["last_train_loss"] = _last_loss(work / name / "metrics.jsonl")
    tic = time.perf_counter()
    evidence = _evidence(xrq, work, data, jobs["model"], picture)
    timings["evidence_s"] = time.perf_counter() - tic
    systems["constant"] = _evaluate(xrq, work / "eval" / "constant", "--baseline", "most-frequent")
    studies = {s: sum(x.split == s for x in data.studies) for s in ("train", "val", "test")}
    constant = systems["constant"]
    blind_max = image_blind_f1_max(constant["support"], constant["n_studies"])
    return {"seed": seed, "size": asdict(size), "train_args": list(train_args), "device": device or "default",
            "studies": studies,
            "phrasing": asdict(data.phrasing), "systems": systems, "image_blind_f1_max": blind_max,
            "targets": _targets(systems), "checks": _checks(systems, blind_max, studies["test"]), "evidence": evidence,
            "timings": {k: round(v, 1) for k, v in timings.items()}, "environment": environment(),
            **({"trained_model": str(trained_model)} if trained_model is not None else {})}


def _last_loss(metrics: Path) -> float | None:
    """The training loss of the last step in a run's metrics.jsonl (None if it has none, or no file)."""
    last = None
    if not metrics.exists():  # a model scored with --model: trained elsewhere
        return None
    with metrics.open() as rows:
        for line in rows:
            last = json.loads(line).get("loss", last)
    return last


def environment() -> dict[str, Any]:
    """What a result depends on beyond the code and the seed: the libraries' versions and the CPU's
    instruction set (its kernels round differently, and a training amplifies that)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name in ("torch", "transformers", "tokenizers", "numpy", "pillow", "pycocoevalcap"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _evaluate(xrq: _Xrq, out: Path, *source: Any) -> dict[str, Any]:
    """`xrq evaluate ... --split test -o out`, boiled down to the benchmark's figures."""
    out.parent.mkdir(parents=True, exist_ok=True)
    xrq("evaluate", *source, "--split", "test", "--collection", "synthetic", "--no-meteor", "-o", out, "--json")
    scored = json.loads((out / "evaluation.json").read_text())
    per = scored["clinical"]["per_observation"]
    refs = {u: s["reference"] for u, s in scored["per_study"].items()}
    hyps = {u: s["hypothesis"] for u, s in scored["per_study"].items()}
    present = [o for o in OBSERVED if per[o]["support"] > 0]  # macro over the labels the truth has
    return {
        **{k: scored[k] for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider")},
        "f1_macro": sum(per[o]["f1"] for o in present) / len(present),
        "f1_macro_14": scored["clinical"]["macro"]["f1"],
        "f1": {o: per[o]["f1"] for o in OBSERVED},
        "support": {o: per[o]["support"] for o in OBSERVED},
        "laterality": laterality(refs, hyps),
        "distinct": distinct_ratio(refs, hyps),
        "n_studies": scored["n_studies"],
        "example": hyps[sorted(hyps, key=int)[0]],
    }


def _evidence(xrq: _Xrq, work: Path, data: Any, job_id: int, picture: Path | None) -> dict[str, Any]:
    """Confidence and attention of the model's test reports (issue 20).

    - AUROC of the stored confidence for "the report's findings are right": the labeller's positive
      findings (of OBSERVED) equal the truth's, and each lateralised finding on the truth's side.
    - Where the "effusion" sentences looked: for each test study with a painted effusion whose report
      has an effusion sentence, the share of that sentence's frontal map on the painted half (image
      left is the patient's right); and `xrq show UID --attention`'s picture of the first of them.
    - Where the opacity sentences looked: the same for a painted opacity, on its half and in its zone
      (the half, upper or lower: ZONE_AREA of the image, what an even spread would put there).
    - For both, how often the map's hottest patch is in the painted half (zone): a map can have a clear
      peak on the finding and still spread most of its weight thinly over the rest of the image.
    Reads the reports from the database file as a user would (the documented `reports` table).
    """
    import sqlite3

    from model.datasets.synthetic import lateral_findings
    from model.imaging.images import decode
    from model.inference.attention import METHODS, attention_maps
    from model.metrics.calibration import auroc
    from model.metrics.labeller import is_positive, label
    from model.network.store import load

    with sqlite3.connect(work / "xrq.db") as db:
        rows = db.execute("SELECT s.uid, r.text, r.confidence, r.token_ids FROM reports r JOIN studies s "
                          "ON s.id = r.study_id WHERE r.job_id = ?", (job_id,)).fetchall()
    truth = data.truth("test")

    def right(reference: str, hypothesis: str) -> bool:
        ref, hyp = label(reference), label(hypothesis)
        same = all(is_positive(ref[o]) == is_positive(hyp[o]) for o in OBSERVED)
        return same and lateral_findings(reference) == lateral_findings(hypothesis)

    correct = [right(truth[uid], text) for uid, text, _, _ in rows]
    confidence = [float(c) for _, _, c, _ in rows]
    mean = {k: (sum(c for c, r in zip(confidence, correct, strict=True) if r == k) / max(1, correct.count(k)))
            for k in (True, False)}
    bundle = load(work / "model" / "best", device="cpu")
    studies = {s.uid: s for s in data.studies}
    maps: dict[str, dict[str, list[float]]] = {m: {"effusion": [], "opacity_side": [], "opacity_zone": [],
                                                   "effusion_peak": [], "opacity_zone_peak": []} for m in METHODS}
    shown = None
    for uid, text, _, token_ids in sorted(rows, key=lambda r: int(r[0])):
        found = studies[uid].findings
        lower = text.lower()
        effusion = found.effusion is not None and "effusion" in lower
        opacity = found.opacity is not None and any(w in lower for w in ("opacit", "airspace"))
        if not (effusion or opacity):
            continue
        views = [decode(data.images() / name) for name, _ in studies[uid].images]
        frontal_view = [projection for _, projection in studies[uid].images].index("Frontal")
        for method, got in maps.items():
            sentences = attention_maps(bundle, views, json.loads(token_ids), method=method).sentences
            if effusion and (painted := _frontal_map(sentences, frontal_view, "effusion")) is not None:
                got["effusion"].append(_on_side(painted, found.effusion))
                got["effusion_peak"].append(_on_side(_peak(painted), found.effusion))
                if shown is None and f"{found.effusion} pleural effusion" in lower:
                    shown = uid
            if opacity and (painted := _frontal_map(sentences, frontal_view, "opacit", "airspace")) is not None:
                side, zone = found.opacity.split()
                got["opacity_side"].append(_on_side(painted, side))
                got["opacity_zone"].append(_in_zone(painted, side, zone))
                got["opacity_zone_peak"].append(_in_zone(_peak(painted), side, zone))
    result: dict[str, Any] = {
        "auroc_confidence_findings_right": auroc(confidence, correct),
        "right": correct.count(True), "wrong": correct.count(False),
        "mean_confidence_right": mean[True], "mean_confidence_wrong": mean[False],
        **_shares(maps["attention"]),  # the raw cross-attention, what `xrq show --attention` draws by default
        "zone_share_if_uniform": ZONE_AREA,
        "relevance": _shares(maps["relevance"]),  # `--attention-method relevance`: carried back through the encoder
        "occlusion": _shares(maps["occlusion"]),  # `--attention-method occlusion`: what each patch holds up
        "attention_study": shown,
    }
    if shown is not None:
        out = work / "show" / f"{shown}.png"
        out.parent.mkdir(exist_ok=True)
        xrq.text("show", shown, "--job", job_id, "--attention", "-o", out)
        if picture is not None:
            shutil.copyfile(out.with_name(f"{shown}-attention.png"), picture)
            result["attention_picture"] = str(picture)
    return result


# The painted zone of an opacity in the frontal view: the side's half (image left is the patient's
# right) and the upper or lower part, split between the two zones' centres (synthetic.draw paints
# them at 0.36 and 0.56 of the height). A map spread evenly would put this share of itself there.
ZONE_SPLIT = 0.46
ZONE_AREA = 0.5 * ZONE_SPLIT


def _frontal_map(sentences: Any, frontal_view: int, *words: str) -> Any:
    """The mean frontal map of the sentences naming one of `words` (not a negation); None if none."""
    maps = [s.maps[frontal_view] for s in sentences
            if any(w in s.text.lower() for w in words) and "no " not in s.text.lower()]
    return sum(maps) / len(maps) if maps else None  # (rows, cols), sums to one


def _on_side(frontal: Any, side: str) -> float:
    """The share of a frontal map (sums to one) on the half where the patient's `side` is."""
    half = frontal.shape[1] // 2
    return float(frontal[:, :half].sum() if side == "right" else frontal[:, half:].sum())


def _in_zone(frontal: Any, side: str, zone: str) -> float:
    """The share of a frontal map in the painted zone: the side's half, above or below ZONE_SPLIT."""
    half, split = frontal.shape[1] // 2, round(frontal.shape[0] * ZONE_SPLIT)
    rows = slice(0, split) if zone == "upper" else slice(split, None)
    cols = slice(0, half) if side == "right" else slice(half, None)
    return float(frontal[rows, cols].sum())


def _peak(frontal: Any) -> Any:
    """A map with all its weight on the original's hottest patch (where a reader's eye goes first); none
    for a map of zeros (nothing in the view was needed: it has no hottest patch, and counts as a miss)."""
    import numpy as np

    out = np.zeros_like(frontal)
    if frontal.max() > 0:
        out[np.unravel_index(int(np.argmax(frontal)), frontal.shape)] = 1.0
    return out


def _shares(got: dict[str, list[float]]) -> dict[str, Any]:
    """One method's figures: the mean share of the maps on the painted half (zone), and how often the
    hottest patch is there."""
    return {"effusion_studies": len(got["effusion"]),
            "effusion_map_on_painted_half": _mean(got["effusion"]),
            "effusion_maps_mostly_on_painted_side": _mean([x > 0.5 for x in got["effusion"]]),
            "effusion_peak_on_painted_half": _mean(got["effusion_peak"]),
            "opacity_studies": len(got["opacity_zone"]),
            "opacity_map_on_painted_half": _mean(got["opacity_side"]),
            "opacity_map_in_painted_zone": _mean(got["opacity_zone"]),
            "opacity_peak_in_painted_zone": _mean(got["opacity_zone_peak"])}


def _mean(values: list[float] | list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def _targets(systems: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The issue's targets, each True when met."""
    model, constant = systems["model"], systems["constant"]
    blind = systems.get("image_blind", constant)
    lat = model["laterality"]["accuracy"]
    return {
        "model_f1_macro>=0.8": model["f1_macro"] >= TARGETS["f1_macro"],
        "blind_and_constant_f1_macro<=0.4": max(blind["f1_macro"], constant["f1_macro"])
        <= TARGETS["blind_f1_macro_max"],
        "laterality>=0.9": lat is not None and lat >= TARGETS["laterality"],
        "distinct>=0.8_of_truths": model["distinct"]["ratio"] >= TARGETS["distinct_ratio"],
    }


def _checks(systems: dict[str, dict[str, Any]], blind_max: float, n_test: int) -> dict[str, bool]:
    """Beyond the issue's targets: the model beats the best that reports written without the image can
    expect, writes most distinct truths word for word (not just many reports), and every test study
    got a report from both trained systems (none dropped out of the scores)."""
    model = systems["model"]
    return {
        "model_f1_macro>image_blind_f1_max": model["f1_macro"] > blind_max,
        "truths_written>=0.8": model["distinct"]["written_ratio"] >= 0.8,
        "every_test_study_reported": all(systems[k]["n_studies"] == n_test for k in ("model", "image_blind")
                                         if k in systems),
    }


class _Xrq:
    """Runs the real `xrq` console script against one SQLite file, in-process (no broker); JSON back."""

    def __init__(self, work: Path) -> None:
        found = Path(sys.executable).parent / "xrq"
        exe = str(found) if found.exists() else shutil.which("xrq")
        if exe is None:
            raise SystemExit("No `xrq` command: install the project (pip install -e .) first.")
        self.exe: str = exe
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("XRQ_")}
        self.env.update({"XRQ_DATABASE_URL": f"sqlite:///{work / 'xrq.db'}", "HF_HUB_OFFLINE": "1",
                         "TOKENIZERS_PARALLELISM": "false"})
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.work = work

    def __call__(self, *args: Any) -> Any:
        return self.finish(self.start(*args))

    def start(self, *args: Any) -> subprocess.Popen[str]:
        """Start `xrq ARGS` (one thread, as OMP_NUM_THREADS says); `finish` waits for its JSON."""
        return self.start_threads(None, *args)

    def start_threads(self, threads: int | None, *args: Any) -> subprocess.Popen[str]:
        """Start `xrq ARGS` with torch on `threads` threads (None: as OMP_NUM_THREADS says)."""
        command = [self.exe, *map(str, args)]
        env = self.env if threads is None else {**self.env, "OMP_NUM_THREADS": str(threads)}
        return subprocess.Popen(command, cwd=self.work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def finish(self, process: subprocess.Popen[str]) -> Any:
        return json.loads(self._output(process).strip().splitlines()[-1])

    def text(self, *args: Any) -> str:
        """Run `xrq ARGS` and return what it printed (for commands without --json)."""
        return self._output(self.start(*args))

    @staticmethod
    def _output(process: subprocess.Popen[str]) -> str:
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            command = " ".join(cast(list[str], process.args))
            raise SystemExit(f"{command} failed ({process.returncode}):\n{stderr[-3000:]}")
        return stdout


def table(result: dict[str, Any]) -> str:
    """The three systems side by side, one metric a row."""
    names = tuple(n for n in ("model", "image_blind", "constant") if n in result["systems"])
    systems = [result["systems"][n] for n in names]
    rows: list[tuple[str, list[Any]]] = [
        *((k.upper().replace("_", "-"), [s[k] for s in systems]) for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4")),
        ("ROUGE-L", [s["rouge_l"] for s in systems]), ("CIDEr", [s["cider"] for s in systems]),
        ("clinical F1 macro", [s["f1_macro"] for s in systems]),
        *((f"  F1 {o}", [s["f1"][o] for s in systems]) for o in OBSERVED),
        ("clinical F1 macro (all 14)", [s["f1_macro_14"] for s in systems]),
        ("laterality accuracy", [s["laterality"]["accuracy"] for s in systems]),
        ("  (pairs)", [s["laterality"]["n"] for s in systems]),
        *((f"  {o} side", [s["laterality"]["per_finding"][o]["accuracy"] for s in systems]) for o in LATERALISED),
        ("opacity zone accuracy", [s["laterality"]["zone_accuracy"] for s in systems]),
        ("distinct / distinct truths", [f"{s['distinct']['distinct_reports']}/{s['distinct']['distinct_truths']}"
                                        for s in systems]),
        ("truths written word for word", [s["distinct"]["truths_written"] for s in systems]),
    ]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"Synthetic conditioning benchmark, seed {result['seed']}: {result['studies']} studies, "
             f"{result['size']['steps']} steps", "".ljust(width) + "".join(n.rjust(14) for n in names)]
    for label, values in rows:
        cells = ["-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in values]
        lines.append(label.ljust(width) + "".join(c.rjust(14) for c in cells))
    lines.append(f"the best clinical F1 macro without the image (expected): {result['image_blind_f1_max']:.3f}")
    lines.append("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["targets"].items()))
    lines.append("checks: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["checks"].items()))
    e = result["evidence"]

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines.append(f"confidence: AUROC for the findings being right {num(e['auroc_confidence_findings_right'])} "
                 f"({e['right']} right, {e['wrong']} wrong; mean confidence {num(e['mean_confidence_right'])} "
                 f"vs {num(e['mean_confidence_wrong'])})")
    lines.append(f"attention: effusion sentences put {num(e['effusion_map_on_painted_half'])} of their frontal map "
                 f"on the painted half ({num(e['effusion_maps_mostly_on_painted_side'])} of {e['effusion_studies']} "
                 f"studies mostly there, the hottest patch there in {num(e.get('effusion_peak_on_painted_half'))}); "
                 f"picture: study {e['attention_study']}")
    if "opacity_studies" in e:
        lines.append(f"attention: opacity sentences put {num(e['opacity_map_on_painted_half'])} of their frontal map "
                     f"on the painted half and {num(e['opacity_map_in_painted_zone'])} in the painted zone "
                     f"({num(e['zone_share_if_uniform'])} if spread evenly; the hottest patch there in "
                     f"{num(e['opacity_peak_in_painted_zone'])} of {e['opacity_studies']} studies)")
    for method in ("relevance", "occlusion"):
        if method in e:
            r = e[method]
            lines.append(f"{method}: effusion {num(r['effusion_map_on_painted_half'])} on the painted half (the "
                         f"hottest patch there in {num(r['effusion_peak_on_painted_half'])}); opacity "
                         f"{num(r['opacity_map_on_painted_half'])} on its half, "
                         f"{num(r['opacity_map_in_painted_zone'])} in its zone (the hottest patch there in "
                         f"{num(r['opacity_peak_in_painted_zone'])})")
    lines.append(f"timings: {result['timings']}")
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The model's figures over seeds: each one's mean, population standard deviation, min and max."""
    figures = {"f1_macro": [r["systems"]["model"]["f1_macro"] for r in results],
               "laterality": [r["systems"]["model"]["laterality"]["accuracy"] or 0.0 for r in results],
               "opacity_zone": [r["systems"]["model"]["laterality"]["zone_accuracy"] or 0.0 for r in results],
               "cpu_min": [r["timings"]["cpu_s"] / 60 for r in results]}
    return {"seeds": [r["seed"] for r in results],
            **{k: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "min": min(v), "max": max(v)}
               for k, v in figures.items()}}


def seeds(text: str) -> list[int]:
    """"100-109" → 100..109; "3,5,8" → those; "4" → [4]."""
    found: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        found += list(range(int(low), int(high or low) + 1))
    if not found:
        raise argparse.ArgumentTypeError(f"no seed in {text!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="one seed, one data set, one result")
    parser.add_argument("--seeds", type=seeds, help="several seeds in turn: 100-109 or 3,5,8 (wins over --seed)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="full: under 15 min on 2 CPU cores")
    parser.add_argument("--steps", type=int, help="override the size's training steps")
    parser.add_argument("--preset", help="the model preset to train  [default: the size's, small]")
    parser.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                        help="passed to both `xrq train` runs as is, e.g. --train-arg=--augment (repeatable)")
    parser.add_argument("--no-blind", action="store_true", help="skip the image-blind training (ablations)")
    parser.add_argument("--record", type=Path, metavar="FILE.jsonl",
                        help="append each seed's result to this file as one JSON line, as soon as it ends")
    parser.add_argument("--device", help="cuda, cpu ... for training and reporting  [default: cuda if available]")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it, instead of a temporary one")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--model", type=Path, metavar="DIR",
                        help="score this trained model (a kept run's SEED/model/best) instead of training one; "
                             "give the seed it was trained on")
    parser.add_argument("--attention-picture", type=Path, metavar="PNG",
                        help="copy the attention picture of a study with a painted effusion here")
    args = parser.parse_args(argv)
    if args.model and args.seeds and len(args.seeds) > 1:
        parser.error("--model scores one model: give the one --seed it was trained on")
    changes = {k: v for k, v in (("steps", args.steps), ("preset", args.preset)) if v is not None}
    size = Size(**{**asdict(SIZES[args.size]), **changes})
    results = []
    for seed in args.seeds or [args.seed]:
        tic, cpu = time.perf_counter(), _children_cpu()
        if args.keep:
            (args.keep / str(seed)).mkdir(parents=True)
            result = run(seed, size, (args.keep / str(seed)).resolve(), args.device, tuple(args.train_arg),
                         not args.no_blind, args.attention_picture, args.model)
        else:
            with tempfile.TemporaryDirectory(prefix="xrq-conditioning-") as folder:
                result = run(seed, size, Path(folder), args.device, tuple(args.train_arg), not args.no_blind,
                             args.attention_picture, args.model)
        result["timings"]["total_s"] = round(time.perf_counter() - tic, 1)
        result["timings"]["cpu_s"] = round(_children_cpu() - cpu, 1)  # every xrq command's CPU time, all cores
        if args.record:
            args.record.parent.mkdir(parents=True, exist_ok=True)
            with args.record.open("a") as out:
                out.write(json.dumps(result) + "\n")
        results.append(result)
        if not args.json:
            print(table(result), flush=True)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"runs": results, "summary": summary(results)},
                         indent=2))
    elif len(results) > 1:
        print(json.dumps(summary(results), indent=2))
    return 0


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (the xrq commands)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


if __name__ == "__main__":
    raise SystemExit(main())
