"""Does bf16 change what the features are worth? Compare two stores of the same images made in bf16 and
fp32: per-row cosine, and the test accuracy of the same classifiers trained on each.

    python benchmarks/bf16_accuracy.py STORE_BF16 STORE_FP32
"""
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import load_features  # noqa: E402

a, b = (load_features(p, mmap=False) for p in sys.argv[1:3])
assert a.meta["dataset"]["content_sha256"] == b.meta["dataset"]["content_sha256"], "different images"
cos = np.concatenate([(x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
                      for x, y in ((a.X_train, b.X_train), (a.X_test, b.X_test))])
print(f"{a.meta['backbone']['name']}: {a.meta['engine']['engine']} {a.meta['precision']} vs "
      f"{b.meta['engine']['engine']} {b.meta['precision']}, {len(a.y_train)} train / {len(a.y_test)} test")
print(f"per-row cosine: mean {cos.mean():.5f}, 1st percentile {np.percentile(cos, 1):.5f}, min {cos.min():.5f}")
for name, make in (("logistic regression", lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
                   ("5-NN", lambda: make_pipeline(StandardScaler(), KNeighborsClassifier(5)))):
    acc = [make().fit(f.X_train, f.y_train).score(f.X_test, f.y_test) for f in (a, b)]
    print(f"{name}: test accuracy {a.meta['precision']} {acc[0]:.4f}, {b.meta['precision']} {acc[1]:.4f}, "
          f"difference {acc[0] - acc[1]:+.4f}")
