"""What signing reports costs (``python -m bench.report_signing``).

For a typical telemetry window and a shadow report with four drift inputs: the bytes of the
bare report and of its ``ReportEnvelope`` (what the outbox stores and the broker carries),
how long the device's sign and the server's ``open_report`` (envelope parse, key check,
Ed25519 verify) take per report, and how many days of telemetry (one record every 10 s,
the agent's default) the outbox's 50 MiB budget holds, bare and signed.

``open_report`` is timed with the key the server holds (``fleet_server.report_keys``:
libsodium through PyNaCl) and, as the baseline, with a ``cryptography`` key (OpenSSL), both
in this process; the ratio is libsodium's time over OpenSSL's.
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_server.report_keys import SodiumKey
from model_bundles import keys as mb_keys
from ota.messages import InputDrift, LatencySummary, ShadowReport, Telemetry
from ota.signed_report import ReportSigner, open_report
from ota.topics import DeviceTopics

OUTBOX_BUDGET = 50 * 1024 * 1024
INTERVAL_S = 10.0
SHA = "a" * 64


def _reports() -> dict[str, Any]:
    lat = LatencySummary(0.21, 0.40, 0.91)
    tel = Telemetry(device_id="dev-1", seq=123456, ts=1764384000.125, window_s=10.0,
                    bundle="digits@1.0.0", delegate="onnxruntime:CPUExecutionProvider",
                    inferences=120, errors=0, total_inferences=5120, total_errors=3,
                    latency_ms=lat, variant="onnx-fp32", fallback=False, bundle_sha256=SHA)
    drift = {f"x{i}": InputDrift(psi=0.04, ks_stat=0.06, ks_pvalue=0.41, drifted=False)
             for i in range(4)}
    shadow = ShadowReport(
        device_id="dev-1", seq=123457, ts=1764384000.125, window_s=10.0,
        active="digits@1.0.0", candidate="digits@1.1.0", candidate_sha256="b" * 64,
        task="classifier", samples=118, dropped=2, candidate_errors=0, top1_agreement=0.97,
        score_delta_mean=-0.004, mae=0.012, max_abs_error=0.31, cosine=0.998,
        latency_ms_active=lat, latency_ms_candidate=lat,
        candidate_delegate="onnxruntime:CPUExecutionProvider", drift=drift,
        active_sha256=SHA)
    return {"telemetry": tel, "shadow report": shadow}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    key = Ed25519PrivateKey.generate()
    signer, public = ReportSigner(key), key.public_key()
    sodium = SodiumKey.from_pem(mb_keys.public_key_pem(key))
    topic = len(DeviceTopics("dev-1").telemetry) + 1  # an outbox record: topic, newline, bytes
    print("| report | bare bytes | signed bytes | sign us | open us, OpenSSL (baseline) "
          "| open us, libsodium (server) | ratio | outbox days, bare | outbox days, signed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, report in _reports().items():
        bare = report.to_bytes()
        envelope = signer.sign(bare)
        sign = min(timeit.repeat(lambda b=bare: signer.sign(b), number=args.number,
                                 repeat=args.repeat)) / args.number * 1e6
        opened = [min(timeit.repeat(lambda e=envelope, k=k: open_report(e, k),
                                    number=args.number, repeat=args.repeat))
                  / args.number * 1e6 for k in (public, sodium)]
        days = [OUTBOX_BUDGET // (n + topic) * INTERVAL_S / 86400
                for n in (len(bare), len(envelope))]
        print(f"| {name} | {len(bare)} | {len(envelope)} | {sign:.0f} | {opened[0]:.0f} "
              f"| {opened[1]:.0f} | {opened[1] / opened[0]:.2f} | {days[0]:.1f} "
              f"| {days[1]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
