"""A small real paho-mqtt device client for the broker and bridge tests."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class DeviceClient:
    """Connects as a device; collects received messages in a queue."""

    def __init__(self, mqtt_url: str, device_id: str, password: str) -> None:
        parts = urlsplit(mqtt_url)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: Any = None
        self.suback: list[Any] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id,
                                  clean_session=True)
        self.client.username_pw_set(device_id, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self.connack = reason
        self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, reasons: Any,
                      properties: Any) -> None:
        self.suback = list(reasons)
        self._subscribed.set()

    def wait_connack(self, timeout: float = 5.0) -> Any:
        assert self._connected.wait(timeout), "no CONNACK"
        return self.connack

    def subscribe(self, topic: str, timeout: float = 5.0) -> list[Any]:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(timeout), "no SUBACK"
        return self.suback

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def receive(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
