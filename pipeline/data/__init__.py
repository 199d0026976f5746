"""Datasets: readers (one per format), image decoding and verification, and domain matching.

    from pipeline.data import load_dataset
    ds = load_dataset("fashion-mnist", data_dir)   # ds.splits["train"].batch(0, 64) -> uint8 (64, 1, 28, 28)
"""
from pipeline.data.cifar import CIFAR10_CLASSES
from pipeline.data.dataset import DATASET, TEST_FRACTION, Dataset, Split, dataset_slug, limit_suffix, stratified_holdout
from pipeline.data.idx import FASHION_MNIST_CLASSES, read_idx, write_idx
from pipeline.data.load import DATASETS, load_dataset

__all__ = ["CIFAR10_CLASSES", "DATASET", "DATASETS", "FASHION_MNIST_CLASSES", "TEST_FRACTION", "Dataset", "Split",
           "dataset_slug", "limit_suffix", "load_dataset", "read_idx", "stratified_holdout", "write_idx"]
