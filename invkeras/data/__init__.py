"""Datasets for invkeras: one spec string per source, three deterministic splits each.

`load` gives an unbatched tf.data.Dataset of (image uint8 [H, W, C], label int64);
`load_arrays` the same as NumPy, `iter_batches` as NumPy batches; `dataset_info` the
shapes, classes and split sizes; `list_sources` the table behind `invkeras datasets`. See `registry` for the spec
syntax and how missing splits are carved, `procedural` for the embedded dataset with
exactly known entropy, `affine`/`affnist` for affNIST.

TensorFlow Datasets (and TensorFlow) are imported only when a TFDS-backed spec or `load`
is used: the other sources work without TensorFlow installed.
"""

from invkeras.data.registry import (SPLITS, DatasetInfo, dataset_info, iter_batches, list_sources, load,
                                    load_arrays)

__all__ = ["SPLITS", "DatasetInfo", "dataset_info", "iter_batches", "list_sources", "load", "load_arrays"]
