"""Server-side federated algorithms: numpy and Flower only, never TensorFlow."""
