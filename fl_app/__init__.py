"""fl-dnn: federated learning for TensorFlow/Keras deep networks on Flower.

tensorflow-model-optimization and tensorflow-privacy support Keras 2 only, so the
legacy Keras (``tf_keras``) must be selected before anything imports ``tf.keras``.
Every process that runs project code imports this package first (the Flower apps,
Ray workers, ``run_simulation.py``), which makes this the one place to set it.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
