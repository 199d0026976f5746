"""OpenVINO models kept on disk by their recipe, so that an engine is built in a fraction of a second the
second time: the converted model of a backbone (torch.export + convert_model take 3-6 s, compiling it 0.2 s;
docs/decisions.md#openvino-cache) and the int8 model NNCF quantized.

The cache lives in `$PIPELINE_CACHE_DIR` (default `~/.cache/pipeline`), under <kind>/<recipe hash>/; each
entry holds model.xml, model.bin and the recipe.json it was made from. pipeline writes an entry whole (a
temporary folder renamed into place) and never deletes one; deleting the folder only costs the next engine
its conversion. Whoever made the model, a run reads it back from the entry, so a run that converts and a run
that reads the cache give the same features.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError


def cache_dir() -> Path:
    root = os.environ.get("PIPELINE_CACHE_DIR")
    return Path(root).expanduser() if root else Path("~/.cache/pipeline").expanduser()


def recipe_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_model(ov, kind: str, recipe: dict, make: Callable[[], object], required: bool = True):
    """(model, how, entry): the model of `recipe` read from the cache (how "cached"), else made by `make()`,
    written to the cache and read back (how "made"). A cache that cannot be written is one line when the
    model is `required` to be kept (int8: its features must be reproducible); otherwise the model made in
    memory serves (how "made, not cached (reason)")."""
    entry = cache_dir() / kind / recipe_key(recipe)
    if (entry / "model.xml").is_file() and (entry / "model.bin").is_file():
        try:
            return ov.Core().read_model(str(entry / "model.xml")), "cached", entry
        except Exception:  # noqa: BLE001 - a damaged entry (not pipeline's doing): made again, in memory
            return make(), "made, not cached (the cached entry is unreadable)", entry
    model = make()
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=1, sort_keys=True, default=str))
        try:
            tmp.rename(entry)
        except OSError:  # another process cached the same recipe first: theirs is the same model
            pass
    except OSError as e:
        if required:
            raise PipelineError(f"cannot cache the {kind} model in {entry.parent} ({e.strerror}); set "
                                f"PIPELINE_CACHE_DIR to a writable folder") from None
        return model, f"made, not cached ({e.strerror})", entry
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder, never a finished entry
    return ov.Core().read_model(str(entry / "model.xml")), "made", entry
