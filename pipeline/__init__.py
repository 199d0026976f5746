"""pipeline: pretrained-CNN embeddings vs raw pixels, from dataset to report.

Stages (one module each): datasets -> backbones/engines -> extract -> store.
"""
from pipeline.errors import PipelineError
from pipeline.store import Features, load_features

__version__ = "0.1.0"
__all__ = ["PipelineError", "Features", "load_features", "extract", "__version__"]


def __getattr__(name):  # torch-heavy stages are imported only when used
    if name == "extract":
        from pipeline.extract import extract

        return extract
    raise AttributeError(name)
