"""pipeline: pretrained-CNN embeddings vs raw pixels, from dataset to report.

Subpackages in data-flow order (docs/design.md): data -> embed -> store -> classical | train | maps ->
results + models -> apply -> report; files and hardware at the bottom, run and cli on top.
`from pipeline import load_features` is light (numpy only); `pipeline.embed.extract.extract(ExtractRequest())`
runs Stage 1 from Python.
"""
from pipeline.errors import PipelineError
from pipeline.store import Features, load_features

__version__ = "0.1.0"
__all__ = ["PipelineError", "Features", "load_features", "__version__"]
