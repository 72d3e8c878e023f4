"""The compression feature's client part: arrays coded on the wire.

Registers :class:`CodecTransport` for runs with compression on: downloads are
decoded into the model; uploads become codec payloads of the weights or of their
delta, and error feedback keeps the coding residual in the node state, as compressed
downloads keep the node's copy of the model there.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common import NDArrays, Scalar

from fl_app.client.keras_client import Transport, register_transport
from fl_app.core.config import RunConfig
from fl_app.features.compression.codecs import ClientCodecs
from fl_app.features.compression.download import BASE, VERSION, apply_download
from fl_app.ml.training import ModelKey, initial_weights, keras, weight_shapes

STATE_RESIDUAL = "compression-residual"
STATE_COPY = "compression-model-copy"  # the node's copy of the public model
STATE_COPY_VERSION = "compression-model-copy-version"  # its version


class CodecTransport(Transport):
    """Codec-coded downloads and uploads; the coding residual in the node state."""

    def __init__(self, cfg: RunConfig, state: RecordDict) -> None:
        super().__init__(cfg, state)
        comp = cfg.compression
        self.pruning = cfg.pruning is not None
        self.topk_at = comp.topk_at
        self.server_round = 0  # of the message being served (receive sets it)
        self.codecs = ClientCodecs.from_specs(
            comp.upload, comp.download, comp.delta, comp.error_feedback, comp.topk
        )

    def receive(
        self,
        model: keras.Model,
        key: ModelKey,
        parameters: NDArrays,
        config: dict[str, Scalar],
    ) -> NDArrays:
        """Decode what the server sent, set it into ``model``, return it.

        A download of what changed since this node's copy of the model
        (``download.BASE`` in ``config``) updates the copy kept in the node state.
        """
        self.server_round = int(config.get("server_round", 0))
        shapes = weight_shapes(model, key)
        if BASE in config:
            parameters = self._update_copy(
                parameters, config, shapes, initial_weights(key)
            )
        else:
            parameters = self.codecs.decode_download(parameters, shapes)
        return super().receive(model, key, parameters, config)

    def _update_copy(
        self,
        arrays: NDArrays,
        config: dict[str, Scalar],
        shapes: list,
        origin: NDArrays | None,
    ) -> NDArrays:
        copy, version = None, None
        if STATE_COPY in self.state.array_records:
            copy = self.state.array_records[STATE_COPY].to_numpy_ndarrays()
            version = int(self.state.config_records[STATE_COPY_VERSION][VERSION])
        copy = apply_download(copy, version, arrays, config, shapes, origin)
        self.state.array_records[STATE_COPY] = ArrayRecord(numpy_ndarrays=copy)
        self.state.config_records[STATE_COPY_VERSION] = ConfigRecord(
            {VERSION: int(config[VERSION])}
        )
        return copy

    def send(self, weights: NDArrays, received: NDArrays) -> NDArrays:
        """Encode the trained weights for upload (delta, error feedback, codec)."""
        keep = None
        if self.pruning:  # stay inside the server's mask
            keep = [w != 0 if w.ndim >= 2 else None for w in received]
        residual = None
        if STATE_RESIDUAL in self.state.array_records:
            residual = self.state.array_records[STATE_RESIDUAL].to_numpy_ndarrays()
        codecs = replace(self.codecs, topk=self.topk_at(self.server_round))
        payload, residual = codecs.encode_upload(weights, received, residual, keep)
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
