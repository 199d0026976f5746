"""pipeline: pretrained-CNN embeddings vs raw pixels, from dataset to report.

Stages, one module each: datasets -> backbones + engines -> extract -> store.
`from pipeline import load_features` is light (numpy only); `from pipeline.extract import extract` runs
Stage 1 from Python.
"""
from pipeline.errors import PipelineError
from pipeline.store import Features, load_features

__version__ = "0.1.0"
__all__ = ["PipelineError", "Features", "load_features", "__version__"]
