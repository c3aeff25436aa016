"""ota: protocol 1 shared by the fleet server and the device agent (pure core, no MQTT).

- ``ota.topics``: topic names and device ids
- ``ota.messages``: DeviceState, Telemetry, Event, ChunkRequest (JSON bytes in, values out)
- ``ota.model``: the typed field declarations all messages use (msgspec Structs) and their errors
- ``ota.schemas``: the JSON Schema of every message (``docs/schemas/mqtt/``)
- ``ota.instructions``: signed Instruction envelopes (sign / verify)
- ``ota.chunks``: chunk frames and the resumable ChunkAssembler (the only file I/O)
- ``ota.install``: install state machine and journal
- ``ota.limits`` / ``ota.errors``: bounds and the error family
"""
