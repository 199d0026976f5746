"""Stage 1, embeddings: a backbone (name -> model, weights, preprocessing) run by an engine (torch or
OpenVINO; device, precision) over a dataset's batches into a store, on one machine or in shards on Dask
workers. `request` is light (the defaults and choice lists the CLI reads); the rest imports torch.
"""
from pipeline.embed.request import BACKBONE, ENGINES, PRECISIONS, ExtractRequest, ExtractResult

__all__ = ["BACKBONE", "ENGINES", "PRECISIONS", "ExtractRequest", "ExtractResult"]
