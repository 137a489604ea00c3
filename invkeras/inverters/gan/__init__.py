"""The feedforward GAN inverter of Teterwak et al. (2021): x = G(h, eps) from one forward pass."""

from invkeras.inverters.gan import kind  # noqa: F401  (registers the kind)
