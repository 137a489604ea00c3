"""The paper's classifiers: architectures, training and export."""
