"""The model-bundle CLI, run in-process through main([...])."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from model_bundles import cli
from model_bundles.cli import build_parser, build_parser_with_subparsers, main
from model_bundles.reader import open_archive


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_round_trip_sample(capsys, tmp_path, sample_onnx):
    code, out, err = run(capsys, "keygen", "--out", str(tmp_path / "k"))
    assert code == 0, err
    key, pub = tmp_path / "k" / "publisher.key", tmp_path / "k" / "publisher.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    bundle = tmp_path / "s.efb"
    code, out, err = run(
        capsys,
        "build",
        str(sample_onnx),
        "--name",
        "sample",
        "--version",
        "1.2.3",
        "--key",
        str(key),
        "--out",
        str(bundle),
        "--task",
        "classifier",
        "--dim",
        "batch=2",
    )
    assert code == 0, err
    assert "sample@1.2.3" in out
    code, out, err = run(capsys, "inspect", str(bundle))
    assert code == 0, err
    for text in (
        "sample",
        "1.2.3",
        "classifier",
        "model.onnx",
        "golden.npz",
        "onnx-fp32",
        "features: float32 [batch, 16]",
        "label: int64 [batch]",
        "batch=2",
    ):
        assert text in out
    code, out, err = run(capsys, "verify", str(bundle), "--trust", str(pub))
    assert code == 0, err
    kid = json.loads(run(capsys, "inspect", str(bundle), "--json")[1])["signer"]
    assert out.strip() == f"OK sample@1.2.3 signed by {kid[:16]}"


def test_round_trip_digits(capsys, tmp_path, digits_onnx, publisher):
    bundle = tmp_path / "d.efb"
    code, _, err = run(
        capsys,
        "build",
        str(digits_onnx),
        "--name",
        "digits",
        "--version",
        "1.0.0",
        "--key",
        str(publisher.private_path),
        "--out",
        str(bundle),
        "--dim",
        "X:0=5",
    )
    assert code == 0, err
    code, out, _ = run(capsys, "inspect", str(bundle), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["manifest"]["name"] == "digits"
    assert doc["manifest"]["golden"]["count"] == 5
    assert doc["signer"] == publisher.key_id
    assert doc["size"] == bundle.stat().st_size
    code, out, _ = run(capsys, "verify", str(bundle), "--trust", str(publisher.public_path))
    assert (code, out.strip()) == (0, f"OK digits@1.0.0 signed by {publisher.key_id[:16]}")


def test_verify_fail_tampered(capsys, sample_bundle, publisher):
    with open(sample_bundle, "rb") as fh:
        model = open_archive(fh).members[2]
    data = bytearray(sample_bundle.read_bytes())
    data[model.offset + model.size // 2] ^= 0xFF
    sample_bundle.write_bytes(bytes(data))
    code, out, err = run(
        capsys, "verify", str(sample_bundle), "--trust", str(publisher.public_path)
    )
    assert code == 1
    assert out == "FAIL: hash mismatch: files/model.onnx\n"
    assert err == ""


def test_verify_fail_unknown_key(capsys, sample_bundle, stranger):
    code, out, _ = run(capsys, "verify", str(sample_bundle), "--trust", str(stranger.public_path))
    assert code == 1
    assert out.startswith("FAIL: unknown key: ")


def test_verify_with_several_trusted_keys(capsys, sample_bundle, publisher, stranger):
    code, out, _ = run(
        capsys,
        "verify",
        str(sample_bundle),
        "--trust",
        str(stranger.public_path),
        "--trust",
        str(publisher.public_path),
    )
    assert code == 0 and out.startswith("OK sample@1.0.0")


def test_keygen_refuses_overwrite(capsys, tmp_path):
    assert run(capsys, "keygen", "--out", str(tmp_path))[0] == 0
    before = (tmp_path / "publisher.key").read_bytes()
    code, out, err = run(capsys, "keygen", "--out", str(tmp_path))
    assert code == 1
    assert err.startswith("model-bundle: error: bad key file: ") and err.count("\n") == 1
    assert "already exists" in err
    assert (tmp_path / "publisher.key").read_bytes() == before


def test_build_error_is_one_line(capsys, tmp_path, sample_onnx, publisher):
    np.savez(tmp_path / "bad.npz", features=np.zeros((1, 3), np.float32))
    code, out, err = run(
        capsys,
        "build",
        str(sample_onnx),
        "--name",
        "s",
        "--version",
        "1.0.0",
        "--key",
        str(publisher.private_path),
        "--out",
        str(tmp_path / "s.efb"),
        "--golden",
        str(tmp_path / "bad.npz"),
    )
    assert code == 1 and out == ""
    assert err.startswith("model-bundle: error: build failed: golden input 'features'")
    assert err.count("\n") == 1 and "fix:" in err
    assert not (tmp_path / "s.efb").exists()


def test_inspect_refused_bundle(capsys, tmp_path):
    junk = tmp_path / "junk.efb"
    junk.write_bytes(b"\x01" * 1024)
    code, _, err = run(capsys, "inspect", str(junk))
    assert code == 1
    assert err.startswith("model-bundle: error: malformed archive: ") and err.count("\n") == 1


def test_missing_file_is_one_line_error(capsys, tmp_path, publisher):
    code, out, err = run(capsys, "inspect", str(tmp_path / "nope.efb"))
    assert code == 1 and err.startswith("model-bundle: error: ") and err.count("\n") == 1


def test_missing_trust_key_file(capsys, sample_bundle, tmp_path):
    code, _, err = run(capsys, "verify", str(sample_bundle), "--trust", str(tmp_path / "no.pub"))
    assert code == 1 and err.startswith("model-bundle: error: bad key file: ")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["verify", "x.efb"],
        ["build", "m.onnx", "--name", "n"],
        [
            "build",
            "m.onnx",
            "--name",
            "n",
            "--version",
            "1.0.0",
            "--key",
            "k",
            "--out",
            "o",
            "--dim",
            "batch",
        ],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2 and "usage:" in err


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("keygen", "build", "inspect", "verify"):
        assert name in out


def test_parser_is_extensible(capsys, monkeypatch):
    parser, sub = build_parser_with_subparsers()
    p = sub.add_parser("publish")
    p.add_argument("file")
    calls = []

    def cmd_publish(args):
        calls.append(args.file)
        return 0

    p.set_defaults(func=cmd_publish)
    assert main(["publish", "b.efb"], parser=parser) == 0
    assert calls == ["b.efb"]

    monkeypatch.setitem(cli.dispatch, "hello", lambda args: 3)
    monkeypatch.setattr(cli, "_registered", [])
    cli.register_subcommand(
        "hello",
        lambda sp: sp.add_argument("--loud", action="store_true"),
        lambda args: 3 if args.loud else 4,
        help="say hello",
    )
    assert main(["hello", "--loud"]) == 3
    assert "hello" in build_parser().format_help()
