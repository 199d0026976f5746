"""Stage 3, saved models on new images: `featurize` (a card's recipe made again), `predict` (a CSV of
predictions) and `evaluate` (the in-the-wild test, added to a study's records)."""

PREDICTIONS = "predictions.csv"  # `pipeline predict`'s default --out
TOP_K = 3  # classes (with scores) per image
EXPORT_FORMATS = ("parquet", "csv")  # `pipeline export --to`
NEIGHBORS_K = 8  # `pipeline neighbors -k`: training images per query
