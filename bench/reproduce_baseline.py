"""Reproduce the published constant baseline on the IU X-ray benchmark test split; print JSON.

The most frequent normalised training report (findings), emitted for every test study, scores
BLEU-1 0.242, BLEU-4 0.081, METEOR 0.120, ROUGE-L 0.312, CIDEr 0.344 in the literature. Those
numbers come out only under R2Gen's protocol, which this script follows:

- studies: the 590 test studies of r2gen_split.csv (all have findings and at least two images);
- text: the findings section, cleaned by R2Gen's clean_report_iu_xray (model.metrics.text.normalise);
- references: unk-mapped with the vocabulary of training words seen at least 3 times, and cut to
  59 tokens (R2Gen's max_seq_length 60 minus the bos id);
- hypothesis: the most frequent normalised training report, neither unk-mapped nor cut;
- scorers: pycocoevalcap Bleu(4), Meteor(), Rouge(), Cider() on those strings, no PTB tokenizer.

Usage: python -m bench.reproduce_baseline [--data-dir DIR] [--no-meteor]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

from model.datasets.iu import benchmark_findings, benchmark_split, read_iu, split_texts  # noqa: E402
from model.metrics.scoring import most_frequent_report, score  # noqa: E402
from model.metrics.text import MAX_REFERENCE_TOKENS, MIN_COUNT, Vocabulary  # noqa: E402

DEFAULT_DATA_DIR = REPO / "data" / "iu"
PUBLISHED = {"bleu_1": 0.242, "bleu_4": 0.081, "meteor": 0.120, "rouge_l": 0.312, "cider": 0.344}


def reproduce(
    reports_csv: Path,
    projections_csv: Path,
    split_csv: Path,
    with_meteor: bool = True,
    unk: bool = True,
    max_reference_tokens: int | None = MAX_REFERENCE_TOKENS,
) -> dict[str, Any]:
    """Score the most-frequent-report baseline on the benchmark test split; return a JSON-ready dict.

    `unk=False` or `max_reference_tokens=None` switch off a protocol step, to show what it is worth.
    """
    split = benchmark_split(split_csv)
    findings = benchmark_findings(read_iu(reports_csv, projections_csv), split)
    train = split_texts(findings, split, "train")
    test = split_texts(findings, split, "test")
    constant = most_frequent_report(train.values())
    scores = score(
        test,
        dict.fromkeys(test, constant),
        vocabulary=Vocabulary.from_reports(train.values(), MIN_COUNT) if unk else None,
        max_reference_tokens=max_reference_tokens,
        with_meteor=with_meteor,
    )
    return {
        "scores": scores.to_dict(),
        "published": PUBLISHED,
        "protocol": {
            "split": str(split_csv),
            "n_train": len(train),
            "n_test": len(test),
            "unk_min_count": MIN_COUNT if unk else None,
            "max_reference_tokens": max_reference_tokens,
            "hypothesis": constant,
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Parse paths, reproduce the baseline, print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder of the IU CSVs")
    parser.add_argument("--reports", type=Path, help="indiana_reports.csv (default: in --data-dir)")
    parser.add_argument("--projections", type=Path, help="indiana_projections.csv (default: in --data-dir)")
    parser.add_argument("--split", type=Path, help="r2gen_split.csv (default: in --data-dir)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java)")
    parser.add_argument("--no-unk", action="store_true", help="do not unk-map references (not R2Gen)")
    parser.add_argument("--no-truncate", action="store_true", help="do not cut references (not R2Gen)")
    args = parser.parse_args(argv)
    result = reproduce(
        args.reports or args.data_dir / "indiana_reports.csv",
        args.projections or args.data_dir / "indiana_projections.csv",
        args.split or args.data_dir / "r2gen_split.csv",
        with_meteor=not args.no_meteor,
        unk=not args.no_unk,
        max_reference_tokens=None if args.no_truncate else MAX_REFERENCE_TOKENS,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
