"""Codecs: round trips, error bounds, byte sizes, and malformed payloads."""

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters

from fl_app.features.compression.codecs import (
    ClientCodecs,
    Codec,
    CodecError,
    decode_gaps,
    encode_gaps,
)
from strategies.fedavg import parameters_size


def sparse_weights(rng, sparsity=0.9):
    kernel = rng.normal(size=(40, 30)).astype(np.float32)
    kernel[rng.random(kernel.shape) < sparsity] = 0
    return [kernel, rng.normal(size=30).astype(np.float32)]


def test_codec_parse_and_reject():
    assert Codec.parse("none") == Codec()
    assert Codec.parse("sparse+int8") == Codec(sparse=True, values="int8")
    assert str(Codec.parse("int8+sparse")) == "sparse+int8"
    for bad in ("gzip", "float16+int8", "sparse+sparse", ""):
        with pytest.raises(ValueError):
            Codec.parse(bad)


def test_gap_coding_by_hand():
    # gaps 0, 3, 255 (escape + 0), 300 (255 + 45)
    index = np.array([0, 3, 258, 558])
    coded = encode_gaps(index)
    np.testing.assert_array_equal(coded, [0, 3, 255, 0, 255, 45])
    np.testing.assert_array_equal(decode_gaps(coded, 559), index)
    with pytest.raises(CodecError):
        decode_gaps(coded, 558)  # last index out of range
    with pytest.raises(CodecError):
        decode_gaps(np.array([1, 0], np.uint8), 10)  # repeated index


@pytest.mark.parametrize("spec", ["none", "sparse", "float16", "sparse+float16"])
def test_lossless_and_float16_round_trips(spec):
    rng = np.random.default_rng(0)
    weights = sparse_weights(rng)
    codec = Codec.parse(spec)
    decoded = codec.decode(codec.encode(weights), [w.shape for w in weights])
    for w, d in zip(weights, decoded, strict=True):
        assert d.dtype == np.float32 and d.shape == w.shape
        if codec.lossless:
            np.testing.assert_array_equal(d, w)
        else:
            np.testing.assert_allclose(d, w, rtol=2**-11, atol=0)
            np.testing.assert_array_equal(d == 0, w == 0)


@pytest.mark.parametrize("spec", ["int8", "sparse+int8"])
def test_int8_error_within_half_a_step(spec):
    rng = np.random.default_rng(1)
    weights = sparse_weights(rng)
    codec = Codec.parse(spec)
    decoded = codec.decode(codec.encode(weights), [w.shape for w in weights])
    for w, d in zip(weights, decoded, strict=True):
        step = np.abs(w).max() / 127
        assert np.abs(d - w).max() <= step / 2 + 1e-7
        assert np.all(d[w == 0] == 0)


def test_sparse_int8_bytes_equal_serialized_size():
    rng = np.random.default_rng(2)
    weights = sparse_weights(rng, sparsity=0.9)
    payload = Codec.parse("sparse+int8").encode(weights)
    nonzero = int(np.count_nonzero(weights[0]))
    # kernel: one gap byte per kept value (all gaps < 255 here) + one int8 value +
    # a float32 scale; bias: 30 int8 values + a scale
    assert [a.nbytes for a in payload] == [nonzero, nonzero, 4, 30, 4]
    serialized = parameters_size(ndarrays_to_parameters(payload))
    # what the strategy counts is the np.save bytes of each array: data + header
    assert serialized == sum(a.nbytes for a in payload) + 128 * len(payload)
    assert sum(w.nbytes for w in weights) / sum(a.nbytes for a in payload) > 10


def test_decode_rejects_malformed_payloads():
    rng = np.random.default_rng(3)
    weights = sparse_weights(rng)
    shapes = [w.shape for w in weights]
    codec = Codec.parse("sparse+int8")
    payload = codec.encode(weights)
    with pytest.raises(CodecError, match="expected 5 arrays"):
        codec.decode(payload[:-1], shapes)
    bad = list(payload)
    bad[1] = bad[1].astype(np.float32)
    with pytest.raises(CodecError, match="int8 values"):
        codec.decode(bad, shapes)
    bad = list(payload)
    bad[2] = np.array([np.inf], np.float32)
    with pytest.raises(CodecError, match="finite"):
        codec.decode(bad, shapes)
    nan = [w.copy() for w in weights]
    nan[1][0] = np.nan
    with pytest.raises(CodecError, match="non-finite"):
        Codec.parse("float16").decode(Codec.parse("float16").encode(nan), shapes)


def test_error_feedback_carries_the_coding_error():
    rng = np.random.default_rng(4)
    received = [rng.normal(size=(20, 10)).astype(np.float32)]
    trained = [received[0] + rng.normal(scale=0.01, size=(20, 10)).astype(np.float32)]
    codecs = ClientCodecs.from_specs("int8", "none", delta=True, error_feedback=True)
    payload, residual = codecs.encode_upload(trained, received)
    sent = codecs.upload.decode(payload, [(20, 10)])[0]
    np.testing.assert_allclose(sent + residual[0], trained[0] - received[0], atol=1e-7)
    # next round: the residual is added before coding
    payload2, _ = codecs.encode_upload(trained, received, residual)
    sent2 = codecs.upload.decode(payload2, [(20, 10)])[0]
    expected = trained[0] - received[0] + residual[0]
    assert np.abs(sent2 - expected).max() <= np.abs(expected).max() / 254 + 1e-7


def test_keep_mask_confines_the_update():
    received = [np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)]
    trained = [np.array([[1.5, 0.3], [0.2, 2.5]], np.float32)]
    codecs = ClientCodecs.from_specs("sparse", "none", delta=True, error_feedback=False)
    payload, _ = codecs.encode_upload(trained, received, keep=[received[0] != 0])
    decoded = codecs.upload.decode(payload, [(2, 2)])[0]
    np.testing.assert_array_equal(decoded, [[0.5, 0.0], [0.0, 0.5]])


@pytest.mark.parametrize("spec", ["sign", "sparse+sign"])
def test_sign_codec_sends_signs_and_mean_magnitude(spec):
    kernel = np.array([[0.5, -1.5], [0.0, 1.0]], np.float32)
    codec = Codec.parse(spec)
    payload = codec.encode([kernel])
    decoded = codec.decode(payload, [(2, 2)])[0]
    if codec.sparse:  # zeros stay zero; the scale is the mean kept magnitude
        np.testing.assert_allclose(decoded, [[1.0, -1.0], [0.0, 1.0]])
    else:  # one bit per entry (0 counts as +), scale mean |v| = 0.75
        np.testing.assert_allclose(decoded, [[0.75, -0.75], [0.75, 0.75]])
        assert payload[0].nbytes == 1


@pytest.mark.parametrize("spec", ["sparse", "sparse+int8", "sparse+sign"])
def test_sparse_sends_dense_kernels_whole(spec):
    rng = np.random.default_rng(5)
    kernel = rng.normal(size=(30, 20)).astype(np.float32)  # no zeros
    codec = Codec.parse(spec)
    payload = codec.encode([kernel])
    assert payload[0].size == 0  # no index bytes
    decoded = codec.decode(payload, [kernel.shape])[0]
    assert decoded.shape == kernel.shape
    assert np.all(np.sign(decoded) * np.sign(kernel) >= 0)  # int8 may round to 0
