"""Synthetic-data balancing: a federated GAN phase before the classifier's rounds.

``settings`` declares ``synthetic-*``; ``gan`` holds the generator, discriminator
and their training, ``client`` the clients' GAN messages and synthetic rows (a
client data hook), ``server`` the GAN phase.
"""

from fl_app.features.synthetic import settings as settings
