"""The `pipeline` command: options -> library calls. The one place a `PipelineError` becomes one line."""
from __future__ import annotations

import sys

import click

from pipeline.apply import EXPORT_FORMATS, NEIGHBORS_K, PREDICTIONS, TOP_K
from pipeline.classical.specs import DEFAULT_CLASSIFIERS, DEFAULT_CV, DEFAULT_GRID, PRESETS, check_folds
from pipeline.data import DATASET, DATASETS, TEST_FRACTION, dataset_slug
from pipeline.data.idx import DEBIAN_FASHION_MNIST
from pipeline.embed.request import BACKBONE, ENGINES, IMAGE_SIZE, LITE, PRECISIONS, WEIGHTS, ExtractRequest
from pipeline.errors import PipelineError
from pipeline.maps.methods import DEFAULT_METHODS, METHODS
from pipeline.models.heads import HEADS, TRANSFORMS, HeadSpec
from pipeline.results import REPORTS_ROOT, report_dir
from pipeline.store import FEATURES_ROOT
from pipeline.store.featuresets import RAW_SIZE
from pipeline.train.config import (
    DEFAULT_AUGMENT,
    FINETUNE_BATCH,
    FINETUNE_EPOCHS,
    FINETUNE_HEAD_LR,
    FINETUNE_LR,
    HEAD_BATCH,
    HEAD_EPOCHS,
    HEAD_LR,
    SCHEDULES,
    TRAIN_PRECISIONS,
    FinetuneRequest,
    TrainConfig,
)


class _Group(click.Group):
    def list_commands(self, ctx):  # in data-flow order, not alphabetical
        return list(self.commands)

    def parse_args(self, ctx, args):
        ctx.meta["pipeline.argv"] = list(args)  # the command line as typed, for run.json and the report
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PipelineError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)
        except OSError as e:  # a backstop: file-system failures the stages did not word themselves
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume", err=True)
            ctx.exit(130)


_DATASETS = click.Choice(DATASETS)
_CLASSIFIERS = ",".join(DEFAULT_CLASSIFIERS)
_METHODS = ",".join(DEFAULT_METHODS)
_SIZE_HELP = (f"Backbone input size [default: the size its weights were trained at: {IMAGE_SIZE}; "
              + ", ".join(f"{k} {v}" for k, v in LITE.items() if v != IMAGE_SIZE) + "].")
_STUDY_OUT = str(report_dir(DATASET))  # report and evaluate: the default study's folder


def dataset_options(raw: bool = True):
    """--dataset, --data-dir, --limit, --test-fraction (and --raw-size where raw pixels are made): the same
    options, help and defaults in every command that reads a dataset."""
    opts = [
        click.option("--dataset", type=_DATASETS, default=DATASET, show_default=True,
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

    def wrap(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return wrap


def dask_option(what: str):
    """--dask ADDRESS, worded for what the command runs on the cluster."""
    return click.option("--dask", default=None, metavar="ADDRESS",
                        help=f"A Dask scheduler (tcp://host:8786): {what} (docs/commands.md: Dask cluster).")


def _names(csv: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']"""
    return [n.strip() for n in csv.split(",") if n.strip()]


def _feature_sets(features: str, dataset: str, data_dir, limit, raw_size: int, test_fraction: float) -> list:
    from pipeline.store.featuresets import load_feature_set

    sets = [load_feature_set(f, dataset, data_dir, limit, raw_size=raw_size, test_fraction=test_fraction)
            for f in _names(features)]
    if not sets:
        raise PipelineError(f"--features names no feature set; e.g. --features raw,{BACKBONE}")
    return sets


@click.group(cls=_Group)
@click.version_option(package_name="pipeline")
def main():
    """Pretrained-CNN embeddings vs raw pixels: extract, classify, map, report."""


@main.command()
@dataset_options(raw=False)
@click.option("--backbone", default=BACKBONE, show_default=True,
              help="efficientnet_lite0|1|2 (ImageNet weights offline), any torchvision classification model "
                   "(resnet18, vgg16, ...), or timm:NAME (a timm model).")
@click.option("--weights", default=WEIGHTS, show_default=True, help="imagenet | none | PATH to a state dict.")
@click.option("--layer", default=None, help="Graph node to take features from (default: penultimate layer).")
@click.option("--image-size", type=int, default=None, help=_SIZE_HELP)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto",
              show_default=True, help="auto: bf16 where the hardware has it, else fp32 (CPU) / fp16 (GPU).")
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="auto: OpenVINO on CPU for bf16/fp16, torch otherwise.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (torch engine).")
@click.option("--batch-size", default="auto", show_default=True,
              help="Images per forward pass; auto: 64 on the CPU, 128-512 on CUDA by the device's memory.")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help=f"Store folder [default: {FEATURES_ROOT}/<dataset>/<backbone>; an image folder: "
                   f"{FEATURES_ROOT}/folder-<name>/...].")
@click.option("--overwrite", is_flag=True, help="Replace a finished store made with other settings.")
@dask_option("its workers extract the images in shards, each choosing its own engine")
@click.option("--shard-rows", type=int, default=ExtractRequest.shard_rows, show_default=True,
              help="With --dask: images per shard (the unit of work, progress and resume).")
def extract(dataset, data_dir, limit, test_fraction, backbone, weights, layer, image_size, device, precision, engine,
            compile_, batch_size, out, overwrite, dask, shard_rows):
    """Turn an image dataset into pretrained-CNN embeddings on disk (resumable)."""
    from pipeline.embed.extract import extract as run_extract

    run_extract(ExtractRequest(dataset=dataset, data_dir=data_dir, limit=limit, test_fraction=test_fraction,
                               backbone=backbone, weights=weights, layer=layer, image_size=image_size, device=device,
                               precision=precision, engine=engine, compile=compile_, batch_size=batch_size, out=out,
                               overwrite=overwrite, dask=dask, shard_rows=shard_rows))


@main.command()
@click.option("--features", default=f"raw,{BACKBONE}", show_default=True,
              help=f"Comma-separated: raw | a backbone name (its store under {FEATURES_ROOT}/<dataset>/; resnet = "
                   f"resnet18) | a store PATH.")
@dataset_options()
@click.option("--classifiers", default=_CLASSIFIERS, show_default=True)
@click.option("--grid", default=DEFAULT_GRID, show_default=True,
              help="quick (tests, demos) | default (the README's numbers) | full (exhaustive) | a JSON file "
                   "{classifier: {param: [values]}}.")
@click.option("--cv", type=int, default=DEFAULT_CV, show_default=True, help="Cross-validation folds.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--n-jobs", type=int, default=None, help="Parallel fits [default: all cores].")
@dask_option("the grid search's fits run on its workers")
@click.option("--out", type=click.Path(path_type=str), default=None, help=f"[default: {REPORTS_ROOT}/<dataset>]")
def classify(features, dataset, data_dir, limit, test_fraction, raw_size, classifiers, grid, cv, device, n_jobs, dask,
             out):
    """Grid-searched classifiers on embeddings vs raw pixels; results.json/.csv/.md and confusion matrices."""
    import json
    from pathlib import Path

    from pipeline.classical.backends import make_backend

    backend = make_backend(device)  # first: cuML must hook scikit-learn before it is imported
    from pipeline.classical import search as stage

    if grid not in PRESETS:
        try:
            grid_file, grid = grid, json.loads(Path(grid).read_text())
        except (OSError, ValueError) as e:
            raise PipelineError(f"--grid {grid}: not a preset ({', '.join(PRESETS)}) nor a readable "
                                f"JSON file of grids ({e})") from None
        if not isinstance(grid, dict):
            raise PipelineError(f"--grid {grid_file}: expected a JSON object {{classifier: {{param: [values]}}}}, "
                                f"not a {type(grid).__name__}")
    sets = _feature_sets(features, dataset, data_dir, limit, raw_size, test_fraction)
    out = Path(out) if out else report_dir(dataset_slug(dataset, data_dir))
    stage.classify(sets, _names(classifiers), grid, cv, backend, n_jobs, dask, out)
    _galleries(out, sets)
    click.echo((out / "results.md").read_text())
    click.echo(f"results in {out}/results.json, .csv, .md; confusion matrices in {out}/confusion/; models in "
               f"{out}/models/", err=True)


def _galleries(out, sets) -> None:
    """The report's galleries after new models; where the images cannot be read again, said and skipped."""
    from pipeline.apply.gallery import is_current, write_galleries

    try:
        if not is_current(out, sets):
            write_galleries(out, sets)
    except PipelineError as e:
        click.echo(f"galleries skipped: {e}", err=True)


def _command_line(ctx) -> str:
    """The command as the user typed it, quoted so that pasting it back runs it (recorded in run.json)."""
    import shlex

    return shlex.join(["pipeline", *ctx.meta.get("pipeline.argv", [])])


@main.command()
@click.option("--features", default=f"raw,{BACKBONE}", show_default=True,
              help=f"Comma-separated: raw | a backbone name (its store under {FEATURES_ROOT}/<dataset>/) | a store "
                   f"PATH.")
@click.option("--methods", default=_METHODS, show_default=True, help=f"Comma-separated: {', '.join(METHODS)}.")
@dataset_options()
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda (cuML's t-SNE/UMAP if installed)")
@click.option("--n-jobs", type=int, default=None, help="Threads for t-SNE [default: all cores].")
@click.option("--out", type=click.Path(path_type=str), default=None, help=f"[default: {REPORTS_ROOT}/<dataset>/maps]")
def project(features, methods, dataset, data_dir, limit, test_fraction, raw_size, device, n_jobs, out):
    """2-D maps (PCA, t-SNE, UMAP) of each feature set side by side, with 5-NN accuracy and trustworthiness."""
    from pathlib import Path

    from pipeline.classical.backends import make_backend
    from pipeline.maps import project as stage

    backend = make_backend(device)
    sets = _feature_sets(features, dataset, data_dir, limit, raw_size, test_fraction)
    out = Path(out) if out else report_dir(dataset_slug(dataset, data_dir)) / "maps"
    stage.project(sets, _names(methods), out, backend, n_jobs)
    click.echo(f"maps in {out}/: <set>_<method>.npy coordinates (+ .json scores), <method>.png figures", err=True)
    if out.name == "maps" and (out.parent / "results.json").exists():  # a study's maps: its interactive page
        from pipeline.apply.mapview import write_map_view

        try:
            write_map_view(out.parent, sets, out)
        except PipelineError as e:
            click.echo(f"maps.html skipped: {e}", err=True)


def _sci(x: float) -> str:
    """3e-3, as a learning rate is written."""
    m, e = f"{x:.0e}".split("e")
    return f"{m}e{int(e)}"


def training_options(f):
    """How to train: the same options, help and defaults for `train` and `finetune`."""
    opts = [
        click.option("--epochs", type=int, default=None,
                     help=f"Most epochs [default: {HEAD_EPOCHS} for heads, {FINETUNE_EPOCHS} for finetune]."),
        click.option("--batch-size", type=int, default=None,
                     help=f"[default: {HEAD_BATCH} for heads, {FINETUNE_BATCH} for finetune]"),
        click.option("--lr", default=TrainConfig.lr, show_default=True,
                     help=f"Peak learning rate; auto: {_sci(HEAD_LR['linear'])} linear head, {_sci(HEAD_LR['mlp'])} "
                          f"MLP head; fine-tuning {_sci(FINETUNE_LR)}, and {_sci(FINETUNE_HEAD_LR)} for a head on a "
                          f"frozen backbone or from scratch."),
        click.option("--lr-schedule", type=click.Choice(SCHEDULES), default=TrainConfig.lr_schedule,
                     show_default=True, help="cyclic: triangular between lr/10 and lr, 4 epochs a cycle."),
        click.option("--patience", type=int, default=TrainConfig.patience, show_default=True,
                     help="Stop after this many epochs without a better validation accuracy (0: never)."),
        click.option("--val-fraction", type=float, default=TrainConfig.val_fraction, show_default=True,
                     help="Share of each class of the training split held out for early stopping."),
        click.option("--max-minutes", type=float, default=None,
                     help="Stop at the epoch boundary that would overrun this budget; the best epoch is kept."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]"),
        click.option("--precision", type=click.Choice(TRAIN_PRECISIONS), default=TrainConfig.precision,
                     show_default=True,
                     help="auto: bf16 autocast where the hardware has it (GPUs; CPUs with AVX-512-bf16 or AMX)."),
        click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
        click.option("--overwrite", is_flag=True, help="Start over instead of resuming a checkpoint (and replace "
                                                       "a finished record)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _train_config(epochs, batch_size, lr, lr_schedule, patience, val_fraction, max_minutes, device, precision,
                  seed, default_epochs, default_batch):
    from pipeline.train.config import parse_lr

    return TrainConfig(epochs=default_epochs if epochs is None else epochs,
                       batch_size=default_batch if batch_size is None else batch_size, lr=parse_lr(lr),
                       lr_schedule=lr_schedule, patience=patience, val_fraction=val_fraction,
                       max_minutes=max_minutes, seed=seed, device=device, precision=precision)


@main.command()
@click.option("--features", default=BACKBONE, show_default=True,
              help=f"A backbone name (its store under {FEATURES_ROOT}/<dataset>/), a store PATH, or raw.")
@click.option("--head", type=click.Choice(HEADS), default=HeadSpec.kind, show_default=True,
              help="linear: softmax regression; mlp: hidden layer(s) with batch norm and dropout.")
@click.option("--hidden", default=",".join(map(str, HeadSpec.hidden)), show_default=True,
              help="MLP hidden widths, comma-separated.")
@click.option("--dropout", type=float, default=HeadSpec.dropout, show_default=True,
              help="MLP dropout after each hidden layer.")
@click.option("--input-dropout", type=float, default=HeadSpec.input_dropout, show_default=True,
              help="MLP dropout on the inputs.")
@click.option("--input-transform", type=click.Choice(TRANSFORMS), default=HeadSpec.transform, show_default=True,
              help="sqrt: power-normalise the features (sign(x)*sqrt(|x|)) before standardising them; auto: sqrt "
                   "when every training feature is >= 0 (pooled CNN activations), else none.")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="After early stopping chose the epochs: train a fresh head on all training rows for that many.")
@dataset_options()
@training_options
@click.option("--out", type=click.Path(path_type=str), default=None, help=f"[default: {REPORTS_ROOT}/<dataset>]")
def train(features, head, hidden, dropout, input_dropout, input_transform, refit, dataset, data_dir, limit,
          test_fraction, raw_size, epochs, batch_size, lr, lr_schedule, patience, val_fraction, max_minutes, device,
          precision, seed, overwrite, out):
    """Train a torch head (linear or MLP) on stored features; its record joins classify's results.json."""
    from pathlib import Path

    from pipeline.train.config import TrainRequest
    from pipeline.train.heads import train_head

    try:
        widths = tuple(int(h) for h in _names(hidden))
    except ValueError:
        raise PipelineError(f"--hidden {hidden!r}: give layer widths as integers, e.g. 1024,512") from None
    spec = HeadSpec(head, widths, input_dropout, dropout, input_transform)
    cfg = _train_config(epochs, batch_size, lr, lr_schedule, patience, val_fraction, max_minutes, device, precision,
                        seed, HEAD_EPOCHS, HEAD_BATCH)
    spec.check()
    cfg.check()
    sets = _feature_sets(features, dataset, data_dir, limit, raw_size, test_fraction)
    if len(sets) != 1:
        raise PipelineError(f"--features {features}: `pipeline train` trains on one feature set at a time")
    out = Path(out) if out else report_dir(dataset_slug(dataset, data_dir))
    rec = train_head(sets[0], TrainRequest(spec, cfg, out, overwrite, refit))
    click.echo(f"{rec['label']} on {rec['feature_set']}: test accuracy {rec['test_accuracy']:.4f} (validation "
               f"{rec['cv_mean']:.4f}, epoch {rec['best_epoch']} of {rec['epochs_run']} kept), "
               f"{rec['fit_seconds']:.0f} s on {rec['device_name']}")
    click.echo(f"record in {out}/results.json; model {out}/{rec['model']}; learning curve in {out}/curves/", err=True)


@main.command()
@dataset_options(raw=False)
@click.option("--backbone", default=FinetuneRequest.backbone, show_default=True,
              help="efficientnet_lite0|1|2 (9 blocks), a torchvision ResNet (5 blocks), or another backbone "
                   "(one block: frozen or all).")
@click.option("--weights", default=FinetuneRequest.weights, show_default=True,
              help="imagenet | none (random init: with --unfreeze all, the from-scratch baseline) | PATH.")
@click.option("--unfreeze", default=FinetuneRequest.unfreeze, show_default=True,
              help="Blocks trained, counted from the top: 0 (frozen backbone, head only) .. N, or all.")
@click.option("--augment", default=DEFAULT_AUGMENT, show_default=True,
              help="On the device, per batch: any of crop (random resized crop/shift), flip, rotate; or none "
                   "(then frozen blocks' output is computed once and cached).")
@click.option("--image-size", type=int, default=None, help=f"Network input size. {_SIZE_HELP}")
@training_options
@click.option("--out", type=click.Path(path_type=str), default=None, help=f"[default: {REPORTS_ROOT}/<dataset>]")
def finetune(dataset, data_dir, limit, test_fraction, backbone, weights, unfreeze, augment, image_size, epochs,
             batch_size, lr, lr_schedule, patience, val_fraction, max_minutes, device, precision, seed, overwrite, out):
    """Fine-tune a backbone (last N blocks) with a new head on the images; its record joins results.json."""
    from pathlib import Path

    from pipeline.train.finetune import finetune as run_finetune

    cfg = _train_config(epochs, batch_size, lr, lr_schedule, patience, val_fraction, max_minutes, device, precision,
                        seed, FINETUNE_EPOCHS, FINETUNE_BATCH)
    req = FinetuneRequest(dataset=dataset, data_dir=data_dir, limit=limit, test_fraction=test_fraction,
                          backbone=backbone, weights=weights, unfreeze=unfreeze, augment=augment,
                          image_size=image_size, train=cfg, out=Path(out) if out else None, overwrite=overwrite)
    rec = run_finetune(req)
    click.echo(f"{rec['feature_set']}: test accuracy {rec['test_accuracy']:.4f} (validation {rec['cv_mean']:.4f}, "
               f"epoch {rec['best_epoch']} of {rec['epochs_run']} kept"
               f"{', stopped by --max-minutes' if rec['stopped_by'] == 'budget' else ''}), "
               f"{rec['fit_seconds'] / 60:.1f} min on {rec['device_name']} ({rec['precision']})")


@main.command()
@click.option("--out", type=click.Path(path_type=str), default=_STUDY_OUT, show_default=True,
              help="The folder classify/project/run wrote to.")
def report(out):
    """One self-contained HTML report (and Markdown) from what classify, project and run left in --out."""
    from pipeline.report import write_report

    html_path, md_path = write_report(out)
    click.echo(f"report: {html_path} (self-contained) and {md_path}", err=True)


@main.command()
@dataset_options()
@click.option("--backbone", default=BACKBONE, show_default=True,
              help="efficientnet_lite0|1|2 (ImageNet weights offline), a torchvision model, or timm:NAME.")
@click.option("--weights", default=WEIGHTS, show_default=True, help="imagenet | none | PATH to a state dict.")
@click.option("--image-size", type=int, default=None,
              help=f"{_SIZE_HELP} Another size (the ablation) gets its own store and report folders.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="The extraction's, as `pipeline extract --precision`; int8: the CPU, calibrated (the int8 "
                   "extra). Not auto: its own store and report folders (-<precision>).")
@click.option("--grid", default=DEFAULT_GRID, show_default=True, help=" | ".join(PRESETS))
@click.option("--cv", type=int, default=DEFAULT_CV, show_default=True)
@click.option("--classifiers", default=_CLASSIFIERS, show_default=True)
@click.option("--methods", default=_METHODS, show_default=True, help="Map methods.")
@click.option("--wild", type=click.Path(file_okay=False, path_type=str), default=None,
              help="A folder of <class>/<images> to score every saved model on, as a last stage (in the wild).")
@click.option("--match-domain", is_flag=True, help="With --wild: also score the photos mapped toward the training "
                                                   "images' look (Fashion-MNIST: grayscale, object bright on dark, "
                                                   "centred, padded square).")
@click.option("--train", "heads", default="", help="Also train heads on the embeddings: linear, mlp "
                                                    "(comma-separated; `pipeline train` for more options).")
@click.option("--finetune", default="", help="Also fine-tune the backbone: unfreeze levels (0, 1, 2, ..., all) "
                                             "and/or scratch, comma-separated (`pipeline finetune` for more).")
@click.option("--finetune-image-size", type=int, default=None, help=_SIZE_HELP)
@click.option("--finetune-epochs", type=int, default=FINETUNE_EPOCHS, show_default=True)
@click.option("--finetune-minutes", type=float, default=None, help="--max-minutes of each fine-tuning run.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--n-jobs", type=int, default=None, help="Parallel fits / threads [default: all cores].")
@click.option("--out", type=click.Path(path_type=str), default=None,
              help=f"[default: {REPORTS_ROOT}/<dataset>, or {REPORTS_ROOT}/<dataset>-first<N> with --limit]")
@click.option("--overwrite", is_flag=True, help="Replace a finished store made with other settings (e.g. the "
                                                "folder's images changed).")
@dask_option("extraction (in shards) and the grid search run on its workers")
def run(dataset, data_dir, limit, test_fraction, raw_size, backbone, weights, image_size, precision, grid, cv,
        classifiers, methods, wild, match_domain, heads, finetune, finetune_image_size, finetune_epochs,
        finetune_minutes, device, n_jobs, out, overwrite, dask):
    """extract -> classify (raw and embeddings, models saved) -> [train heads] -> [finetune] -> project ->
    [evaluate --wild] -> report; skips what is done, resumes the rest."""
    from pipeline.run import RunConfig
    from pipeline.run import run as run_all

    cfg = RunConfig(dataset=dataset, data_dir=data_dir, backbone=backbone, weights=weights, limit=limit,
                    image_size=image_size, precision=precision, raw_size=raw_size, test_fraction=test_fraction,
                    grid=grid, cv=cv,
                    classifiers=_names(classifiers), methods=tuple(_names(methods)), device=device, n_jobs=n_jobs,
                    out=out, wild=wild, match_domain=match_domain, overwrite=overwrite, train=tuple(_names(heads)),
                    finetune=tuple(_names(finetune)), finetune_image_size=finetune_image_size,
                    finetune_epochs=finetune_epochs, finetune_minutes=finetune_minutes, dask=dask)
    info = run_all(cfg, command=_command_line(click.get_current_context()))
    for s in info["stages"]:
        click.echo(f"{s['stage']:>9}  {s['state']:<8} {s['seconds']:8.1f} s  {s['detail']}", err=True)
    click.echo(f"report: {info['out']}/report.html and report.md; models in {info['out']}/models/", err=True)


@main.command()
@click.option("--model", "model", required=True, type=click.Path(path_type=str),
              help="A saved model: <out>/models/<features>_<classifier>.skops")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default=PREDICTIONS, show_default=True)
@click.option("--top-k", type=int, default=TOP_K, show_default=True, help="Classes (with scores) per image.")
@click.option("--match-domain", is_flag=True, help="Map each photo toward the training images' look first.")
@click.option("--weights", default=None, help="PATH to the backbone's weights file when it is not where the "
                                              "store found it (checked by sha256).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
def predict(model, images, out, top_k, match_domain, weights, device):
    """Predict IMAGES (files or folders) with a saved model: a CSV of path, predicted class, top-k scores."""
    from collections import Counter

    from pipeline.apply.predict import predict as run_predict

    rows = run_predict(model, images, out, top_k, device, weights, match_domain)
    counts = Counter(r["predicted"] for r in rows).most_common(5)
    click.echo(f"{len(rows):,} images -> {out} ({rows[0]['score_kind']} scores); most predicted: "
               + ", ".join(f"{c} {n}" for c, n in counts), err=True)


@main.command()
@click.option("--folder", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Photos in the wild: <class>/<images>, class names as the study's (case, spaces, _ and / "
                   "do not matter).")
@click.option("--out", type=click.Path(path_type=str), default=_STUDY_OUT, show_default=True,
              help="The study whose saved models to score (its results.json gains wild_* fields).")
@click.option("--match-domain", is_flag=True, help="Also score the photos mapped toward the training images' look.")
@click.option("--weights", default=None, help="PATH to the backbone's weights when not where the store found it.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
def evaluate(folder, out, match_domain, weights, device):
    """The in-the-wild test: score every saved model of a study on a folder of new photos; rewrites the report."""
    from pipeline.apply.evaluate import evaluate as run_evaluate
    from pipeline.report import write_report

    recs = run_evaluate(out, folder, match_domain, device, weights)
    html_path, _ = write_report(out)
    click.echo(f"{len(recs)} models scored on {recs[0]['wild_n']:,} images; report: {html_path}", err=True)


@main.command()
@click.option("--features", "store", required=True, type=click.Path(path_type=str),
              help="A feature store (embeddings): its training images are searched.")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-k", "k", type=int, default=NEIGHBORS_K, show_default=True, help="Neighbours per image.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default=None,
              help="A folder for neighbors.csv and neighbors.html (a contact sheet of the images).")
@click.option("--overwrite", is_flag=True, help="Replace neighbors.csv / neighbors.html already in --out.")
@click.option("--weights", default=None, help="PATH to the backbone's weights when not where the store found it.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
def neighbors(store, images, k, out, overwrite, weights, device):
    """The training images nearest each of IMAGES (files or folders) in a store's embedding (cosine)."""
    from pipeline.apply.neighbors import neighbors as run_neighbors

    rows = run_neighbors(store, images, k, out, device, weights, overwrite=overwrite)
    width = max(len(r["label"]) for r in rows)
    last = None
    for r in rows:
        if r["query"] != last:
            click.echo(r["query"])
            last = r["query"]
        click.echo(f"  {r['rank']:>3}  {r['label']:<{width}}  {r['distance']:.4f}  train #{r['train_index']}"
                   + (f"  {r['path']}" if r["path"] else ""))
    if out:
        click.echo(f"neighbours in {out}/neighbors.csv; contact sheet {out}/neighbors.html", err=True)


@main.command()
@click.option("--features", "store", default=BACKBONE, show_default=True,
              help=f"The embeddings to audit with: a backbone name (its store under {FEATURES_ROOT}/<dataset>/) or "
                   f"a store PATH.")
@dataset_options(raw=False)
@click.option("--cv", type=int, default=DEFAULT_CV, show_default=True,
              help="Folds of the out-of-fold probabilities the label-issue check reads.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default=None,
              help=f"The study folder for audit.json and audit.csv [default: {REPORTS_ROOT}/<dataset>]; its records' "
                   f"saved test predictions give the accuracy without the flagged images.")
@click.option("--overwrite", is_flag=True, help="Replace an audit.json of other data in --out.")
@click.option("--weights", default=None, help="PATH to the backbone's weights when not where the store found it.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda[:N]")
@click.option("--n-jobs", type=int, default=None, help="Parallel folds and neighbour search [default: all cores].")
def audit(store, dataset, data_dir, limit, test_fraction, cv, out, overwrite, weights, device, n_jobs):
    """Check the split before trusting its numbers: exact and near duplicates (train <-> test leaks), label
    issues (cleanlab), outliers; audit.json, audit.csv, and the accuracy without them."""
    from pathlib import Path

    from pipeline.audit.check import audit as run_audit
    from pipeline.data.folder import refuse_output_inside
    from pipeline.store.featuresets import load_feature_set

    check_folds(cv)
    out = Path(out) if out else report_dir(dataset_slug(dataset, data_dir))
    if dataset == "folder":
        refuse_output_inside(out, data_dir)
    fs = load_feature_set(store, dataset, data_dir, limit, test_fraction=test_fraction)
    doc = run_audit(fs, out, cv=cv, device=device, weights=weights, n_jobs=n_jobs, overwrite=overwrite)
    c, li = doc["duplicates"]["counts"], doc["label_issues"]
    click.echo(f"duplicates: {c['exact_groups']} exact and {c['near_groups']} near groups ({c['groups_train']} within "
               f"train, {c['groups_test']} within test, {c['groups_across']} across); {c['test_with_train_twin']:,} "
               f"test images have a training twin ({c['conflicting_groups']} groups with conflicting labels)")
    click.echo(f"label issues: {len(li['train']):,} train ({li['share']['train']:.2%}), {len(li['test']):,} test "
               f"({li['share']['test']:.2%}); outliers: {doc['outliers']['count']:,}")
    for a in doc["accuracy"]:
        click.echo(f"  {a['feature_set']:>20} {a['label'] or a['classifier']:<24} test {a['all']:.4f}   without train "
                   f"twins {_acc(a['without_train_twins'])}   without label issues {_acc(a['without_label_issues'])}")
    click.echo(f"audit in {out}/audit.json; flagged files in {out}/audit.csv", err=True)


def _acc(x) -> str:
    return "–" if x is None else f"{x:.4f}"


@main.command()
@click.option("--features", "store", required=True, type=click.Path(path_type=str), help="A feature store folder.")
@click.option("--to", "to", type=click.Choice(EXPORT_FORMATS), default="parquet", show_default=True,
              help="parquet (pyarrow: the vector as one list column) or csv (columns e0..e<D-1>).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="The file [default: <store>.parquet or .csv beside the store].")
@click.option("--maps", "maps_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="A report's maps/ folder: add the 2-D coordinates of this store's maps (<method>_x, _y).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def export(store, to, out, maps_dir, overwrite):
    """A store as one table (a row per image: split, index, label, path or source, vector, maps) for pandas,
    DuckDB, FiftyOne or Spotlight."""
    from pipeline.apply.export import export as run_export

    path = run_export(store, to, out, maps_dir, overwrite)
    click.echo(f"exported {store} to {path}", err=True)


if __name__ == "__main__":
    sys.exit(main())
