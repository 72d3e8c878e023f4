"""Running the app: the launcher, local deployments, watchdog, warm worker.

The launcher owns a private SuperLink; the watchdog stops what a killed launch
left; the warm worker keeps TensorFlow loaded per SuperNode.
"""
