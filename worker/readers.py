"""Reader studies as services: make one, and compute its results (db/readers.py, model/reader_stats.py)."""

from __future__ import annotations

from typing import Any

from db import readers as db_readers
from db.engine import Database
from db.review_schema import ERROR_KINDS


def results(db: Database, name: str) -> dict[str, Any]:
    """`xrq study results NAME`: preference rates with Wilson 95% intervals, errors per report by kind,
    inter-reader agreement, and how many of the cases each reader has done."""
    from model.metrics.readers import summarise

    data = db_readers.answers(db, name)
    summary = summarise(data.sources, data.readers, data.answers, data.errors, ERROR_KINDS)
    done = {r: sum(1 for (_, who) in data.answers if who == r) for r in data.readers}
    return {"study": data.name, "sources": list(data.sources), "cases": data.cases, "readers": data.readers,
            "answered": done, **summary}


def results_text(r: dict[str, Any]) -> str:
    """The results for people."""
    from model.printable import printable

    a, b = r["sources"]
    lines = [f"Reader study {printable(r['study'])}: {printable(a)} vs {printable(b)}, {r['cases']} cases, "
             f"{len(r['readers'])} readers, {r['answers']} answers"]
    lines.append("  readers: " + ", ".join(f"{printable(k)} {v}/{r['cases']}" for k, v in r["answered"].items()))
    lines.append("  preferred (95% CI, Wilson):")
    for choice, p in r["preference"].items():
        shown = "n/a" if p["rate"] is None else f"{p['rate']:.1%} [{p['ci95'][0]:.1%}, {p['ci95'][1]:.1%}]"
        lines.append(f"    {printable(choice):<24} {p['count']:>4}/{p['of']:<4} {shown}")
    lines.append("  errors per report (clinically significant):")
    for source, e in r["errors"].items():
        if e["total_per_report"] is None:
            continue
        kinds = ", ".join(f"{k} {v['per_report']:.2f} ({v['significant']})" for k, v in e["by_kind"].items()
                          if v["per_report"])
        lines.append(f"    {printable(source):<24} {e['total_per_report']:.2f} ({e['significant_per_report']:.2f})"
                     + (f": {kinds}" if kinds else ""))
    ag = r["agreement"]
    if ag["kappa"] is not None:
        name = "Cohen's" if ag["statistic"] == "cohen" else "Fleiss'"
        lines.append(f"  agreement: {name} kappa {ag['kappa']:.3f} over {ag['cases_rated_by_all']} cases rated by all")
    return "\n".join(lines)
