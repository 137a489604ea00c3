"""What the analyses share: an inverter's classifier, and that classifier's view of new images.

Every analysis that measures samples in a layer's own space (`sample`, `compare`) needs the
classifier the inverter's features came from. It is found here, once, from the inverter's
metadata, and refused in one line when there is none (user features) or it is gone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from invkeras.errors import InvkerasError


def inverter_label(inverter) -> str:
    """How messages name an inverter: its directory."""
    return str(inverter.path.parent)


def classifier_of(inverter, command: str) -> Path:
    """The classifier whose layer `inverter` inverts; one line when there is none or it is gone."""
    classifier = inverter.classifier_path
    if not classifier:
        raise InvkerasError(f"{command}: inverter {inverter_label(inverter)} was trained on user features "
                            f"(--features), so there is no classifier to re-extract the samples' features with; "
                            f"{command} needs a classifier run and layer")
    if not Path(classifier).exists():
        raise InvkerasError(f"{command}: the classifier of inverter {inverter_label(inverter)}, {classifier}, "
                            "no longer exists")
    return Path(classifier)


class ClassifierProbe:
    """A classifier loaded once, read at one layer and at its final output.

    `features(images)` gives the layer's features of images [N, K, H, W, C] as [N, K, ...];
    `labels(images)` the predicted class (argmax of the final output) as [N, K], or None
    when the final output is not a vector of class scores.
    """

    def __init__(self, classifier_path: str | Path, layer: str, batch_size: int = 256):
        from invkeras.classifiers.architectures import layer_output_model
        from invkeras.data.features import load_model

        model = load_model(classifier_path)
        self.model = model  # the whole classifier, e.g. for attacks on it
        self.layer, self.batch_size = layer, batch_size
        self.final = model.layers[-1].name
        self._extractor = layer_output_model(model, [layer, self.final])

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(features [N, K, ...], predicted labels [N, K] or None) of images [N, K, H, W, C]."""
        images = np.asarray(images)
        flat = images.reshape(-1, *images.shape[2:]).astype("float32")
        features, outputs = [], []
        for start in range(0, len(flat), self.batch_size):
            result = self._extractor(flat[start : start + self.batch_size], training=False)
            features.append(np.asarray(result[self.layer]))
            outputs.append(np.asarray(result[self.final]))
        features = np.concatenate(features).reshape(*images.shape[:2], *features[0].shape[1:])
        outputs = np.concatenate(outputs)
        labels = None
        if outputs.ndim == 2 and outputs.shape[1] >= 2:
            labels = np.argmax(outputs, axis=1).reshape(images.shape[:2])
        return features, labels

    def features(self, images: np.ndarray) -> np.ndarray:
        return self(images)[0]

    def labels(self, images: np.ndarray) -> np.ndarray | None:
        return self(images)[1]


def reextract(classifier_path: str | Path, layer: str, samples: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Features of samples [N, K, H, W, C] at the same layer: [N, K, ...]."""
    return ClassifierProbe(classifier_path, layer, batch_size).features(samples)
