"""Verifying, staging and loading the shadow candidate named by an instruction.

The candidate travels like the instruction's bundle, through the same ``Transfer`` of the
update core (``ota.updater``): the same TUF target check, disk-space check, MQTT chunks or
HTTP range path, each chunk checked against the signed instruction's hashes. Once complete
it is verified and extracted in one pass by ``model_bundles.verify.extract_verified`` into
``DIR/shadow/<sha256>/`` (manifest.json + files/, the slot layout; never an A/B slot, the
active slot is not touched), and loaded with its golden gate on one intra-op thread. Only
a candidate that passes the gate is handed to the ``ShadowRunner``. The candidate's ref,
rate, pace and refusal are kept in the device record (``DIR/state/device.json``).

All methods run on the agent's worker thread.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from delegates.base import Backend, ProbeResult
from device_agent import bundle_access as ba
from device_agent.persist import atomic_write_bytes
from device_agent.runtime import ModelRuntime
from device_agent.shadow import Candidate, ShadowRunner
from model_bundles import keys as mb_keys
from model_bundles import verify as mb_verify
from model_bundles.input_stats import InputStats
from ota.instructions import BundleRef

__all__ = ["ShadowStager", "load_reference"]

log = logging.getLogger(__name__)


def load_reference(slot_dir: Path, manifest: Any) -> InputStats | None:
    """The bundle's reference input statistics, or None when it carries none."""
    rel = getattr(manifest, "input_stats", None)
    if not rel:
        return None
    try:
        return InputStats.from_bytes(ba.slot_file(slot_dir, rel).read_bytes())
    except Exception as e:
        log.warning("ignoring unreadable input statistics in %s: %s", slot_dir, e)
        return None


class ShadowStager:
    def __init__(
        self,
        agent_dir: Path,
        runner: ShadowRunner,
        *,
        preferred: Sequence[str] = ("cpu",),
        active_slot_dir: Callable[[], Path | None] = lambda: None,
        backends: Sequence[Backend] | None = None,
        probes: Sequence[ProbeResult] | None = None,
    ) -> None:
        self.root = Path(agent_dir) / "shadow"
        self.runner = runner
        self.preferred = tuple(preferred)
        self.active_slot_dir = active_slot_dir
        self.backends = backends
        self.probes = probes

    def staged_dir(self, sha256: str) -> Path:
        return self.root / sha256

    def part_path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.part"

    def is_staged(self, ref: BundleRef) -> bool:
        return (self.staged_dir(ref.sha256) / ba.MANIFEST_NAME).exists()

    def set_rate(self, rate: float, pace: float | None = None) -> None:
        """A new sample rate and pace (samples per minute; None: the configured one) for
        the candidate already shadowed."""
        self.runner.set_pace(pace)
        cand = self.runner.candidate
        if cand is not None:
            self.runner.set_candidate(Candidate(cand.runtime, cand.sha256, rate,
                                                cand.reference))

    def clear(self) -> None:
        """Stop shadowing and remove everything staged."""
        self.runner.set_candidate(None)
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # -- verify, stage, load ----------------------------------------------------------------

    def stage_file(self, path: Path, ref: BundleRef, rate: float,
                   pace: float | None = None) -> str | None:
        """Verify and extract a complete bundle file into ``DIR/shadow/<sha>/`` (one pass)
        and load it; the file is removed either way. None when the candidate runs in
        shadow, else why it was refused (nothing is left staged)."""
        dest = self.staged_dir(ref.sha256)
        try:
            pub = mb_keys.load_public_key(ref.publisher_public_key.encode())
            if mb_keys.key_id(pub) != ref.publisher_key_id:
                raise ValueError("instruction's publisher key does not match its key id")
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            vb = mb_verify.extract_verified(path, ba.files_dir(dest), {ref.publisher_key_id: pub})
            if vb.sha256 != ref.sha256 or vb.size != ref.size:
                raise ValueError(f"bundle sha256 {vb.sha256} != instruction sha256 "
                                 f"{ref.sha256}")
            atomic_write_bytes(dest / ba.MANIFEST_NAME, bytes(vb.manifest_bytes))
        except Exception as e:
            shutil.rmtree(dest, ignore_errors=True)
            return f"shadow bundle {ref.name}@{ref.version} refused: {e}"
        finally:
            Path(path).unlink(missing_ok=True)
        return self.load(ref, rate, pace)

    def load(self, ref: BundleRef, rate: float, pace: float | None = None) -> str | None:
        """Load the staged candidate through its golden gate and shadow it; None when it
        runs, else why not (its staged files are removed)."""
        dest = self.staged_dir(ref.sha256)
        try:
            rt = ModelRuntime.load(dest, self.preferred, backends=self.backends,
                                   probes=self.probes, gate=True,
                                   options={"intra_op_threads":
                                            self.runner.config.candidate_threads})
        except Exception as e:
            shutil.rmtree(dest, ignore_errors=True)
            return f"shadow candidate {ref.name}@{ref.version} failed its gate: {e}"
        reference = load_reference(dest, rt.manifest)
        if reference is None:
            active = self.active_slot_dir()
            if active is not None:
                try:
                    reference = load_reference(active, ba.read_manifest(active))
                except Exception:
                    reference = None
        self.runner.set_pace(pace)
        self.runner.set_candidate(Candidate(rt, ref.sha256, rate, reference))
        log.info("shadowing %s on %s at rate %.3f", rt.bundle, rt.delegate, rate)
        return None
