"""DICOM Structured Reports of xrq's reports: TID 2000 Basic Diagnostic Imaging Report, built with highdicom.

The document tree (PS3.16 TID 2000):

    CONTAINER 18748-4 (LN) "Diagnostic imaging report"            template 2000, SEPARATE
      HAS CONCEPT MOD   CODE 121049 Language of Content Item and Descendants = en-US   (TID 1204)
      HAS OBS CONTEXT   CODE 121005 Observer Type = Device                            (TID 1002)
      HAS OBS CONTEXT   UIDREF 121012 Device Observer UID, TEXT 121013 name (the model),
                        121014 manufacturer (xrq), 121015 model name (xrq VERSION),
                        121016 serial number (the model's fingerprint)                (TID 1004)
      CONTAINS          CONTAINER 121070 Findings:    TEXT 121106 Comment (the machine-draft notice),
                                                       TEXT 121071 Finding (the report)
      CONTAINS          CONTAINER 121072 Impressions: TEXT 121073 Impression (when the text has one)

The patient and study modules are the source images' (same StudyInstanceUID and accession number),
in a new SR series of the model; Current Requested Procedure Evidence lists every source instance.
A draft is PARTIAL and UNVERIFIED; a signed version is a new instance, COMPLETE and VERIFIED, with the
draft in its Predecessor Documents. UIDs are derived (interop.uids): writing again replaces.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import validate_value

from interop import uids
from interop.data import MACHINE_DRAFT_NOTICE, ReportDoc, Signed, sections

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
SERIES_NUMBER = 9901  # high, so viewers list xrq's series after the images
SERIES_DESCRIPTION = "xrq report drafts"
REPORT_TITLE = CodedConcept("18748-4", "LN", "Diagnostic imaging report")
_FINDINGS = CodedConcept("121070", "DCM", "Findings")
_FINDING = CodedConcept("121071", "DCM", "Finding")
_IMPRESSIONS = CodedConcept("121072", "DCM", "Impressions")
_IMPRESSION = CodedConcept("121073", "DCM", "Impression")
_COMMENT = CodedConcept("121106", "DCM", "Comment")
_ENGLISH = CodedConcept("en-US", "RFC5646", "English (United States)")
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                        "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def _text(name: CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _section(name: CodedConcept, items: list[hd.sr.TextContentItem]) -> hd.sr.ContainerContentItem:
    section = hd.sr.ContainerContentItem(name=name, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                                         is_content_continuous=True)
    section.ContentSequence = hd.sr.ContentSequence(items)
    return section


def content_tree(doc: ReportDoc, text: str, *, notice: bool) -> hd.sr.ContainerContentItem:
    """The TID 2000 tree of a report text (see the module's docstring)."""
    findings, impression = sections(text)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.device_uid(doc.model.fingerprint), name=doc.model.name, manufacturer_name="xrq",
        model_name=f"xrq {doc.model.xrq_version}", serial_number=doc.model.fingerprint)
    observer = hd.sr.ObserverContext(observer_type=codes.cid270.Device, observer_identifying_attributes=device)
    first: list[hd.sr.TextContentItem] = []
    if notice:
        first.append(_text(_COMMENT, MACHINE_DRAFT_NOTICE.format(model=doc.model.name,
                                                                 version=doc.model.xrq_version)))
    children: list[Any] = [*hd.sr.LanguageOfContentItemAndDescendants(_ENGLISH), *observer,
                               _section(_FINDINGS, [*first, _text(_FINDING, findings or "(empty report)")])]
    if impression:
        children.append(_section(_IMPRESSIONS, [_text(_IMPRESSION, impression)]))
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE, template_id="2000", is_content_continuous=False)
    root.ContentSequence = hd.sr.ContentSequence(children)
    return root


def _evidence(sources: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source headers with the patient and study modules' type 2 attributes present
    (highdicom reads them as attributes); one per SOP instance."""
    seen: set[str] = set()
    out: list[Dataset] = []
    for ds in sources:
        if ds.SOPInstanceUID in seen:
            continue
        seen.add(ds.SOPInstanceUID)
        item = copy.deepcopy(ds)
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in item:
                setattr(item, keyword, "")
        out.append(item)
    return out


def _build(doc: ReportDoc, sources: Sequence[Dataset], text: str, *, version: str, instance_number: int,
           signed: Signed | None, predecessor: Sequence[Dataset] | None) -> Dataset:
    evidence = _evidence(sources)
    when = signed.signed_at if signed is not None else doc.created_at
    charset = None if text.isascii() else "ISO_IR 192"
    with warnings.catch_warnings():
        # highdicom warns about odd person names quoting them: patient data never goes to a log.
        warnings.simplefilter("ignore", UserWarning)
        sr = _comprehensive(doc, evidence, text, version, instance_number, signed, predecessor, when, charset)
    _repair_copied(sr)
    sr.ManufacturerModelName = f"xrq {doc.model.xrq_version}"
    sr.SoftwareVersions = doc.model.xrq_version
    if signed is not None:
        sr.VerifyingObserverSequence[0].VerificationDateTime = signed.signed_at.strftime("%Y%m%d%H%M%S")
    return sr


def _comprehensive(doc: ReportDoc, evidence: list[Dataset], text: str, version: str, instance_number: int,
                   signed: Signed | None, predecessor: Sequence[Dataset] | None, when: datetime,
                   charset: str | None) -> Dataset:
    study_uid = evidence[0].StudyInstanceUID
    extra: dict[str, Any] = {"specific_character_set": charset} if charset else {}
    return hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=content_tree(doc, text, notice=signed is None),
        series_instance_uid=uids.sr_series_uid(study_uid, doc.model.fingerprint),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance_uid(study_uid, doc.model.fingerprint, version, doc.study_fingerprint),
        instance_number=instance_number,
        manufacturer="xrq",
        is_complete=signed is not None,
        is_final=signed is not None,
        is_verified=signed is not None,
        verifying_observer_name=signed.reviewer if signed is not None else None,
        verifying_organization=signed.organization if signed is not None else None,
        previous_versions=list(predecessor) if predecessor else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SERIES_DESCRIPTION,
        content_date=when.date(),
        content_time=when.time().replace(microsecond=0),
        **extra,
    )


_AGE = re.compile(r"^\d{3}[DWMY]$")


def _repair_copied(sr: Dataset) -> None:
    """Attributes copied from the source that break their VR (an RSNA file's Patient's Age `62`): an age
    in years is written the way the VR says (`062Y`); any other invalid one is left out (type 3) or
    emptied (type 2), so the SR passes dciodvfy whatever the modality wrote."""
    age = str(sr.get("PatientAge") or "")
    if age and not _AGE.match(age):
        if age.isdigit() and len(age) <= 3:
            sr.PatientAge = f"{int(age):03d}Y"
        else:
            del sr.PatientAge
    for elem in list(sr):
        if elem.VR in ("SQ", "UN", "PN") or not isinstance(elem.value, str):
            continue
        try:
            validate_value(elem.VR, elem.value, config.RAISE)
        except (ValueError, TypeError):
            if elem.keyword in _TYPE2_PATIENT_STUDY:
                sr[elem.tag].value = ""
            else:
                del sr[elem.tag]


def draft_sr(doc: ReportDoc, sources: Sequence[Dataset]) -> Dataset:
    """The machine draft's SR: PARTIAL, UNVERIFIED, PRELIMINARY, with the machine-draft notice."""
    earlier = _earlier_draft(doc, sources[0].StudyInstanceUID)
    return _build(doc, sources, doc.text, version="draft", instance_number=1, signed=None,
                  predecessor=[earlier] if earlier is not None else None)


def _earlier_draft(doc: ReportDoc, study_uid: str) -> Dataset | None:
    """The draft SR of the study's earlier report by the same model (before a late image came), as a
    reference: the new draft names it in its Predecessor Documents Sequence."""
    if not doc.previous_study_fingerprint:
        return None
    ref = Dataset()
    ref.SOPClassUID = SR_CLASS
    ref.SOPInstanceUID = uids.sr_instance_uid(study_uid, doc.model.fingerprint, "draft", doc.previous_study_fingerprint)
    ref.StudyInstanceUID = study_uid
    ref.SeriesInstanceUID = uids.sr_series_uid(study_uid, doc.model.fingerprint)
    return ref


def signed_sr(doc: ReportDoc, sources: Sequence[Dataset], signed: Signed, earlier: Sequence[Signed] = ()) -> Dataset:
    """A signed version's SR: a new instance (its UID from `signed.version`), COMPLETE, VERIFIED, FINAL,
    the reviewer as verifying observer, and as predecessor documents the draft SR and, for an addendum,
    the SRs of the `earlier` signed versions it supersedes (Instance Numbers 2, 3, ... in signing order)."""
    draft = draft_sr(doc, sources)
    previous = [draft] + [_build(doc, sources, e.text, version=f"signed:{e.version}", instance_number=2 + i,
                                 signed=e, predecessor=[draft]) for i, e in enumerate(earlier)]
    return _build(doc, sources, signed.text, version=f"signed:{signed.version}", instance_number=2 + len(earlier),
                  signed=signed, predecessor=previous)


def report_text(sr: Dataset) -> str:
    """The report text an SR holds (its findings, then `IMPRESSION: ...` when it has one): what a test
    or a user reads back from a PACS."""
    parts: dict[str, str] = {}
    for section in sr.ContentSequence:
        if section.ValueType != "CONTAINER":
            continue
        for item in section.get("ContentSequence", []):
            code = item.ConceptNameCodeSequence[0].CodeValue
            if code in ("121071", "121073"):
                parts[code] = item.TextValue
    text = parts.get("121071", "")
    if "121073" in parts:
        text = f"{text} IMPRESSION: {parts['121073']}"
    return text
