"""The compression feature's client part: arrays coded on the wire.

Registers :class:`CodecTransport` for runs with compression on: downloads are
decoded into the model; uploads become codec payloads of the weights or of their
delta, and error feedback keeps the coding residual in the node state.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, RecordDict
from flwr.common import NDArrays

from fl_app.client.keras_client import Transport, register_transport
from fl_app.core.config import RunConfig
from fl_app.features.compression.codecs import ClientCodecs
from fl_app.ml.training import ModelKey, keras, weight_shapes

STATE_RESIDUAL = "compression-residual"


class CodecTransport(Transport):
    """Codec-coded downloads and uploads; the coding residual in the node state."""

    def __init__(self, cfg: RunConfig, state: RecordDict) -> None:
        super().__init__(cfg, state)
        comp = cfg.compression
        self.pruning = cfg.pruning is not None
        self.codecs = ClientCodecs.from_specs(
            comp.upload, comp.download, comp.delta, comp.error_feedback, comp.topk
        )

    def receive(
        self, model: keras.Model, key: ModelKey, parameters: NDArrays
    ) -> NDArrays:
        """Decode what the server sent, set it into ``model``, return it."""
        parameters = self.codecs.decode_download(parameters, weight_shapes(model, key))
        return super().receive(model, key, parameters)

    def send(self, weights: NDArrays, received: NDArrays) -> NDArrays:
        """Encode the trained weights for upload (delta, error feedback, codec)."""
        keep = None
        if self.pruning:  # stay inside the server's mask
            keep = [w != 0 if w.ndim >= 2 else None for w in received]
        residual = None
        if STATE_RESIDUAL in self.state.array_records:
            residual = self.state.array_records[STATE_RESIDUAL].to_numpy_ndarrays()
        payload, residual = self.codecs.encode_upload(weights, received, residual, keep)
        if residual is not None:
            self.state.array_records[STATE_RESIDUAL] = ArrayRecord(
                numpy_ndarrays=residual
            )
        return payload

    def unchanged(self, received: NDArrays) -> NDArrays:
        """Encode "no update" (a declined round) without touching the carried error."""
        if self.codecs.delta:
            return self.codecs.upload.encode([np.zeros_like(w) for w in received])
        return self.codecs.upload.encode(received)


register_transport(lambda cfg: cfg.compression.active, CodecTransport)
