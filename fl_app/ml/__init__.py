"""Keras model builders, local training steps and the per-process model cache."""
