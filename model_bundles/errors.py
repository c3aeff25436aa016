"""Errors raised by the bundle library.

Every error is a :class:`BundleError` whose ``str()`` is one line naming the reason first,
for example ``"hash mismatch: files/model.onnx"``. Callers that only need a verdict catch
:class:`BundleError`; callers that react per reason catch the subclass.
"""

from __future__ import annotations


class BundleError(Exception):
    """Base class: a bundle (or key, or build input) was refused."""

    reason = "bundle error"

    def __init__(self, detail: str = "") -> None:
        detail = " ".join(str(detail).split())  # always one line
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class TooLargeError(BundleError):
    reason = "too large"


class UnsafePathError(BundleError):
    reason = "unsafe path"


class ManifestError(BundleError):
    reason = "malformed manifest"


class SignatureError(BundleError):
    reason = "bad signature"


class UnknownKeyError(BundleError):
    reason = "unknown key"


class MissingFileError(BundleError):
    reason = "missing file"


class ExtraFileError(BundleError):
    reason = "extra file"


class HashMismatchError(BundleError):
    reason = "hash mismatch"


class BuildError(BundleError):
    reason = "build failed"


class KeyFileError(BundleError):
    reason = "bad key file"


class ArchiveError(BundleError):
    """The file is not a well-formed tar archive (truncated, garbage, wrong member order)."""

    reason = "malformed archive"


class GoldenError(BundleError):
    """The golden vectors file does not match the manifest's input/output specs."""

    reason = "bad golden vectors"


__all__ = [
    "ArchiveError",
    "BuildError",
    "BundleError",
    "ExtraFileError",
    "GoldenError",
    "HashMismatchError",
    "KeyFileError",
    "ManifestError",
    "MissingFileError",
    "SignatureError",
    "TooLargeError",
    "UnknownKeyError",
    "UnsafePathError",
]
