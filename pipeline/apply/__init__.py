"""Stage 3, saved models on new images: `featurize` (a card's recipe made again), `predict` (a CSV of
predictions) and `evaluate` (the in-the-wild test, added to a study's records)."""

PREDICTIONS = "predictions.csv"  # `pipeline predict`'s default --out
TOP_K = 3  # classes (with scores) per image
