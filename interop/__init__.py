"""DICOM and FHIR: Structured Reports and DiagnosticReports built from plain data, and the DICOM network
(the Storage SCP behind `xrq listen`, C-STORE and STOW-RS behind `xrq push`).

Imports nothing from cli/, worker/, db/ or model/: the worker moves data between them.
"""
