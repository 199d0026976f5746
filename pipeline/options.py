"""The command line's options, each declared once with one help text (defaults read from the modules that own
them), and grouped as each command takes them. `pipeline.cli` puts them on its commands."""
from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.classical.specs import DEFAULT_CLASSIFIERS, DEFAULT_CV, DEFAULT_GRID, PRESETS
from pipeline.data import DATASET, DATASETS, TEST_FRACTION
from pipeline.data.idx import DEBIAN_FASHION_MNIST
from pipeline.embed.request import BACKBONE, ENGINES, IMAGE_SIZE, LITE, PRECISIONS, WEIGHTS, ExtractRequest
from pipeline.errors import PipelineError
from pipeline.files import named
from pipeline.maps.methods import DEFAULT_METHODS, METHODS
from pipeline.models.heads import HEADS, TRANSFORMS, HeadSpec
from pipeline.results import REPORTS_ROOT, report_dir
from pipeline.store import FEATURES_ROOT
from pipeline.store.featuresets import RAW_SIZE
from pipeline.train import config as tc


def options(*decorators):
    """Several click options as one decorator, in the order given."""
    def wrap(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return wrap


SIZE_HELP = (f"Backbone input size [default: the size its weights were trained at: {IMAGE_SIZE}; "
             + ", ".join(f"{k} {v}" for k, v in LITE.items() if v != IMAGE_SIZE) + "].")
STUDY_OUT = str(report_dir(DATASET))  # report and evaluate: the default study's folder
STUDY_OUT_HELP = f"[default: {REPORTS_ROOT}/<dataset>, with --limit N {REPORTS_ROOT}/<dataset>-firstN]"
STORE_HELP = f"a backbone name (its store under {FEATURES_ROOT}/<dataset>/) or a store PATH"
DEVICE = click.option("--device", default="auto", show_default=True,
                      help="auto (the first CUDA device if there is one, else the CPU) | cpu | cuda[:N]")
def _n_jobs(ctx, param, value: int | None) -> int | None:
    """--n-jobs: a positive number, or -1 (scikit-learn's 'all cores', the default) as None."""
    if value is None or value == -1:
        return None
    if value < 1:
        raise PipelineError(f"--n-jobs {value}: give a positive number of parallel jobs, or -1 for all cores")
    return value


def _seed(ctx, param, value: int) -> int:
    if not 0 <= value < 2**32:
        raise PipelineError(f"--seed {value}: give a seed in 0..{2**32 - 1} (NumPy and torch take no other)")
    return value


N_JOBS = click.option("--n-jobs", type=int, default=None, callback=_n_jobs,
                      help="Parallel fits / threads [default: all cores; -1 too].")
WEIGHTS_FILE = click.option("--weights", default=None, help="PATH to the backbone's weights when it is not where "
                                                            "the store found it (checked by sha256).")
BACKBONE_OPTION = click.option("--backbone", default=BACKBONE, show_default=True,
                               help="efficientnet_lite0|1|2 (ImageNet weights offline), any torchvision "
                                    "classification model (resnet18, vgg16, ...), or timm:NAME (a timm model).")
WEIGHTS_OPTION = click.option("--weights", default=WEIGHTS, show_default=True,
                              help="imagenet | none | PATH to a state dict.")
CLASSIFIERS = click.option("--classifiers", default=",".join(DEFAULT_CLASSIFIERS), show_default=True)
METHODS_OPTION = click.option("--methods", default=",".join(DEFAULT_METHODS), show_default=True,
                              help=f"Map methods, comma-separated: {', '.join(METHODS)}.")


def match_domain(help: str):
    return click.option("--match-domain", is_flag=True, help=help)


def overwrite(what: str):
    return click.option("--overwrite", is_flag=True, help=what)


def cv(help: str = "Cross-validation folds."):
    return click.option("--cv", type=int, default=DEFAULT_CV, show_default=True, help=help)


def _out(ctx, param, value: str | None) -> str | None:
    """--out as a path with a name: `.` or `..` as the folder they mean; the file system's root refused."""
    if value is None:
        return value
    path = named(os.path.expanduser(value))
    if not path.name:
        raise PipelineError(f"--out {value}: the file system's root cannot be an output; choose a folder of its own")
    return value if path == Path(os.path.expanduser(value)) else str(path)  # only a nameless one changes


def out(help: str, default=None, **path):
    return click.option("--out", type=click.Path(path_type=str, **path), default=default, callback=_out,
                        show_default=default is not None, help=help)


def features(default: str = f"raw,{BACKBONE}"):
    return click.option("--features", default=default, show_default=True,
                        help=f"Comma-separated: raw | {STORE_HELP}.")


def dataset_options(raw: bool = True):
    """--dataset, --data-dir, --limit, --test-fraction (and --raw-size where raw pixels are made)."""
    opts = [
        click.option("--dataset", type=click.Choice(DATASETS), default=DATASET, show_default=True,
                     help="folder: --data-dir DIR/{train,test}/<class>/<images>, or DIR/<class>/<images> (split)."),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=str), default=None,
                     help=f"Dataset folder. Fashion-MNIST default: $PIPELINE_DATA_DIR, then "
                          f"{DEBIAN_FASHION_MNIST}, then torchvision's download."),
        click.option("--limit", type=int, default=None, help="Only the first N images of each split."),
        click.option("--test-fraction", type=float, default=TEST_FRACTION, show_default=True,
                     help="An image folder without test/: this share of each class held out (seeded)."),
    ]
    if raw:
        opts.append(click.option("--raw-size", type=int, default=RAW_SIZE, show_default=True,
                                 help="An image folder's raw pixels: each image resized to this square."))
    return options(*opts)


def dask(what: str):
    """--dask ADDRESS, worded for what the command runs on the cluster."""
    return click.option("--dask", default=None, metavar="ADDRESS",
                        help=f"A Dask scheduler (tcp://host:8786): {what} (docs/commands.md: Dask cluster).")


def _sci(x: float) -> str:
    """3e-3, as a learning rate is written."""
    m, e = f"{x:.0e}".split("e")
    return f"{m}e{int(e)}"


extract_options = options(
    dataset_options(raw=False), BACKBONE_OPTION, WEIGHTS_OPTION,
    click.option("--layer", default=None, help="Graph node to take features from (default: penultimate layer)."),
    click.option("--image-size", type=int, default=None, help=SIZE_HELP),
    DEVICE,
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto",
                 show_default=True, help="auto: bf16 where the hardware has it, else fp32 (CPU) / fp16 (GPU)."),
    click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
                 help="auto: OpenVINO on CPU for bf16/fp16, torch otherwise."),
    click.option("--compile", "compile", is_flag=True, help="torch.compile the model (torch engine)."),
    click.option("--batch-size", default="auto", show_default=True,
                 help="Images per forward pass; auto: 64 on the CPU, 128-512 on CUDA by the device's memory."),
    out(f"Store folder [default: {FEATURES_ROOT}/<dataset>/<backbone>; an image folder: "
        f"{FEATURES_ROOT}/folder-<name>-<hash>/...]."),
    overwrite("Replace a finished store made with other settings."),
    dask("its workers extract the images in shards, each choosing its own engine"),
    click.option("--shard-rows", type=int, default=ExtractRequest.shard_rows, show_default=True,
                 help="With --dask: images per shard (the unit of work, progress and resume)."),
)

training_options = options(  # how to train: the same options, help and defaults for `train` and `finetune`
    click.option("--epochs", type=int, default=None,
                 help=f"Most epochs [default: {tc.HEAD_EPOCHS} for heads, {tc.FINETUNE_EPOCHS} for finetune]."),
    click.option("--batch-size", type=int, default=None,
                 help=f"[default: {tc.HEAD_BATCH} for heads, {tc.FINETUNE_BATCH} for finetune]"),
    click.option("--lr", default=tc.TrainConfig.lr, show_default=True,
                 help=f"Peak learning rate; auto: {_sci(tc.HEAD_LR['linear'])} linear head, "
                      f"{_sci(tc.HEAD_LR['mlp'])} MLP head; fine-tuning {_sci(tc.FINETUNE_LR)}, and "
                      f"{_sci(tc.FINETUNE_HEAD_LR)} for a head on a frozen backbone or from scratch."),
    click.option("--lr-schedule", type=click.Choice(tc.SCHEDULES), default=tc.TrainConfig.lr_schedule,
                 show_default=True, help="cyclic: triangular between lr/10 and lr, 4 epochs a cycle."),
    click.option("--patience", type=int, default=tc.TrainConfig.patience, show_default=True,
                 help="Stop after this many epochs without a better validation accuracy (0: never)."),
    click.option("--val-fraction", type=float, default=tc.TrainConfig.val_fraction, show_default=True,
                 help="Share of each class of the training split held out for early stopping."),
    click.option("--max-minutes", type=float, default=None,
                 help="Stop at the epoch boundary that would overrun this budget; the best epoch is kept."),
    DEVICE,
    click.option("--precision", type=click.Choice(tc.TRAIN_PRECISIONS), default=tc.TrainConfig.precision,
                 show_default=True,
                 help="auto: bf16 autocast where the hardware has it (GPUs; CPUs with AVX-512-bf16 or AMX)."),
    click.option("--seed", type=int, default=tc.TrainConfig.seed, show_default=True, callback=_seed),
    overwrite("Start over instead of resuming a checkpoint (and replace a finished record)."),
)

head_options = options(
    features(BACKBONE),
    click.option("--head", type=click.Choice(HEADS), default=HeadSpec.kind, show_default=True,
                 help="linear: softmax regression; mlp: hidden layer(s) with batch norm and dropout."),
    click.option("--hidden", default=",".join(map(str, HeadSpec.hidden)), show_default=True,
                 help="MLP hidden widths, comma-separated."),
    click.option("--dropout", type=float, default=HeadSpec.dropout, show_default=True,
                 help="MLP dropout after each hidden layer."),
    click.option("--input-dropout", type=float, default=HeadSpec.input_dropout, show_default=True,
                 help="MLP dropout on the inputs."),
    click.option("--input-transform", type=click.Choice(TRANSFORMS), default=HeadSpec.transform, show_default=True,
                 help="sqrt: power-normalise the features (sign(x)*sqrt(|x|)) before standardising them; auto: "
                      "sqrt when every training feature is >= 0 (pooled CNN activations), else none."),
    click.option("--refit/--no-refit", default=True, show_default=True,
                 help="After early stopping chose the epochs: train a fresh head on all training rows for that many."),
    dataset_options(), training_options, out(STUDY_OUT_HELP),
)

finetune_options = options(
    dataset_options(raw=False),
    click.option("--backbone", default=tc.FinetuneRequest.backbone, show_default=True,
                 help="efficientnet_lite0|1|2 (9 blocks), a torchvision ResNet (5 blocks), or another backbone "
                      "(one block: frozen or all)."),
    click.option("--weights", default=tc.FinetuneRequest.weights, show_default=True,
                 help="imagenet | none (random init: with --unfreeze all, the from-scratch baseline) | PATH."),
    click.option("--unfreeze", default=tc.FinetuneRequest.unfreeze, show_default=True,
                 help="Blocks trained, counted from the top: 0 (frozen backbone, head only) .. N, or all."),
    click.option("--augment", default=tc.DEFAULT_AUGMENT, show_default=True,
                 help="On the device, per batch: any of crop (random resized crop/shift), flip, rotate; or none "
                      "(then frozen blocks' output is computed once and cached)."),
    click.option("--image-size", type=int, default=None, help=f"Network input size. {SIZE_HELP}"),
    training_options, out(STUDY_OUT_HELP),
)

study_options = options(  # pipeline run
    dataset_options(), BACKBONE_OPTION, WEIGHTS_OPTION,
    click.option("--image-size", type=int, default=None,
                 help=f"{SIZE_HELP} Another size (the ablation) gets its own store and report folders."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                 help="The extraction's, as `pipeline extract --precision`; int8: the CPU, calibrated (the int8 "
                      "extra). Not auto: its own store and report folders (-<precision>)."),
    click.option("--grid", default=DEFAULT_GRID, show_default=True, help=" | ".join(PRESETS)),
    cv(), CLASSIFIERS, METHODS_OPTION,
    click.option("--wild", type=click.Path(file_okay=False, path_type=str), default=None,
                 help="A folder of <class>/<images> to score every saved model on, as a last stage (in the wild)."),
    match_domain("With --wild: also score the photos mapped toward the training images' look (Fashion-MNIST: "
                 "grayscale, object bright on dark, centred, padded square)."),
    click.option("--train", default="", help="Also train heads on the embeddings: linear, mlp (comma-separated; "
                                             "`pipeline train` for more options)."),
    click.option("--finetune", default="", help="Also fine-tune the backbone: unfreeze levels (0, 1, 2, ..., all) "
                                                "and/or scratch, comma-separated (`pipeline finetune` for more)."),
    click.option("--finetune-image-size", type=int, default=None, help=SIZE_HELP),
    click.option("--finetune-epochs", type=int, default=tc.FINETUNE_EPOCHS, show_default=True),
    click.option("--finetune-minutes", type=float, default=None, help="--max-minutes of each fine-tuning run."),
    DEVICE, N_JOBS,
    out(f"[default: {REPORTS_ROOT}/<dataset>, or {REPORTS_ROOT}/<dataset>-first<N> with --limit]"),
    overwrite("Replace a finished store made with other settings (e.g. the folder's images changed)."),
    dask("extraction (in shards) and the grid search run on its workers"),
)
