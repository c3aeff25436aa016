"""The serving holder on real ONNX Runtime sessions: a swap closes the old runtime only
after the predicts running on it returned (bounded), and a request that picked the old
runtime up before the swap runs on the new one."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from device_agent.runtime import ModelRuntime
from device_agent.serving import ServingHolder

from .conftest import Rig

INPUTS = {"features": np.full((2, 16), 0.1, np.float32)}


def _load(rig: Rig) -> ModelRuntime:
    cur = rig.agent.slots.current()
    assert cur is not None
    return ModelRuntime.load(rig.agent.slots.path(cur.slot), ("cpu",), gate=False)


def _gate(rt: ModelRuntime) -> tuple[threading.Event, threading.Event, list[str]]:
    """Make ``rt``'s session runs wait for ``release``; ``entered`` is set once one runs."""
    entered, release, closed = threading.Event(), threading.Event(), []
    run, close = rt.run_feeds, rt.close

    def gated_run(feeds: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return run(feeds)

    def recorded_close() -> None:
        closed.append("closed")
        close()

    rt.run_feeds = gated_run  # type: ignore[method-assign]
    rt.close = recorded_close  # type: ignore[method-assign]
    return entered, release, closed


def test_a_swap_waits_for_the_predict_in_flight_before_closing_the_old_runtime(
        rig: Rig) -> None:
    old, new = _load(rig), _load(rig)
    holder = ServingHolder()
    holder.swap(old)
    entered, release, closed = _gate(old)
    results: list[Any] = []
    predicting = threading.Thread(target=lambda: results.append(holder.predict(INPUTS)))
    predicting.start()
    assert entered.wait(30)
    swapping = threading.Thread(target=holder.swap, args=(new,))
    swapping.start()
    swapping.join(0.5)
    assert swapping.is_alive() and closed == []  # waits for the predict on ``old``
    assert holder.current is new  # while new requests already go to ``new``
    assert holder.predict(INPUTS).outputs
    release.set()
    predicting.join(30)
    swapping.join(30)
    assert len(results) == 1 and results[0].outputs  # the in-flight predict succeeded
    assert closed == ["closed"] and holder.swap_timeouts == 0
    new.close()


def test_a_swap_closes_the_old_runtime_after_the_drain_bound(rig: Rig) -> None:
    old, new = _load(rig), _load(rig)
    holder = ServingHolder(drain_s=0.2)
    holder.swap(old)
    entered, release, closed = _gate(old)
    predicting = threading.Thread(target=lambda: _swallow(holder))
    predicting.start()
    assert entered.wait(30)
    holder.swap(new)  # returns after drain_s although the predict still runs
    assert closed == ["closed"] and holder.swap_timeouts == 1
    release.set()
    predicting.join(30)
    new.close()


def _swallow(holder: ServingHolder) -> None:
    try:
        holder.predict(INPUTS)
    except Exception:  # the session was closed under it: the bound was chosen over it  # noqa: S110
        pass


def test_a_request_that_took_the_old_runtime_before_the_swap_runs_on_the_new_one(
        rig: Rig) -> None:
    old, new = _load(rig), _load(rig)
    holder = ServingHolder()
    holder.swap(old)
    view = holder.view()
    assert view is not None and view.manifest is old.manifest  # metadata of what it took
    holder.swap(new)  # nothing in flight: ``old`` is closed at once
    pred = view.predict(INPUTS)
    assert pred.outputs and holder.current is new
    new.close()
