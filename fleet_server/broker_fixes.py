"""A workaround for amqtt 0.12 under many clients.

amqtt's broadcast loop iterates ``Broker._subscriptions`` with ``await`` inside the loop; a
client subscribing (a new topic filter) or leaving meanwhile raises "dictionary changed size
during iteration" and the message being broadcast is silently lost for the remaining
subscribers. Found by the fleet simulator (200 devices connecting while others publish).
Iterating over a snapshot removes the race.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator
from typing import Any


class SnapshotDict(dict[str, Any]):
    """A dict whose iteration and ``items()`` walk a copy, so writers may change it."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> ItemsView[str, Any]:  # type: ignore[override]
        return dict(super().items()).items()


def patch_broker(broker: Any) -> None:
    """Make ``broker._subscriptions`` safe to change while a broadcast walks it."""
    subs = getattr(broker, "_subscriptions", None)
    if isinstance(subs, dict) and not isinstance(subs, SnapshotDict):
        broker._subscriptions = SnapshotDict(subs)
