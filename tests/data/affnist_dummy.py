"""Write the tiny dummy files that tests/test_affnist.py feeds to the `affnist` TFDS builder.

The tests generate them into a temporary directory (a few kilobytes, seeded, so every run
writes the same bytes); nothing is committed.

official/   affNIST-layout .mat files (struct `affNISTdata`, `image` uint8 [1600, N], one
            40x40 row-major image per column, `label_int` [1, N], `label_one_of_n` [10, N]):
            training_batches/1.mat, 2.mat (3 images each), validation_batches/1.mat (2),
            and the all-in-one form test.mat (3).
generated/  MNIST IDX files: train-* (12 digits) and t10k-* (4 digits), gzipped.

Images are random blobs confined to the middle of the frame (as MNIST digits are to
their central 20x20 box), so that every split's images differ and the affine transform
always fits them on the 40x40 canvas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from invkeras.data.local import write_idx_file

MAT_HEADER_BYTES = 116  # MATLAB 5 files start with 116 bytes of free text (scipy writes a timestamp there)


def blobs(rng: np.random.Generator, n: int, size: int, margin: int) -> np.ndarray:
    """n uint8 images [size, size] that are zero outside a central box."""
    images = np.zeros((n, size, size), dtype=np.uint8)
    inner = size - 2 * margin
    images[:, margin:-margin, margin:-margin] = rng.integers(0, 256, size=(n, inner, inner)) * (
        rng.random((n, inner, inner)) < 0.3
    )
    return images


def write_affnist_mat(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Save images [N, 40, 40] and labels [N] in the official affNIST .mat layout, reproducibly."""
    one_hot = np.zeros((10, len(labels)), dtype=np.uint8)
    one_hot[labels, np.arange(len(labels))] = 1
    struct = {
        "image": images.reshape(len(images), -1).T.copy(),  # [1600, N]: column n = image n, row-major
        "label_int": labels.astype(np.uint8)[None, :],
        "label_one_of_n": one_hot,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"affNISTdata": struct})
    data = bytearray(path.read_bytes())
    data[:MAT_HEADER_BYTES] = b"MATLAB 5.0 MAT-file, invkeras affNIST dummy data".ljust(MAT_HEADER_BYTES)
    path.write_bytes(bytes(data))


def write_dummy_affnist(out: Path) -> Path:
    """Write official/ and generated/ under `out`; return `out`."""
    rng = np.random.default_rng(20240601)
    official = out / "official"
    for relative, n in [("training_batches/1.mat", 3), ("training_batches/2.mat", 3),
                        ("validation_batches/1.mat", 2), ("test.mat", 3)]:
        write_affnist_mat(official / relative, blobs(rng, n, 40, 10), rng.integers(0, 10, size=n))

    generated = out / "generated"
    generated.mkdir(parents=True, exist_ok=True)
    for prefix, n in [("train", 12), ("t10k", 4)]:
        write_idx_file(generated / f"{prefix}-images-idx3-ubyte.gz", blobs(rng, n, 28, 6))
        write_idx_file(generated / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=n).astype(np.uint8))
    return out
