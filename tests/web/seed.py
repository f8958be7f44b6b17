"""Drafts to review, without a model: real X-ray files (PNG and a DICOM), recorded as a job the way
`xrq submit` records one, with the reports a model would have written and ground truth for some."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from db.engine import Database
from db.jobs import BatchOutcome, ImageIn, StudyIn, record_job, record_results, upsert_model
from db.schema import Report, Study, Truth, utcnow

REPO = Path(__file__).resolve().parents[2]
STUDIES = {  # uid -> files (from examples/iu and tests/data/dicom)
    "1000": ["examples/iu/1000_IM-0003-1001.dcm.png", "examples/iu/1000_IM-0003-2001.dcm.png"],
    "1001": ["examples/iu/1001_IM-0004-1001.dcm.png"],
    "1002": ["examples/iu/1002_IM-0004-1001.dcm.png", "examples/iu/1002_IM-0004-2001.dcm.png"],
    "rsna": ["tests/data/dicom/rsna_pneumonia_cr.dcm"],
}
DRAFTS = {
    "1000": "The heart is normal in size. The lungs are clear. No pleural effusion.",
    "1001": "Mild cardiomegaly. Small left pleural effusion.",
    "1002": "No acute cardiopulmonary abnormality.",
    "rsna": "Patchy opacity in the right lower lobe, concerning for pneumonia.",
}
TRUTH = {"1000": ("The cardiomediastinal silhouette is normal. The lungs are clear.", "No acute disease.")}


@dataclass(frozen=True)
class Seeded:
    job_id: int
    model_id: int
    report_ids: dict[str, int]  # uid -> report id


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seed(db: Database, folder: Path, *, model: str = "demo", drafts: dict[str, str] | None = None) -> Seeded:
    """Copy the files into `folder`, record a job of its studies and one draft each; the newest draft is
    the last uid of STUDIES (one second between them, so the worklist's order is known)."""
    texts = drafts or DRAFTS
    folder.mkdir(parents=True, exist_ok=True)
    studies = []
    for uid, files in STUDIES.items():
        images = []
        for name in files:
            target = folder / uid / Path(name).name
            target.parent.mkdir(exist_ok=True)
            shutil.copy(REPO / name, target)
            images.append(ImageIn(str(target), f"{uid}/{target.name}", sha256(target), target.stat().st_size))
        fingerprint = hashlib.sha256("".join(i.sha256 or "" for i in images).encode()).hexdigest()
        studies.append(StudyIn(fingerprint, uid, "folder", images))
    model_id = upsert_model(db, name=model, fingerprint=hashlib.sha256(model.encode()).hexdigest(), path=None,
                            meta={})
    job = record_job(db, source=str(folder), model_id=model_id, group_by="folder", batch_size=8, settings={},
                     studies=studies)
    with db.session() as s:
        ids = {uid: sid for uid, sid in s.execute(select(Study.uid, Study.id).where(
            Study.fingerprint.in_([st.fingerprint for st in studies])))}
    record_results(db, job_id=job.job_id, model_id=model_id,
                   outcome=BatchOutcome(reports={ids[uid]: texts[uid] for uid in STUDIES}), settings={})
    now = utcnow()
    report_ids = {}
    with db.session() as s:
        for n, uid in enumerate(STUDIES):
            when = now - timedelta(seconds=len(STUDIES) - n)
            s.execute(update(Report).where(Report.study_id == ids[uid], Report.model_id == model_id)
                      .values(created_at=when))
            report_ids[uid] = s.scalar(select(Report.id).where(Report.study_id == ids[uid],
                                                                Report.model_id == model_id))
        for uid, (findings, impression) in TRUTH.items():
            if s.query(Truth).filter_by(collection="iu", uid=uid).first() is None:
                s.add(Truth(collection="iu", uid=uid, findings=findings, impression=impression))
    return Seeded(job.job_id, model_id, report_ids)
