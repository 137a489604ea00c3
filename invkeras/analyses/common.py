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


def same_file(a: str | Path, b: str | Path) -> bool:
    """One file: the same path, or a byte-identical copy (a workspace copied elsewhere)."""
    import filecmp

    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    return a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)


def data_settings(config) -> str:
    """The settings that decide an inverter's held-out images (not how many of them)."""
    import json

    from invkeras.inverters.data import PairedDataConfig

    fields = set(PairedDataConfig.model_fields) - {"train_examples", "eval_examples"}
    return json.dumps(config.model_dump(include=fields), sort_keys=True, default=str)


def check_same_data(inverters: list, *, command: str, split: str, count: int) -> None:
    """Refuse, in one line naming two of them, inverters that do not share their data: each must
    invert the same classifier (or all be trained on given features) and have the same first
    `count` held-out `split` images (checked by fingerprint where their data settings differ).
    Their samples, reconstructions and scores of one image mean nothing side by side otherwise."""
    from invkeras.inverters.data import fingerprint, held_out_inputs

    first = inverters[0]
    prints: dict[str, str] = {}

    def images_of(inverter) -> str:
        key = data_settings(inverter.config)
        if key not in prints:
            prints[key] = fingerprint(held_out_inputs(inverter.config, split, count)["x"])
        return prints[key]

    for other in inverters[1:]:
        a, b = first.classifier_path, other.classifier_path
        if (a is None) != (b is None) or (a is not None and not same_file(a, b)):
            def inverts(path):
                return f"inverts {path}" if path is not None else "was trained on given features (no classifier)"

            raise InvkerasError(f"{command}: inverters of different classifiers: {inverter_label(first)} "
                                f"{inverts(a)}, {inverter_label(other)} {inverts(b)}")
        if data_settings(first.config) != data_settings(other.config) and images_of(first) != images_of(other):
            raise InvkerasError(f"{command}: inverters {inverter_label(first)} and {inverter_label(other)} have "
                                f"different held-out {split} images (fingerprints {images_of(first)} and "
                                f"{images_of(other)}); use inverters trained on the same data")


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
