"""`pipeline export`: a store as one table, one row per image, for the tools people already use (pandas,
DuckDB, Polars, FiftyOne, Spotlight), readable without this project: split, index, label, label name, the
image's file (image folders) or the dataset's source, the embedding, and the 2-D map coordinates of this very
store where a report folder's maps/ holds them. Parquet (Arrow, via pyarrow: the vector as one fixed-size
list column) or CSV (the vector as columns e0..e<D-1>)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.apply import EXPORT_FORMATS
from pipeline.apply.neighbors import store_set
from pipeline.data.images import show_path
from pipeline.errors import PipelineError
from pipeline.files import read_json, refuse_to_replace, replacing
from pipeline.render import csvfile
from pipeline.store.featuresets import FeatureSet, source_images

FORMATS = EXPORT_FORMATS


def map_columns(maps_dir: Path | None, fs: FeatureSet) -> dict[str, np.ndarray]:
    """{'<method>_x': ..., '<method>_y': ...} of the maps in `maps_dir` made from exactly these features (their
    fingerprint), train rows then test rows as the maps hold them."""
    cols: dict[str, np.ndarray] = {}
    if maps_dir is None:
        return cols
    for meta_path in sorted(Path(maps_dir).glob(f"{fs.name}_*.json")):
        meta = read_json(meta_path)
        npy = meta_path.with_suffix(".npy")
        if not meta or meta.get("feature_set") != fs.name or meta.get("fingerprint") != fs.fingerprint \
                or not npy.is_file():
            continue
        xy = np.load(npy, allow_pickle=False)
        if xy.shape != (len(fs.y_train) + len(fs.y_test), 2):
            continue
        cols[f"{meta['method']}_x"], cols[f"{meta['method']}_y"] = xy[:, 0], xy[:, 1]
    return cols


def table(fs: FeatureSet, maps_dir: Path | None = None) -> dict[str, list | np.ndarray]:
    """The export's columns: split, index, label, label_name, path (an image folder's files) or source (an array
    dataset's folder), embedding, and maps."""
    ds = None
    if fs.dataset == "folder":
        ds = source_images(fs)  # the files, in the store's order (labels checked)
    split, index, label, path = [], [], [], []
    for s, y in (("train", fs.y_train), ("test", fs.y_test)):
        split += [s] * len(y)
        index += range(len(y))
        label += [int(v) for v in y]
        path += [show_path(f) for f in ds.splits[s].files] if ds is not None and len(y) else [""] * len(y)
    source = str(fs.meta.get("dataset", {}).get("source") or "")
    where = {"path": path} if ds is not None else {"source": [source] * len(label)}  # a file, or the dataset's
    names = [show_path(c) for c in fs.classes]  # a folder name that is not valid UTF-8, shown
    return {"split": split, "index": index, "label": label, "label_name": [names[v] for v in label], **where,
            "embedding": np.concatenate([fs.X_train, fs.X_test]).astype(np.float32, copy=False),
            **map_columns(maps_dir, fs)}


def export(store: str | Path, to: str, out: str | Path | None = None, maps_dir: str | Path | None = None,
           overwrite: bool = False) -> Path:
    """Write the store's table to `out` (default: `<store>.<to>` beside it) atomically; an existing file is
    replaced only with `overwrite`."""
    if to not in FORMATS:
        raise PipelineError(f"--to {to!r}: choose {' or '.join(FORMATS)}")
    store = Path(store).expanduser().resolve()  # `--features .` has a name to put the file beside
    fs = store_set(store)  # first: `/` is no store, and has no name to put a file beside
    out = Path(out) if out else store.with_name(f"{store.name}.{to}")
    refuse_to_replace(out, overwrite)
    if to == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise PipelineError("--to parquet needs pyarrow: pip install 'transfer-workbench[export]' "
                                "(or --to csv)") from None
    cols = table(fs, Path(maps_dir) if maps_dir else None)
    X = cols.pop("embedding")
    meta = {"store": str(store), "backbone": fs.meta.get("backbone", {}).get("name"),
            "config_hash": fs.meta.get("config_hash"), "classes": fs.classes}
    if to == "parquet":
        arrays = {k: pa.array(v) for k, v in cols.items()}
        arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
        t = pa.table(arrays).replace_schema_metadata({"pipeline": json.dumps(meta)})
        with replacing(out) as f:
            pq.write_table(t, f)
    else:
        import io

        names = list(cols)
        head = names + [f"e{j}" for j in range(X.shape[1])]  # 9 significant digits: float32 exactly
        rows = ([cols[k][i] for k in names] + [f"{v:.9g}" for v in X[i].tolist()] for i in range(len(X)))
        with replacing(out) as f:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            csvfile.stream(text, head, rows)
            text.flush()
            text.detach()  # `replacing` closes the file itself
    return out
