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


def each_feature_set(a: argparse.Namespace, per_set: str, kind=float):
    """The feature sets --features names, loaded one at a time, each with its value of a comma-separated
    per-set option (e.g. --C 10,3); one value per feature set, or the script stops saying so."""
    from pipeline.store.featuresets import load_feature_set

    names, values = a.features.split(","), [kind(v) for v in per_set.split(",")]
    if len(values) != len(names):
        raise SystemExit(f"{per_set!r}: give one value per feature set in --features {a.features}")
    for name, value in zip(names, values):
        yield load_feature_set(name, a.dataset, a.data_dir, a.limit), value
