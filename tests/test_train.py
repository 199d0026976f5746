"""Trained heads (`pipeline train`) and fine-tuning (`pipeline finetune`) on data the tests make: Gaussian
blobs in a store written here, tiny IDX files, random-weight networks at tiny image sizes."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import cli_process
import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, blobs, make_idx_dir, run_cli, write_store

from pipeline.models.saved import load_model
from pipeline.results import read_results


@pytest.fixture
def store(tmp_path) -> Path:
    Xtr, ytr = blobs(400, seed=0, spread=2.5)
    Xte, yte = blobs(200, seed=1, spread=2.5)
    return write_store(tmp_path / "store", Xtr, ytr, Xte, yte)


def train_args(store, out, *extra):
    # the CPU path unless a test asks for another device (reruns compare to 1e-5; CUDA kernels are not bitwise stable)
    return ["train", "--features", store, "--epochs", 6, "--batch-size", 32, "--device", "cpu", "--out", out, *extra]


def records(out: Path) -> dict:
    return {(r["feature_set"], r["classifier"]): r for r in read_results(out)}


def test_heads_join_the_results_with_history_model_and_curve(runner, tmp_path, store):
    from sklearn.linear_model import LogisticRegression

    from pipeline.report import write_report

    out = tmp_path / "out"
    for head in ("linear", "mlp"):
        r = run_cli(runner, "train", "--features", store, "--head", head, "--batch-size", 32, "--device", "cpu",
                    "--out", out)
        assert r.exit_code == 0, r.output
    # without the refit on all rows the linear head is the model early stopping chose on the validation split
    single = run_cli(runner, "train", "--features", store, "--head", "linear", "--batch-size", 32, "--no-refit",
                     "--device", "cpu", "--out", tmp_path / "single")
    assert single.exit_code == 0, single.output
    recs = records(out)
    X_test, y_test = np.load(store / "X_test.npy"), np.load(store / "y_test.npy")
    for head in ("linear", "mlp"):
        rec = recs[("toynet", head)]
        assert rec["refit"]["epochs"] == rec["best_epoch"] and rec["refit"]["rows"] == 400
        assert rec["best_params"]["transform"] == "none"  # auto: these features go negative, no power norm
        assert rec["backend"] == "torch" and rec["device"] == "cpu" and rec["precision"] in ("fp32", "bf16")
        assert len(rec["history"]) == rec["epochs_run"] <= 20 and 1 <= rec["best_epoch"] <= rec["epochs_run"]
        best = rec["history"][rec["best_epoch"] - 1]
        assert rec["cv_mean"] == pytest.approx(best["val_accuracy"], abs=1e-6)  # the best epoch was restored
        assert max(h["val_accuracy"] for h in rec["history"]) == best["val_accuracy"]
        # the saved model, loaded back, predicts what the record says
        est, card = load_model(out / rec["model"])
        assert card["architecture"]["head"]["kind"] == head and card["classes"] == rec["classes"]
        pred = est.predict(X_test)
        assert (pred == y_test).mean() == pytest.approx(rec["test_accuracy"])
        assert np.allclose(est.predict_proba(X_test).sum(1), 1, atol=1e-5)
        assert (out / "curves" / f"toynet_{head}.png").stat().st_size > 1000
    # softmax regression on standardised features lands where scikit-learn's logistic regression does
    Xtr, ytr = np.load(store / "X_train.npy"), np.load(store / "y_train.npy")
    lr = LogisticRegression(max_iter=2000).fit(Xtr, ytr).score(X_test, y_test)
    chosen = records(tmp_path / "single")[("toynet", "linear")]
    assert chosen["refit"] is None and abs(chosen["test_accuracy"] - lr) <= 0.05, (chosen["test_accuracy"], lr)
    assert "MLP head" in (out / "results.md").read_text()
    _, md = write_report(out)
    text = md.read_text()
    assert "## Transfer modes" in text and "frozen toynet + mlp head" in text and "transfer.png" in text


def _train_subprocess(tmp_path, store, out, *extra, kill_at=None):
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_KILL_AT"}
    if kill_at:
        env["PIPELINE_KILL_AT"] = kill_at
    args = train_args(store, out, "--head", "mlp", *extra)
    return cli_process.run(args, cwd=tmp_path, env=env)


def test_killed_mid_training_resumes_and_ends_where_an_unbroken_run_does(tmp_path, store):
    whole = _train_subprocess(tmp_path, store, tmp_path / "whole", "--patience", 0)
    assert whole.returncode == 0, whole.stderr
    killed = _train_subprocess(tmp_path, store, tmp_path / "killed", "--patience", 0, kill_at="train:epoch:3")
    assert killed.returncode == -signal.SIGKILL
    ckpt = tmp_path / "killed" / "checkpoints" / "toynet_mlp.pt"
    assert ckpt.exists() and not (tmp_path / "killed" / "results.json").exists()
    again = _train_subprocess(tmp_path, store, tmp_path / "killed", "--patience", 0)
    assert again.returncode == 0, again.stderr
    assert "resuming at epoch 4 of 6" in again.stderr
    a, b = records(tmp_path / "whole")[("toynet", "mlp")], records(tmp_path / "killed")[("toynet", "mlp")]
    assert b["resumed_at_epoch"] == 4 and not ckpt.exists()  # the finished run tidies its checkpoint
    for ha, hb in zip(a["history"], b["history"], strict=True):  # same order, same dropout masks: same run
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-5)
    assert a["test_accuracy"] == b["test_accuracy"]


def test_a_checkpoint_of_other_settings_is_refused_then_overwritten(tmp_path, store):
    out = tmp_path / "out"
    killed = _train_subprocess(tmp_path, store, out, kill_at="train:epoch:2")
    assert killed.returncode == -signal.SIGKILL
    other = _train_subprocess(tmp_path, store, out, "--lr", "0.01")
    assert other.returncode == 1 and other.stderr.count("\n") == 1, other.stderr
    assert "made with other settings" in other.stderr and "lr" in other.stderr and "--overwrite" in other.stderr
    assert (out / "checkpoints" / "toynet_mlp.pt").exists()  # nothing finished lost
    fresh = _train_subprocess(tmp_path, store, out, "--lr", "0.01", "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert "resuming" not in fresh.stderr


def test_killed_after_the_last_epoch_finishes_from_the_checkpoints(tmp_path, store):
    """Killed after both phases' last epoch was checkpointed but before the model was written: the rerun does
    not 'resume at epoch 7 of 6'; it finishes from the checkpoints and ends where an unbroken run does."""
    whole = _train_subprocess(tmp_path, store, tmp_path / "whole", "--patience", 0)
    assert whole.returncode == 0, whole.stderr
    a = records(tmp_path / "whole")[("toynet", "mlp")]
    out = tmp_path / "killed"
    killed = _train_subprocess(tmp_path, store, out, "--patience", 0, kill_at=f"train:epoch:{6 + a['best_epoch']}")
    assert killed.returncode == -signal.SIGKILL and not (out / "results.json").exists()
    again = _train_subprocess(tmp_path, store, out, "--patience", 0)
    assert again.returncode == 0, again.stderr
    assert "resuming" not in again.stderr and "epoch 7/6" not in again.stderr, again.stderr
    assert "toynet mlp: checkpoint" in again.stderr and "already holds all 6 epochs; finishing from it" in again.stderr
    assert f"toynet mlp (refit on all rows): checkpoint {out / 'checkpoints' / 'toynet_mlp-refit.pt'} already " \
           f"holds all {a['best_epoch']} epochs; finishing from it" in again.stderr, again.stderr
    b = records(out)[("toynet", "mlp")]
    assert b["resumed_at_epoch"] is None  # no epoch was trained after resuming
    for k in ("test_accuracy", "best_epoch", "epochs_run", "stopped_by", "epochs"):
        assert a[k] == b[k], k
    assert [h["val_loss"] for h in a["history"]] == pytest.approx([h["val_loss"] for h in b["history"]], rel=1e-5)
    assert not (out / "checkpoints").exists()


class _Killed(Exception):
    pass


def _tiny_task(killed_at: int | None = None):
    """Two features, two classes, one batch an epoch; its validation logits never change, so the validation
    accuracy never beats epoch 1's (patience counts every epoch after it). Raises _Killed at `killed_at`."""
    from pipeline.train.loop import Task

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    X, y = torch.randn(16, 2), torch.arange(16) % 2

    def batches(epoch):
        if epoch == killed_at:
            raise _Killed
        yield X, y

    fixed = torch.tensor([[1.0, 0.0]] * 4)
    return Task(name="tiny", model=model, params=list(model.parameters()), batches=batches, steps_per_epoch=1,
                forward=model, predict=lambda split: fixed, y_val=np.array([0, 0, 1, 1]),
                y_test=np.array([0, 1, 0, 1]), images_per_epoch=16)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("epochs, patience, killed_at, max_minutes, says, stopped_by, epochs_run", [
    # patience runs out at the very last epoch: an unbroken run says "epochs", and so must the resumed one
    (3, 2, None, None, "already holds all 3 epochs", "epochs", 3),
    (10, 2, None, None, "stopped early after epoch 3 (no better validation accuracy for 2 epochs)", "patience", 3),
    # killed after epoch 2, rerun with a budget that is already used up
    (10, 0, 3, 1e-6, "holds 2 of 10 epochs, and another would overrun --max-minutes 1e-06 (0s used)", "budget",
     2),
])
def test_a_checkpoint_with_no_epoch_left_to_train_is_finished_not_resumed(tmp_path, epochs, patience, killed_at,
                                                                          max_minutes, says, stopped_by, epochs_run):
    from dataclasses import replace

    from pipeline.train.config import TrainConfig
    from pipeline.train.loop import train

    cfg = TrainConfig(epochs=epochs, patience=patience, device="cpu", precision="fp32")
    ckpt, cpu = tmp_path / "checkpoints" / "tiny.pt", torch.device("cpu")
    try:
        whole = train(_tiny_task(killed_at), cfg, 0.01, ckpt, cpu, "fp32", progress=False, log=lambda m: None)
    except _Killed:
        whole = None
    else:
        assert whole.stopped_by == stopped_by and whole.epochs_run == epochs_run
    assert ckpt.exists()
    said = []
    again = train(_tiny_task(), replace(cfg, max_minutes=max_minutes), 0.01, ckpt, cpu, "fp32", progress=False,
                  log=said.append)
    assert len(said) == 1 and f"tiny: checkpoint {ckpt} {says}; finishing from it (best: epoch 1," in said[0], said
    assert again.stopped_by == stopped_by and again.epochs_run == epochs_run and again.resumed_at is None
    assert again.best_epoch == 1 and len(again.test_logits) == 4


def test_a_finished_run_leaves_no_empty_checkpoints_folder(runner, tmp_path, store):
    out = tmp_path / "out"
    r = run_cli(runner, *train_args(store, out, "--head", "linear"))
    assert r.exit_code == 0, r.output
    assert (out / "results.json").exists() and not (out / "checkpoints").exists()
    # a checkpoints folder that holds anything else (another run's checkpoint, a user's file) stays as it is
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "keep.txt").write_text("mine")
    r = run_cli(runner, *train_args(store, other, "--head", "linear"))
    assert r.exit_code == 0, r.output
    assert [p.name for p in (other / "checkpoints").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("extra, says", [
    (["--epochs", 0], "--epochs 0"),
    (["--val-fraction", 0.01], "no validation images"),
    (["--val-fraction", 1.5], "--val-fraction 1.5"),
    (["--max-minutes", 0.00001], "too little for one epoch"),
    (["--hidden", "a,b"], "--hidden"),
    (["--lr", "fast"], "--lr 'fast'"),
    (["--seed", -1], "--seed -1: give a seed in 0..4294967295"),  # issue 42 row 15: tracebacks before
    (["--seed", 99999999999999999999], "--seed 99999999999999999999"),
])
def test_bad_training_input_is_one_line(runner, tmp_path, store, extra, says):
    out = tmp_path / "out"
    r = run_cli(runner, *train_args(store, out, *extra))
    _one_line_after_progress(r, says)
    assert not (out / "results.json").exists()


def _one_line_after_progress(r, says):
    """The error is one line; a budget found too small is said after the throughput line that measured it."""
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and says in last, r.stderr
    assert sum("error" in line for line in r.stderr.splitlines()) == 1, r.stderr


def test_a_store_with_nan_is_refused(runner, tmp_path):
    Xtr, ytr = blobs(100)
    Xtr[5, 3] = np.nan
    s = write_store(tmp_path / "nan", Xtr, ytr, *blobs(40, seed=1))
    assert_one_line_error(run_cli(runner, *train_args(s, tmp_path / "out")), "non-finite")


# --- fine-tuning -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def idx100(tmp_path_factory) -> Path:
    return make_idx_dir(tmp_path_factory.mktemp("ft") / "fmnist", n_train=100, n_test=30)


def ft_args(data, out, *extra):
    return ["finetune", "--data-dir", data, "--backbone", "efficientnet_lite0", "--weights", "none",
            "--image-size", 32, "--epochs", 2, "--batch-size", 16, "--val-fraction", 0.2, "--out", out, *extra]


@pytest.mark.parametrize("extra, name, trainable", [
    (["--unfreeze", "0"], "efficientnet_lite0 random-init frozen + head (augmented, 32 px)", []),
    (["--unfreeze", "0", "--augment", "none"], "efficientnet_lite0 random-init frozen + head (no augmentation, "
                                               "32 px)", []),
    (["--unfreeze", "2", "--augment", "none"], "efficientnet_lite0 random-init fine-tuned (last 2 blocks, 32 px)",
     ["stage7", "head_conv"]),
    (["--unfreeze", "all", "--precision", "bf16"], "efficientnet_lite0 from scratch (32 px)", None),
])
def test_finetune_modes_train_what_they_say(runner, tmp_path, idx100, extra, name, trainable, monkeypatch):
    from safetensors.torch import load_file

    from pipeline.embed.backbones import build_backbone
    from pipeline.hardware import auto_precision
    from pipeline.train import finetune as ft
    from pipeline.train import loop
    from pipeline.train.finetune import split_blocks

    ran = []  # the precision every training and evaluation forward actually ran under
    for module in (loop, ft):
        real = module.autocast
        monkeypatch.setattr(module, "autocast", lambda device, precision, real=real: ran.append(precision)
                            or real(device, precision))
    out = tmp_path / "out"
    r = run_cli(runner, *ft_args(idx100, out, *extra))
    assert r.exit_code == 0, r.output
    rec = records(out)[(name, "finetune")]
    assert rec["epochs_run"] == len(rec["history"]) <= 2 and rec["n_train"] == 100 and rec["n_test"] == 30
    assert rec["cached_trunk"] == ("none" in extra and rec["unfreeze"] < 9)
    assert ran and set(ran) == {rec["precision"]}  # the record names what ran, every step of it
    assert rec["precision"] == ("bf16" if "bf16" in extra else auto_precision(torch.device("cpu"), half=False))
    blocks = split_blocks("efficientnet_lite0", build_backbone("efficientnet_lite0", "none", image_size=32).model)
    names = [n for n, _ in blocks]
    assert len(names) == 9 and rec["blocks"] == names
    assert rec["trainable_blocks"] == (names if trainable is None else trainable)
    # frozen blocks are bit-identical to the (seeded) random-init backbone; trained ones moved
    init = {f"blocks.{i}.{k}": v for i, (_, b) in enumerate(blocks) for k, v in b.state_dict().items()}
    saved = load_file(str(out / rec["model"]))
    for key, v in init.items():
        block = names[int(key.split(".")[1])]
        if not v.is_floating_point() or "running" in key:
            continue
        same = torch.equal(saved[key], v)
        assert same == (block not in rec["trainable_blocks"]), (key, block)
    assert (out / "curves").is_dir() and json.loads((out / "models" / Path(rec["model"]).with_suffix(".json").name)
                                                    .read_text())["architecture"]["kind"] == "finetune"
    assert not (out / "checkpoints").exists()  # the checkpoint, and its folder, went once the outputs were written


def test_finetune_resnet_blocks_and_report(runner, tmp_path, idx100, resnet18_file):
    from pipeline.report import write_report

    out = tmp_path / "out"
    r = run_cli(runner, "finetune", "--data-dir", idx100, "--backbone", "resnet18", "--weights", resnet18_file,
                "--unfreeze", 1, "--image-size", 32, "--epochs", 1, "--batch-size", 16, "--val-fraction", 0.2,
                "--out", out)
    assert r.exit_code == 0, r.output
    rec = records(out)[("resnet18 fine-tuned (last 1 block, 32 px)", "finetune")]
    assert rec["blocks"] == ["stem", "layer1", "layer2", "layer3", "layer4"] and rec["trainable_blocks"] == ["layer4"]
    assert rec["weights"]["sha256"] and rec["mode"] == "finetune-1"
    _, md = write_report(out)
    assert "resnet18 fine-tuned (last 1 block, 32 px)" in md.read_text()
    assert "fine-tuned network" in (out / "results.md").read_text()


@pytest.mark.parametrize("extra, says", [
    (["--unfreeze", "12"], "has 9 blocks"),
    (["--unfreeze", "top"], "use 0..9 or all"),
    (["--augment", "blur"], "--augment 'blur'"),
    (["--epochs", 0], "--epochs 0"),
    (["--max-minutes", 0.00001], "too little for one epoch"),
])
def test_bad_finetune_input_is_one_line(runner, tmp_path, idx100, extra, says):
    out = tmp_path / "out"
    r = run_cli(runner, *ft_args(idx100, out, *extra))
    if "--max-minutes" in extra:
        _one_line_after_progress(r, says)
    else:
        assert_one_line_error(r, says)
    assert not (out / "results.json").exists()


def test_augmentation_is_batched_and_flip_is_exact():
    from pipeline.train.finetune import augment_batch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    assert torch.equal(augment_batch(x, (), g), x)
    y = augment_batch(x, ("flip",), g)
    flipped = [torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(64)]
    same = [torch.allclose(y[i], x[i], atol=1e-5) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same)) and 10 < sum(flipped) < 54
    z = augment_batch(x, ("crop", "flip", "rotate"), g)
    assert z.shape == x.shape and not torch.allclose(z, x)


@pytest.mark.slow
def test_run_adds_train_and_finetune_stages_then_skips_them(runner, tmp_path, resnet18_file, monkeypatch):
    data = make_idx_dir(tmp_path / "data", n_train=150, n_test=20)
    args = ["run", "--data-dir", data, "--backbone", "resnet18", "--weights", resnet18_file, "--image-size", 32,
            "--grid", "quick", "--classifiers", "lda", "--methods", "pca", "--train", "linear",
            "--finetune", "0", "--finetune-image-size", 32, "--finetune-epochs", 1, "--out", tmp_path / "rep",
            "--n-jobs", 1]
    monkeypatch.chdir(tmp_path)  # the run's store goes to ./features/; the directory is restored afterwards
    first = run_cli(runner, *args)
    assert first.exit_code == 0, first.output
    run = json.loads((tmp_path / "rep" / "run.json").read_text())
    states = {s["stage"]: s["state"] for s in run["stages"]}
    assert states["train"] == "ran" and states["finetune"] == "ran"
    recs = records(tmp_path / "rep")
    assert ("resnet18", "linear") in recs and ("resnet18 frozen + head (augmented, 32 px)", "finetune") in recs
    second = run_cli(runner, *args)
    assert second.exit_code == 0, second.output
    states = {s["stage"]: s["state"] for s in json.loads((tmp_path / "rep" / "run.json").read_text())["stages"]}
    assert states["train"] == "skipped" and states["finetune"] == "skipped"
    assert "Transfer modes" in (tmp_path / "rep" / "report.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetune_on_cuda_records_what_ran(runner, tmp_path, idx100, monkeypatch):
    from pipeline.train import finetune as ft

    seen = []  # (device, channels_last, autocast dtype) of every batch the network's forward received

    class Spy(ft.FinetuneNet):
        def forward(self, x, start: int = 0):
            dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float32
            seen.append((x.device.type, x.is_contiguous(memory_format=torch.channels_last), dtype))
            return super().forward(x, start)

    monkeypatch.setattr(ft, "FinetuneNet", Spy)
    out = tmp_path / "out"
    r = run_cli(runner, *ft_args(idx100, out, "--device", "cuda", "--unfreeze", "1"))
    assert r.exit_code == 0, r.output
    rec = next(iter(records(out).values()))
    assert seen and {d for d, _, _ in seen} == {"cuda"} and rec["device"].startswith("cuda")
    assert {cl for _, cl, _ in seen} == {rec["channels_last"]} and rec["channels_last"]
    assert {t for _, _, t in seen} == {torch.bfloat16} and rec["precision"] == "bf16"


def test_a_full_disk_at_the_checkpoint_is_one_line_and_leaves_no_half_file(runner, tmp_path, store, monkeypatch):
    """Issue 42 row 11: disk full while the checkpoint was written was torch's `RuntimeError: [enforce fail at
    inline_container.cc]`; now it is the one "disk full" line, and no record, checkpoint or temporary file."""
    import contextlib
    import errno
    import os

    from pipeline.train import loop

    real = loop.replacing

    class Full:  # the disk takes the first 500 bytes, as a nearly full one would
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            if self.n + len(data) > 500:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.n += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def full_at_checkpoints(path):
        with real(path) as f:
            yield Full(f) if path.suffix == ".pt" else f

    monkeypatch.setattr(loop, "replacing", full_at_checkpoints)
    out = tmp_path / "out"
    r = run_cli(runner, *train_args(store, out))
    _one_line_after_progress(r, "No space left on device (disk full)")
    assert not (out / "results.json").exists()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.tmp"))
