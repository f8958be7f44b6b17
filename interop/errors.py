"""Named errors of interop/: each says what is wrong and what to change; cli/ prints them as `Error: ...`."""

from common.errors import XrqError


class InteropError(XrqError):
    """Root of interop's errors."""


class NoDicomIdentityError(InteropError):
    """Raised when a DICOM document (an SR) is asked of a study whose files are not DICOM (a PNG folder)."""


class DestinationError(InteropError):
    """Raised when a push destination is malformed (not dicom://AET@HOST:PORT or http(s)://...)."""


class DeliveryError(InteropError):
    """Raised when a destination cannot be reached or refuses what is sent (PACS down, a failure status)."""


class ListenerError(InteropError):
    """Raised when the listener cannot start (a port in use, an inbox that cannot be written, no --allow)."""


class UnreachableError(DeliveryError):
    """Raised when a destination cannot be reached at all (down, refusing the association): a push stops
    there, and what it did not send is recorded for the backlog to retry."""
