"""Fetching, verifying and loading the shadow candidate named by an instruction.

The candidate travels like any bundle (chunks checked against the signed instruction's
hashes by ``ota.chunks.ChunkAssembler``), is verified and extracted by
``model_bundles.verify.extract_verified`` into ``DIR/shadow/<sha256>/`` (manifest.json +
files/, the slot layout; never an A/B slot, the active slot is not touched), and is loaded
with its golden gate on one intra-op thread. Only a candidate that passes the gate is handed
to the ``ShadowRunner``. ``DIR/shadow/shadow.json`` remembers the instruction's shadow
fields so a restart resumes (the retained instruction is not applied twice).

All methods run on the agent's worker thread (``restore`` before it starts).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from delegates.base import Backend, ProbeResult
from device_agent import bundle_access as ba
from device_agent.persist import atomic_write_bytes, atomic_write_json, read_json
from device_agent.runtime import ModelRuntime
from device_agent.shadow import Candidate, ShadowRunner
from model_bundles import keys as mb_keys
from model_bundles import verify as mb_verify
from model_bundles.input_stats import InputStats
from ota import chunks as ota_chunks
from ota.instructions import BundleRef
from ota.messages import ChunkRequest

__all__ = ["ShadowStager", "load_reference"]

log = logging.getLogger(__name__)
WINDOW = 8
STALLED_AFTER_S = 5.0


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
        device_id: str,
        publish_request: Callable[[bytes], None] | None = None,
        preferred: Sequence[str] = ("cpu",),
        active_slot_dir: Callable[[], Path | None] = lambda: None,
        on_error: Callable[[str], None] = lambda detail: None,
        backends: Sequence[Backend] | None = None,
        probes: Sequence[ProbeResult] | None = None,
    ) -> None:
        self.root = Path(agent_dir) / "shadow"
        self.runner = runner
        self.device_id = device_id
        self.publish_request = publish_request
        self.preferred = tuple(preferred)
        self.active_slot_dir = active_slot_dir
        self.on_error = on_error
        self.backends = backends
        self.probes = probes
        self.ref: BundleRef | None = None
        self.rate = 0.0
        self._assembler: ota_chunks.ChunkAssembler | None = None
        self._outstanding: set[int] = set()
        self._last_chunk_at = time.monotonic()

    @property
    def state_path(self) -> Path:
        return self.root / "shadow.json"

    def staged_dir(self, sha256: str) -> Path:
        return self.root / sha256

    @property
    def downloading(self) -> bool:
        return self._assembler is not None

    def stalled(self) -> bool:
        return self._assembler is not None and (
            time.monotonic() - self._last_chunk_at > STALLED_AFTER_S)

    # -- instructions ---------------------------------------------------------------------

    def apply(self, ref: BundleRef | None, rate: float) -> None:
        """Follow an accepted instruction's ``shadow``/``shadow_sample_rate``."""
        if ref is None:
            self.clear()
            return
        if self.ref is not None and self.ref.sha256 == ref.sha256:
            self.rate = rate
            self._save()
            cand = self.runner.candidate
            if cand is not None and cand.sha256 == ref.sha256:
                self.runner.set_candidate(Candidate(cand.runtime, cand.sha256, rate,
                                                    cand.reference))
            return
        self.clear()
        self.ref, self.rate = ref, rate
        self.root.mkdir(parents=True, exist_ok=True)
        self._save()
        self._start_download()

    def clear(self) -> None:
        """Stop shadowing and remove everything staged."""
        self.runner.set_candidate(None)
        if self._assembler is not None:
            self._assembler.discard()
        self._assembler, self.ref, self.rate = None, None, 0.0
        self._outstanding = set()
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def restore(self) -> None:
        """At start: resume the shadow candidate (or its download) from ``shadow.json``."""
        try:
            state = read_json(self.state_path)
            ref = BundleRef.from_dict(state["ref"])
            rate = float(state["rate"])
        except FileNotFoundError:
            return
        except Exception as e:
            log.warning("dropping unreadable shadow state: %s", e)
            self.clear()
            return
        self.ref, self.rate = ref, rate
        if state.get("failed"):
            return  # refused before; a new instruction may name another candidate
        if (self.staged_dir(ref.sha256) / ba.MANIFEST_NAME).exists():
            self._load(ref)
        else:
            self._start_download()

    def _save(self, failed: str | None = None) -> None:
        assert self.ref is not None
        atomic_write_json(self.state_path, {"ref": self.ref.to_dict(), "rate": self.rate,
                                            "failed": failed})

    # -- transfer ---------------------------------------------------------------------------

    def _start_download(self) -> None:
        ref = self.ref
        assert ref is not None
        self._assembler = ota_chunks.ChunkAssembler(
            self.root / f"{ref.sha256}.part", sha256=ref.sha256, size=ref.size,
            chunk_size=ref.chunk_size, chunk_hashes=ref.chunk_hashes)
        self._last_chunk_at = time.monotonic()
        if self._assembler.complete:
            self._finish()
        else:
            self.request_window()

    def request_window(self) -> None:
        asm, ref = self._assembler, self.ref
        if asm is None or ref is None or self.publish_request is None:
            return
        wanted = asm.next_request(WINDOW)
        self._outstanding = set(wanted)
        for index, count in ota_chunks.request_ranges(wanted):
            req = ChunkRequest(device_id=self.device_id, sha256=ref.sha256, index=index,
                               count=count)
            self.publish_request(req.to_bytes())

    def handle_chunk(self, payload: bytes) -> bool:
        """Take a chunk frame if it belongs to the shadow download; True if it did."""
        asm, ref = self._assembler, self.ref
        if asm is None or ref is None:
            return False
        try:
            header, data = ota_chunks.decode_chunk_frame(payload, ref.chunk_size)
        except Exception:
            return False  # not ours (another bundle's chunk size) or garbage: the agent decides
        if header.sha256 != ref.sha256:
            return False
        self._last_chunk_at = time.monotonic()
        asm.accept(header.index, data)
        self._outstanding.discard(header.index)
        if asm.complete:
            self._finish()
        elif not self._outstanding:
            self.request_window()
        return True

    def _finish(self) -> None:
        asm, ref = self._assembler, self.ref
        assert asm is not None and ref is not None
        self._assembler = None
        try:
            path = asm.finalize(self.root / f"{ref.sha256}.efb")
        except Exception as e:
            self._fail(f"shadow bundle transfer failed: {e}")
            return
        self.stage_file(path, ref)

    # -- verify, stage, load ----------------------------------------------------------------

    def stage_file(self, path: Path, ref: BundleRef) -> bool:
        """Verify and extract a complete bundle file into ``DIR/shadow/<sha>/`` and load it;
        the file is removed either way. True when the candidate runs in shadow."""
        dest = self.staged_dir(ref.sha256)
        try:
            sha = ota_chunks.file_sha256(path)
            if sha != ref.sha256:
                raise ValueError(f"bundle sha256 {sha} != instruction sha256 {ref.sha256}")
            pub = mb_keys.load_public_key(ref.publisher_public_key.encode())
            if mb_keys.key_id(pub) != ref.publisher_key_id:
                raise ValueError("instruction's publisher key does not match its key id")
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            vb = mb_verify.extract_verified(path, ba.files_dir(dest), {ref.publisher_key_id: pub})
            atomic_write_bytes(dest / ba.MANIFEST_NAME, bytes(vb.manifest_bytes))
        except Exception as e:
            shutil.rmtree(dest, ignore_errors=True)
            self._fail(f"shadow bundle {ref.name}@{ref.version} refused: {e}")
            return False
        finally:
            Path(path).unlink(missing_ok=True)
        return self._load(ref)

    def _load(self, ref: BundleRef) -> bool:
        dest = self.staged_dir(ref.sha256)
        try:
            rt = ModelRuntime.load(dest, self.preferred, backends=self.backends,
                                   probes=self.probes, gate=True,
                                   options={"intra_op_threads":
                                            self.runner.config.candidate_threads})
        except Exception as e:
            shutil.rmtree(dest, ignore_errors=True)
            self._fail(f"shadow candidate {ref.name}@{ref.version} failed its gate: {e}")
            return False
        reference = load_reference(dest, rt.manifest)
        if reference is None:
            active = self.active_slot_dir()
            if active is not None:
                try:
                    reference = load_reference(active, ba.read_manifest(active))
                except Exception:
                    reference = None
        self.runner.set_candidate(Candidate(rt, ref.sha256, self.rate, reference))
        log.info("shadowing %s on %s at rate %.3f", rt.bundle, rt.delegate, self.rate)
        return True

    def _fail(self, detail: str) -> None:
        log.warning("%s", detail)
        self.runner.set_candidate(None)
        if self.ref is not None:
            self._save(failed=detail)
        try:
            self.on_error(detail)
        except Exception:
            log.exception("shadow on_error callback failed")
