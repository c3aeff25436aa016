"""Runs in a virtual environment of its own holding only ``kserve`` (KServe's Python SDK,
unmodified): its ``InferenceRESTClient`` speaks the v2 protocol to the agent at ``argv[1]``
and this prints what it got as JSON for ``test_oip_kserve_client.py`` to check.

(KServe's SDK pins ``psutil<6`` and amqtt, the fleet server's broker, needs ``psutil>=7``,
so the two cannot share one environment; ``scripts/test.sh`` makes this one.)
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def main(url: str, model: str, version: str) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30, retries=0))
    x = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)
    out: dict = {"x": x.tolist(), "infer": {}}
    try:
        out["live"] = await client.is_server_live(url)
        out["ready"] = await client.is_server_ready(url)
        out["model_ready"] = await client.is_model_ready(url, model)
        out["other_ready"] = await client.is_model_ready(url, "no-such-model")
        for binary in (False, True):
            inp = InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [RequestedOutput("scores", {"binary_data": binary}),
                       RequestedOutput("label", {"binary_data": binary})]
            req = InferRequest(model, [inp], request_id=f"kserve-{binary}",
                               request_outputs=outputs, model_version=version)
            res = await client.infer(url, req, model_name=model)
            out["infer"]["binary" if binary else "json"] = {
                "id": res.id, "model_name": res.model_name,
                "model_version": res.model_version,
                "outputs": {o.name: {"datatype": o.datatype, "shape": list(o.shape),
                                     "data": o.as_numpy().tolist()} for o in res.outputs}}
        try:
            bad = InferInput("features", [1, 16], "FP32", data=[1.0] * 15)
            await client.infer(url, InferRequest(model, [bad]), model_name=model)
            out["bad"] = "accepted"
        except Exception as e:  # httpx.HTTPStatusError, as KServe raises it
            response = getattr(e, "response", None)
            out["bad"] = {"status": getattr(response, "status_code", None),
                          "body": response.json() if response is not None else str(e)}
    finally:
        await client.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
