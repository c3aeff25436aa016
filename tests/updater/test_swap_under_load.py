"""Predicts keep being answered while a new model version installs: the serving holder
hands new requests to the new runtime and closes the old one only after the predicts
already running on it returned (a real agent, its local API over HTTP, four clients)."""

from __future__ import annotations

import threading
from collections import Counter

import httpx

from device_agent.agent import Agent
from ota.chunks import encode_chunk_frame, read_chunk
from ota.install import InstallState
from ota.instructions import chunk_count

from .conftest import CHUNK, Rig

CLIENTS = 4


def test_predict_during_a_model_swap_fails_no_request(rig: Rig) -> None:
    rig.agent.shadow.stop()
    agent = Agent(rig.agent_dir, api_port=0)  # the same device, now started
    agent.start()
    answers: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=agent.api.url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/predict", json={"inputs": {"features": [[0.1] * 16] * 2048}})
                with lock:
                    if r.status_code == 200:
                        answers[r.json()["bundle"]] += 1
                    else:
                        failures.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        path, ref = rig.build("2.0.0")
        wait = threading.Event()
        for _ in range(600):  # the clients are under way on v1 before the install begins
            with lock:
                if answers["sample@1.0.0"] >= 4 * CLIENTS or failures:
                    break
            wait.wait(0.05)
        total = chunk_count(ref.size, CHUNK)
        # as paho would hand them over: queued for the worker
        agent._on_message(agent.topics.desired, rig.instruction(ref))
        for i in range(total):
            agent._on_message(agent.topics.chunks,
                              encode_chunk_frame(ref.sha256, i, total, read_chunk(path, i, CHUNK)))
        for _ in range(600):
            with lock:
                if answers["sample@2.0.0"] >= 20:
                    break
            wait.wait(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        agent.stop()
    assert agent.journal.state is InstallState.COMMITTED, agent.journal
    assert failures == []
    assert answers["sample@1.0.0"] > 0 and answers["sample@2.0.0"] >= 20, answers
