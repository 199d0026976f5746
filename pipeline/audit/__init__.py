"""Stage 2d, the test set itself: exact and near duplicates (within and across the splits), label issues
(cleanlab on out-of-fold probabilities) and outliers, from a store's embeddings and its images; then each
record's test accuracy without the leaked or suspect test images. `pipeline audit`, and `pipeline run`'s
audit stage, write `<study>/audit.json` (+ `audit.csv` of the flagged files); the report shows it.

The thresholds live here, and docs/results.md#audit says how they were chosen."""
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import read_json

AUDIT, AUDIT_CSV = "audit.json", "audit.csv"
FORMAT = "pipeline-audit/1"

NEIGHBORS = 5  # training images searched per image: candidates for near duplicates, and the outlier score
SIDE = 16  # the pixel check compares grayscale SIDE x SIDE signatures of the two images ...
CROPS = (1.0, 0.9, 0.8)  # ... each also centre-cropped to these fractions, so a crop of a photo still matches
# near duplicate on pixels: the best-aligned signatures correlate at least PIXEL_CORR and differ by at most
# PIXEL_MAD grey levels (0..255) on average. On Fashion-MNIST the pairs found drop from 952 at 6 to 142 at 4,
# 74 at 3 and 36 at 2 (the knee): within 2 the pairs are the same photo, beyond it the same product template
# with another print or a look-alike garment (docs/results.md#audit)
PIXEL_CORR = 0.98
PIXEL_MAD = 2.0
CALIBRATION_IMAGES = 32  # training images (seeded) re-encoded, resized and cropped to calibrate the embedding's bound
OUTLIER_Z = 6.0  # an outlier: its neighbour distance this many robust standard deviations above the training median
SHOWN = 12  # groups / images per kind in the report


def read_audit(path: Path) -> dict | None:
    """audit.json, or None where there is none; a file that is not one is one line."""
    a = read_json(path, kind=object, strict=True)
    if a is None:
        return None
    if not (isinstance(a, dict) and a.get("format") == FORMAT and isinstance(a.get("thumbs"), dict)):
        raise PipelineError(f"{path} is not pipeline's audit file; move it away (`pipeline audit` writes it)")
    return a
