"""The device key signs every report the agent publishes (``ota.signed_report``).

The key is ``DIR/keys/device.key``, made by ``device-agent install`` (its public half is
what the server registered at enrolment). A directory without one (made by hand, never
enrolled) still runs: its reports go out bare, the server refuses them, and the agent says
so once in its log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from model_bundles import keys as mb_keys
from model_bundles.errors import KeyFileError
from ota.signed_report import ReportSigner

__all__ = ["DeviceReportSigner", "device_key_path"]

log = logging.getLogger(__name__)


def device_key_path(agent_dir: Path) -> Path:
    return Path(agent_dir) / "keys" / "device.key"


class DeviceReportSigner:
    """``sign(report_bytes)`` -> the envelope bytes to publish."""

    def __init__(self, agent_dir: Path) -> None:
        path = device_key_path(agent_dir)
        self._signer: ReportSigner | None = None
        try:
            self._signer = ReportSigner(mb_keys.load_private_key(path))
        except (FileNotFoundError, KeyFileError) as e:
            log.error("no usable device key at %s (%s): reports go out unsigned and the "
                      "fleet server will refuse them", path, e)

    @property
    def key_id(self) -> str | None:
        return None if self._signer is None else self._signer.key_id

    def sign(self, report: bytes) -> bytes:
        return report if self._signer is None else self._signer.sign(report)
