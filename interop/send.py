"""Sending documents to a destination: DICOM C-STORE to a PACS, or STOW-RS to a DICOMweb server.

A destination is written `dicom://AET@HOST:PORT` or `http(s)://HOST/DICOMWEB-ROOT`; `Destination.text`
is what deliveries are recorded under (credentials never are: a URL's user:password is refused, a
bearer token comes from a variable). Each sender says "delivered" only on the peer's success (a
C-STORE success or warning status, an HTTP 2xx with no failed SOP in the STOW-RS response).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from pydicom.dataset import Dataset

from interop.errors import DeliveryError, DestinationError, UnreachableError

log = logging.getLogger(__name__)

_DICOM = re.compile(r"^dicom://(?P<aet>[^@/\\]{1,16})@(?P<host>[A-Za-z0-9.\-\[\]:]+):(?P<port>\d{1,5})/?$")
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
_SUCCESS_OR_WARNING = {0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Destination:
    kind: str  # dicom | dicomweb
    text: str  # the destination as recorded
    aet: str = ""
    host: str = ""
    port: int = 0
    url: str = ""


def parse_destination(text: str) -> Destination:
    """A destination from its text; DestinationError says what is expected."""
    text = text.strip()
    found = _DICOM.match(text)
    if found:
        port = int(found["port"])
        if not 1 <= port <= 65535:
            raise DestinationError(f"{text}: the port must be 1 to 65535")
        return Destination("dicom", text, aet=found["aet"].strip(), host=found["host"].strip("[]"), port=port)
    parts = urlsplit(text)
    if parts.scheme in ("http", "https") and parts.hostname:
        if parts.username or parts.password:
            raise DestinationError("a destination URL with a user or password: give the bearer token in "
                                   "XRQ_PUSH_TOKEN instead")
        return Destination("dicomweb", text.rstrip("/"), url=text.rstrip("/"))
    raise DestinationError(f"{text!r} is not a destination: give dicom://AET@HOST:PORT (C-STORE) or "
                           "https://HOST/PATH (DICOMweb STOW-RS)")


class Sender:
    """Sends datasets to one destination; open once, send many, close (a context manager)."""

    def __init__(self, dest: Destination, *, calling_aet: str = "XRQ", token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.dest, self.calling_aet, self.token, self.timeout = dest, calling_aet, token, timeout
        self._assoc: Any = None
        self._client: Any = None

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._assoc is not None:
            try:
                if self._assoc.is_established:
                    self._assoc.release()
            finally:
                self._assoc = None

    def send(self, ds: Dataset) -> None:
        """Deliver one dataset; DeliveryError when refused, UnreachableError when the peer cannot be reached."""
        if self.dest.kind == "dicom":
            self._c_store(ds)
        else:
            self._stow(ds)

    def _associate(self) -> Any:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]

        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout  # a host that drops packets: not the OS's minutes-long TCP wait
        ae.add_requested_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(self.dest.host, self.dest.port, ae_title=self.dest.aet)
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "cannot be reached"
            raise UnreachableError(f"the PACS {self.dest.text} {why}")
        self._assoc = assoc
        return assoc

    def _c_store(self, ds: Dataset) -> None:
        assoc = self._associate()
        status = assoc.send_c_store(ds)
        if not status or "Status" not in status:
            self._assoc = None
            raise UnreachableError(f"the PACS {self.dest.text} did not answer the C-STORE "
                                   "(connection lost or timed out)")
        code = int(status.Status)
        if code not in _SUCCESS_OR_WARNING:
            raise DeliveryError(f"the PACS {self.dest.text} refused the SR with status 0x{code:04X}")

    def _stow(self, ds: Dataset) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        if self._client is None:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            self._client = DICOMwebClient(url=self.dest.url, headers=headers)
        try:
            response = self._client.store_instances([ds])
        except requests.ConnectionError as exc:
            raise UnreachableError(f"the DICOMweb server {self.dest.text} cannot be reached") from exc
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise DeliveryError(f"the DICOMweb server {self.dest.text} refused the SR (HTTP {code})") from exc
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "?")
            raise DeliveryError(f"the DICOMweb server {self.dest.text} refused the SR (failure reason {reason})")
