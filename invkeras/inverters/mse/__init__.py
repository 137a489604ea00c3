"""The MSE decoder baseline as an inverter kind: its samples are its one reconstruction."""

from invkeras.inverters.mse import kind  # noqa: F401  (registers the kind)
