"""Inversion models p(x | h): one interface (`base`), one training loop (`invkeras.training`),
one sub-package per kind. Importing this package registers the built-in kinds."""

from invkeras.inverters.base import (  # noqa: F401
    MODEL_FILE,
    Inverter,
    InverterConfig,
    QuickTraining,
    TrainedInverter,
    config_for,
    inverter_class,
    inverter_kinds,
    load_inverter,
    model_file,
    register_inverter,
    train_inverter,
)
from invkeras.inverters.data import UNCONDITIONAL, PairedDataConfig  # noqa: F401
from invkeras.inverters import gan, mse, pixelcnn  # noqa: E402,F401  (the built-in kinds)
from invkeras.inverters import cinn  # noqa: E402,F401  (conditional INN over an autoencoder latent)
