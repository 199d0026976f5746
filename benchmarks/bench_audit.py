"""The audit's cost and its label model, measured.

    python benchmarks/bench_audit.py --features efficientnet_lite0 [--study reports/fashion-mnist] [--data-dir DIR]
    python benchmarks/bench_audit.py --features efficientnet_lite0 --compare-models --rows 10000

The first runs `pipeline audit` on the store into a temporary copy of the study's records and predictions
(nothing of the study is written) and prints the time of each phase with the CPU named, and what it found.
The second fits, side by side on the first --rows training and --rows/5 test images, the two label models
considered: the standardised logistic regression the classify stage tunes (C=0.01), and the audit's
(L2-normalised rows, <= 256 principal components, C=10): out-of-fold and test accuracy, the label issues
cleanlab finds with each, and the seconds.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import feature_set_options  # noqa: E402

from pipeline.audit import labels as lab  # noqa: E402
from pipeline.hardware import cpu_name  # noqa: E402
from pipeline.store.featuresets import load_feature_set  # noqa: E402


def compare(fs, rows: int) -> None:
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = fs.X_train[:rows], fs.y_train[:rows]
    Xt, yt = fs.X_test[:rows // 5], fs.y_test[:rows // 5]
    models = {"standardised, C=0.01": make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000)),
              "the audit's (" + lab.MODEL + ")": lab.default_model(len(y) * 2 // 3, X.shape[1])}
    print(f"{len(y):,} train / {len(yt):,} test rows of {fs.name}, 3 folds; {cpu_name()}")
    for name, m in models.items():
        t = time.perf_counter()
        P = cross_val_predict(clone(m), X, y, cv=StratifiedKFold(3, shuffle=True, random_state=0),
                              method="predict_proba")
        Pt = clone(m).fit(X, y).predict_proba(Xt)
        s = time.perf_counter() - t
        print(f"  {name:<95} out-of-fold {np.mean(P.argmax(1) == y):.4f}  test {np.mean(Pt.argmax(1) == yt):.4f}  "
              f"label issues {len(lab.label_issues(y, P)):,} train / {len(lab.label_issues(yt, Pt)):,} test  "
              f"{s:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    feature_set_options(ap, "efficientnet_lite0")
    ap.add_argument("--study", default=None, help="a study folder whose records and predictions to copy")
    ap.add_argument("--compare-models", action="store_true")
    ap.add_argument("--rows", type=int, default=10000)
    a = ap.parse_args()
    fs = load_feature_set(a.features, a.dataset, a.data_dir, a.limit)
    if a.compare_models:
        compare(fs, a.rows)
        return
    from pipeline.audit.check import audit

    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        out = Path(tmp) / "study"
        out.mkdir()
        if a.study:
            for name in ("results.json", "predictions"):
                src = Path(a.study) / name
                if src.is_dir():
                    shutil.copytree(src, out / name)
                elif src.exists():
                    shutil.copy(src, out / name)
        t = time.perf_counter()
        doc = audit(fs, out)
        wall = time.perf_counter() - t
    c = doc["duplicates"]["counts"]
    print(f"audit of {fs.name} ({len(fs.y_train):,} + {len(fs.y_test):,} images) on {cpu_name()}: {wall:.1f} s")
    for phase, s in doc["seconds"].items():
        print(f"  {phase:<20} {s:8.1f} s")
    print(f"  duplicates: {c}; embedding bound {doc['thresholds']['embedding_cosine']}")
    print(f"  label issues: {len(doc['label_issues']['train']):,} train, {len(doc['label_issues']['test']):,} test; "
          f"outliers {doc['outliers']['count']:,}")


if __name__ == "__main__":
    main()
