"""pipeline: pretrained-CNN embeddings vs raw pixels, from dataset to report.

Subpackages in data-flow order (docs/design.md): data -> embed -> store -> classical | train | maps ->
results + models -> apply -> report; files and hardware at the bottom, run and cli on top.
`from pipeline import load_features` is light (numpy only); `pipeline.embed.extract.extract(ExtractRequest())`
runs Stage 1 from Python; `from pipeline import ImageEmbedder` is Stage 1 as a scikit-learn transformer (imports
torch when first used).
"""
from pipeline.errors import PipelineError
from pipeline.store import Features, load_features

__version__ = "0.1.0"
__all__ = ["PipelineError", "Features", "ImageEmbedder", "load_features", "__version__"]


def __getattr__(name):  # heavy (torch, scikit-learn): imported only when asked for
    if name == "ImageEmbedder":
        from pipeline.embed.embedder import ImageEmbedder

        return ImageEmbedder
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
