"""The conditional INN over an autoencoder latent (Rombach et al. 2020) as an inverter kind."""

from invkeras.inverters.cinn import kind  # noqa: F401  (registers the kind)
