"""The conditional PixelCNN++ inverter of Nash, Kushman and Williams (2019)."""

from invkeras.inverters.pixelcnn import kind  # noqa: F401  (registers the kind)
