"""A Mosquitto broker the test can stop and start on one fixed port, and an observer client
that records every chunk request a device makes (Mosquitto here allows anonymous clients,
so the observer can read the devices' topics)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ota.messages import ChunkRequest
from ota.topics import DEVICES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Mosquitto is required in CI (scripts/install-system-deps.sh installs it)")
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    return binary


class Mosquitto:
    """Our own broker process on a fixed port, so clients find it again after a restart.

    ``persistence true``: sessions (the fleet server's and the devices' subscriptions and
    their queued QoS 1 messages) survive a restart, as they do in production."""

    def __init__(self, root: Path) -> None:
        self.binary = mosquitto_binary()
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {root}/\nautosave_interval 1\n"
            "max_queued_messages 0\n"
            # as root Mosquitto drops to user "mosquitto", which cannot write under tmp
            + ("user root\n" if os.geteuid() == 0 else ""))
        self.log = root / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=fh,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class ChunkRequestLog:
    """Subscribes to every device's ``chunks/req`` and keeps ``(time, sha256, index, count)``.

    A persistent session, so requests made while it reconnects after a broker restart are
    queued for it by the broker and none goes uncounted."""

    def __init__(self, port: int) -> None:
        self.requests: list[tuple[float, str, int, int]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="chunk-observer",
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise AssertionError("chunk observer did not subscribe")

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(f"{DEVICES}/+/chunks/req", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        req = ChunkRequest.from_bytes(bytes(msg.payload))
        with self._lock:
            self.requests.append((time.monotonic(), req.sha256, req.index, req.count))

    def indexes(self, sha256: str, since: float = 0.0) -> list[int]:
        """Every chunk index asked for (repeats included) at or after ``since``."""
        with self._lock:
            return [i for t, sha, first, n in self.requests if t >= since and sha == sha256
                    for i in range(first, first + n)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
