"""Synthetic-data balancing: a federated GAN phase before the classifier's rounds.

``gan`` holds the generator, discriminator and their training, ``client`` the
clients' GAN messages and synthetic rows, ``server`` the GAN phase.
"""
