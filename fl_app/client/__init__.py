"""The client side: the Keras client, its training pipeline, node state."""
