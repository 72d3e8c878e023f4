"""The core: config schema and parsing, specs, registries, messages, results.

Also checkpoints and the timeline. Names no feature; imports no TensorFlow.
"""
