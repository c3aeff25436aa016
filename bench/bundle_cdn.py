"""Bundle downloads at scale: N devices fetch one bundle over HTTP range requests (the real
``device_agent.http_fetch`` code, one thread per device, all at once) from a real
``fleet-server serve --public-bundle-urls`` process, first straight from the server, then
through a caching nginx started by this command (cold cache, then warm).

    python -m bench.bundle_cdn [--devices 20] [--mib 32]

Per row: wall time, aggregate MiB/s, the server's CPU seconds (from /proc), and how many
times the server itself answered the bundle's content-addressed URL (its
``edgefleet_bundle_http_responses_total{route="by_hash"}``) and the MiB it sent. Needs nginx
(``apt-get install nginx-light``). Figures in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device_agent.http_fetch import fetch_missing  # noqa: E402
from fleet_server.api_client import FleetClient  # noqa: E402
from model_bundles import keys  # noqa: E402
from model_bundles.samples import write_sample_model  # noqa: E402
from ota.chunks import ChunkAssembler, file_chunk_hashes, file_sha256  # noqa: E402
from ota.limits import DEFAULT_CHUNK_SIZE  # noqa: E402
from tests.fleet_server.bundle_helpers import make_bundle  # noqa: E402
from tests.rollouts.sim_helpers import free_port, wait_for  # noqa: E402
from tests.scale.nginx_cache import NginxCache, nginx_binary  # noqa: E402

MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
_BY_HASH = re.compile(
    r'^edgefleet_bundle_http_responses_total\{(?=[^}]*route="by_hash")[^}]*\} (\S+)$', re.M)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def by_hash_answers(url: str, token: str) -> float:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    return sum(float(v) for v in _BY_HASH.findall(text))


def fetch_all(base: str, bundle: Path, devices: list[tuple[str, str]], tmp: Path) -> None:
    sha, size = file_sha256(bundle), bundle.stat().st_size
    hashes = file_chunk_hashes(bundle, DEFAULT_CHUNK_SIZE)

    def one(device: tuple[str, str]) -> None:
        part = tmp / f"{device[0]}-{time.monotonic_ns()}.part"
        asm = ChunkAssembler(part, sha256=sha, size=size, chunk_size=DEFAULT_CHUNK_SIZE,
                             chunk_hashes=hashes)
        fetch_missing(asm, f"{base}/api/v1/bundles/{sha}/download", device_id=device[0],
                      secret=device[1])
        if not asm.complete:
            raise SystemExit(f"{device[0]}: download incomplete")
        part.unlink()
        part.with_name(part.name + ".have").unlink(missing_ok=True)

    with ThreadPoolExecutor(len(devices)) as pool:
        list(pool.map(one, devices))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bundle_cdn",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--mib", type=int, default=32, help="bundle size in MiB")
    args = ap.parse_args(argv)
    binary = nginx_binary()
    if binary is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        model = write_sample_model(tmp / "model.onnx")
        key = Ed25519PrivateKey.generate()
        bundle = make_bundle(tmp / "big.efb", model, key, extra=os.urandom(args.mib * MIB))
        port, data = free_port(), tmp / "fleet"
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet_server.cli", "serve", "--data", str(data), "--port",
             str(port), "--mqtt-port", "0", "--public-bundle-urls",
             "--insecure"],  # plain HTTP behind the plain nginx cache, as measured before
            stdout=(tmp / "server.log").open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        nginx: NginxCache | None = None
        try:
            wait_for(lambda: (data / "ports.json").exists(), 30, "server started")
            token = (data / "admin.token").read_text().strip()
            with FleetClient(url, token, timeout_s=300) as client:
                client.add_publisher(keys.public_key_pem(key), "bench")
                client.upload_bundle(bundle)
                devices = []
                for i in range(args.devices):
                    tok = client.create_enrolment_token("default")["token"]
                    creds = client.enrol(tok, f"cdn-{i:03d}", keys.public_key_pem(
                        Ed25519PrivateKey.generate()))
                    devices.append((f"cdn-{i:03d}", creds["mqtt"]["password"]))
                client.deploy("sample@1.0.0", group="default")
            size = bundle.stat().st_size
            print(f"{args.devices} devices, bundle {size / MIB:.1f} MiB "
                  f"({-(-size // DEFAULT_CHUNK_SIZE)} chunks of {DEFAULT_CHUNK_SIZE // 1024} KiB)")
            print(f"{'path':<20} {'wall s':>8} {'MiB/s':>8} {'server CPU s':>13} "
                  f"{'server answers':>15} {'server MiB':>11}")
            nginx = NginxCache(binary, tmp / "nginx", url)
            for label, base in (("server directly", url), ("nginx cache, cold", nginx.url),
                                ("nginx cache, warm", nginx.url)):
                answers0, cpu0, t0 = by_hash_answers(url, token), cpu_s(proc.pid), \
                    time.perf_counter()
                fetch_all(base, bundle, devices, tmp)
                wall = time.perf_counter() - t0
                cpu = cpu_s(proc.pid) - cpu0
                answers = by_hash_answers(url, token) - answers0
                # straight: one range answer per chunk; through nginx: whole-file answers
                sent = (args.devices * size if base == url else answers * size) / MIB
                print(f"{label:<20} {wall:>8.2f} {args.devices * size / MIB / wall:>8.0f} "
                      f"{cpu:>13.2f} {answers:>15.0f} {sent:>11.0f}")
        finally:
            if nginx is not None:
                nginx.stop()
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
