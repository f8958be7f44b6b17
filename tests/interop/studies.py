"""Small DICOM studies for the listener tests: copies of a real CR (the RSNA file, JPEG baseline) with
UIDs of their own, so each test sends a study nobody sent before."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.conftest import DATA

SOURCE = DATA / "dicom" / "rsna_pneumonia_cr.dcm"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_study(folder: Path, n: int = 2, *, study_uid: str | None = None, sop_class: str | None = None,
               modality: str | None = None) -> tuple[str, list[Path]]:
    """`n` instances of one new study (one series) in `folder`; (StudyInstanceUID, their paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i in range(n):
        ds = pydicom.dcmread(SOURCE)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.PatientName, ds.PatientID = "Doe^Jane", "PID-4711"
        if sop_class is not None:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        if modality is not None:
            ds.Modality = modality
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study_uid, paths
