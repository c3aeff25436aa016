"""The JSON Schemas of the local API's request bodies, from their declarations
(``scripts/gen_schemas.py`` writes them to ``docs/schemas/local/``)."""

from __future__ import annotations

from typing import Any

from device_agent.oip import InferRequestBody
from device_agent.predict_inputs import PredictRequest
from ota.schemas import message_schema

LOCAL_BODIES: dict[str, type] = {"InferRequest": InferRequestBody,
                                 "PredictRequest": PredictRequest}
"""``POST /v2/models/{name}/infer`` and ``POST /v1/predict`` (JSON) by schema name."""


def local_schemas() -> dict[str, dict[str, Any]]:
    return {name: message_schema(cls, has_protocol=False) for name, cls in LOCAL_BODIES.items()}
