"""A real KServe model server (the ``kserve`` package's ModelServer, Open Inference Protocol v2 over REST)
serving an unmodified backbone's own forward, as a user would deploy it. Run by tests/test_endpoints.py:

    python tests/servers/kserve_vit.py BACKBONE PORT [scores] [MODEL_NAME]

Input ``input``: (B, H, W, 3) UINT8 canvases, normalised here with the model's own preprocessing.
Output: ``embeddings`` (the library's forward up to its features), or ``scores`` (its own head).
"""
import sys

import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from pgn.backbones import create_backbone
from pgn.pixels import from_uint8
from pgn.server.models import served_model


class Backbone(Model):
    def __init__(self, name: str, backbone: str, answer: str):
        super().__init__(name)
        bb = create_backbone(backbone)
        # A classifier prompted in pixels (a CNN) answers its own scores, whatever they are called.
        names = None if not bb.takes_tokens else [str(i) for i in range(10)]
        self.served = served_model(bb, names if answer == "scores" else None)
        self.answer = answer
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        pixels = payload.inputs[0].as_numpy()  # (B, H, W, 3) uint8
        pre = self.served.preprocessing
        x = from_uint8(pixels, pre.mean, pre.std)
        with torch.inference_mode():
            out = self.served.scores(x) if self.answer == "scores" else self.served.embed(x)[0]
        tensor = InferOutput(name=self.answer, shape=list(out.shape), datatype="FP32")
        tensor.set_data_from_numpy(out.float().numpy(), binary_data=False)
        return InferResponse(response_id=payload.id or "0", model_name=self.name, infer_outputs=[tensor])


if __name__ == "__main__":
    backbone, port = sys.argv[1], int(sys.argv[2])
    answer = sys.argv[3] if len(sys.argv) > 3 else "embeddings"
    name = sys.argv[4] if len(sys.argv) > 4 else "vit"
    ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False).start(
        [Backbone(name, backbone, answer)])
