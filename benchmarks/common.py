"""What the benchmark scripts share: the options that say which feature sets to load."""
from __future__ import annotations

import argparse


def feature_set_options(ap: argparse.ArgumentParser, features: str = "raw,efficientnet_lite0") -> None:
    """--features, --dataset, --data-dir, --limit, read as `pipeline classify` reads them (the dataset is found
    as the CLI finds it when --data-dir is not given)."""
    ap.add_argument("--features", default=features, help="comma-separated: raw, a backbone's store, or a path")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", type=int, default=None, help="the first N images of each split")
