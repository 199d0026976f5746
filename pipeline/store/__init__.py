"""The feature store (a folder of .npy files and meta.json, readable with numpy alone) and feature sets (raw
pixels or a store, with the recipe that makes them again).

    from pipeline.store import load_features
    X_train, y_train, X_test, y_test, meta = load_features("features/fashion-mnist/resnet18")
"""
from pipeline.store.format import FEATURES_ROOT, Features, load_features, store_dirname, store_path

__all__ = ["FEATURES_ROOT", "Features", "load_features", "store_dirname", "store_path"]
