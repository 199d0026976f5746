"""The `pipeline` command: options -> library calls. The one place a `PipelineError` becomes one line.

Each command turns its options (declared once, in pipeline.options) into one library call and prints what it
made: results on standard output, where things went on standard error."""
from __future__ import annotations

import sys

import click

from pipeline import options as opt
from pipeline.apply import EXPORT_FORMATS, NEIGHBORS_K, PREDICTIONS, TOP_K
from pipeline.classical.curve import CURVE_CLASSIFIERS, DRAWS, KS
from pipeline.classical.specs import DEFAULT_GRID
from pipeline.console import split_names
from pipeline.embed.request import BACKBONE, ExtractRequest
from pipeline.errors import PipelineError
from pipeline.results import REPORTS_ROOT, study_out
from pipeline.train import config as tc


class _Group(click.Group):
    def list_commands(self, ctx):  # in data-flow order, not alphabetical
        return list(self.commands)

    def format_commands(self, ctx, formatter):  # each summary whole, on one line, never cut with "..."
        names = self.list_commands(ctx)
        width = max(map(len, names))
        with formatter.section("Commands"):
            for name in names:
                formatter.write(f"{'':{formatter.current_indent}}{name:<{width}}  "
                                f"{self.commands[name].get_short_help_str(limit=200)}\n")

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


def _say(message: str) -> None:
    """Where things went, on standard error (results go to standard output)."""
    click.echo(message, err=True)


@click.group(cls=_Group)
@click.version_option(package_name="transfer-workbench")
def main():
    """Pretrained-CNN embeddings vs raw pixels: extract, classify, map, report."""


@main.command()
@opt.extract_options
def extract(**options):
    """Embed an image dataset with a pretrained CNN into a feature store (resumable)."""
    from pipeline.embed.extract import extract as run_extract

    run_extract(ExtractRequest(**options))


@main.command()
@opt.features()
@opt.dataset_options()
@opt.CLASSIFIERS
@click.option("--grid", default=DEFAULT_GRID, show_default=True,
              help="quick (tests, demos) | default (the README's numbers) | full (exhaustive) | a JSON file "
                   "{classifier: {param: [values]}}.")
@opt.cv()
@opt.DEVICE
@opt.N_JOBS
@opt.dask("the grid search's fits run on its workers")
@opt.out(opt.STUDY_OUT_HELP)
def classify(features, dataset, data_dir, limit, test_fraction, raw_size, classifiers, grid, cv, device, n_jobs, dask,
             out):
    """Grid-searched classifiers on raw pixels and embeddings: records, confusion matrices, models.

    results.json/.csv/.md, confusion/ and models/ in --out; then the galleries of the images behind them."""
    from pipeline.classical.backends import make_backend

    backend = make_backend(device)  # first: cuML must hook scikit-learn before it is imported
    from pipeline.classical.search import classify as run_classify
    from pipeline.classical.specs import load_grid
    from pipeline.run import refresh_galleries
    from pipeline.store.featuresets import load_feature_sets

    grid = load_grid(grid)
    sets = load_feature_sets(features, dataset, data_dir, limit, raw_size, test_fraction)
    out = study_out(out, dataset, data_dir, limit=limit)
    run_classify(sets, split_names(classifiers), grid, cv, backend, n_jobs, dask, out)
    refresh_galleries(out, sets, _say)
    click.echo((out / "results.md").read_text())
    _say(f"results in {out}/results.json, .csv, .md; confusion matrices in {out}/confusion/; models in {out}/models/")


@main.command()
@opt.features()
@opt.dataset_options()
@click.option("--classifiers", default=",".join(CURVE_CLASSIFIERS), show_default=True,
              help="logreg (C by 3-fold CV on the draw) | ncm (nearest class mean) | knn.")
@click.option("--labels-per-class", "ks", default=",".join(map(str, KS)), show_default=True,
              help="The curve's points: labelled training images per class (all of them is added).")
@click.option("--draws", type=int, default=DRAWS, show_default=True, help="Seeded stratified draws per point.")
@opt.out(opt.STUDY_OUT_HELP)
def curve(features, dataset, data_dir, limit, test_fraction, raw_size, classifiers, ks, draws, out):
    """How many labels do you need? Accuracy against labelled images per class, raw pixels vs embeddings."""
    from pipeline.classical import curve as lc
    from pipeline.render.markdown import table
    from pipeline.store.featuresets import load_feature_sets

    ks = lc.parse_ks(ks)
    sets = load_feature_sets(features, dataset, data_dir, limit, raw_size, test_fraction)
    out = study_out(out, dataset, data_dir, limit=limit)
    recs = lc.curve(sets, out, split_names(classifiers), ks, draws, log=_say)
    for t in lc.curve_tables(recs):
        click.echo(table(*t) + "\n")
    for line in [lc.statement(b) for b in lc.break_even(recs)] + lc.capped_lines(recs):
        click.echo(line)
    _say(f"curve records in {out}/results.json; figure {out}/figures/curve.png")


@main.command()
@opt.features()
@opt.METHODS_OPTION
@opt.dataset_options()
@opt.DEVICE
@opt.N_JOBS
@opt.out(f"[default: {REPORTS_ROOT}/<dataset>/maps, with --limit N {REPORTS_ROOT}/<dataset>-firstN/maps]")
def project(features, methods, dataset, data_dir, limit, test_fraction, raw_size, device, n_jobs, out):
    """2-D maps (PCA, t-SNE, UMAP) of each feature set, with 5-NN accuracy and trustworthiness."""
    from pipeline.classical.backends import make_backend
    from pipeline.maps.project import project as run_project
    from pipeline.run import refresh_map_view
    from pipeline.store.featuresets import load_feature_sets

    backend = make_backend(device)
    sets = load_feature_sets(features, dataset, data_dir, limit, raw_size, test_fraction)
    out = study_out(out, dataset, data_dir, "maps", limit)
    maps = run_project(sets, split_names(methods), out, backend, n_jobs)
    for method, metas in maps.items():  # the result: how well each map keeps the classes and neighbourhoods
        for fs, m in zip(sets, metas):
            click.echo(f"{fs.name:>20} {method:<5} 5-NN {m['knn_accuracy']:.4f}  trust {m['trustworthiness']:.4f}")
    _say(f"maps in {out}/: <set>_<method>.npy coordinates (+ .json scores), <method>.png figures")
    if out.name == "maps" and (out.parent / "results.json").exists():  # a study's maps: its interactive page
        refresh_map_view(out.parent, sets, _say, out)


@main.command()
@opt.head_options
def train(features, head, hidden, dropout, input_dropout, input_transform, refit, dataset, data_dir, limit,
          test_fraction, raw_size, out, overwrite, **training):
    """Train a torch head (linear or MLP) on stored features; its record joins results.json."""
    from pipeline.models.heads import HeadSpec, parse_hidden
    from pipeline.store.featuresets import load_feature_sets
    from pipeline.train.heads import train_head

    spec = HeadSpec(head, parse_hidden(hidden), input_dropout, dropout, input_transform)
    cfg = tc.TrainConfig.from_options(tc.HEAD_EPOCHS, tc.HEAD_BATCH, **training)
    spec.check()
    cfg.check()
    sets = load_feature_sets(features, dataset, data_dir, limit, raw_size, test_fraction)
    if len(sets) != 1:
        raise PipelineError(f"--features {features}: `pipeline train` trains on one feature set at a time")
    out = study_out(out, dataset, data_dir, limit=limit)
    rec = train_head(sets[0], tc.TrainRequest(spec, cfg, out, overwrite, refit))
    click.echo(f"{rec['label']} on {rec['feature_set']}: test accuracy {rec['test_accuracy']:.4f} (validation "
               f"{rec['cv_mean']:.4f}, epoch {rec['best_epoch']} of {rec['epochs_run']} kept), "
               f"{rec['fit_seconds']:.0f} s on {rec['device_name']}")
    _say(f"record in {out}/results.json; model {out}/{rec['model']}; learning curve in {out}/curves/")


@main.command()
@opt.finetune_options
def finetune(dataset, data_dir, limit, test_fraction, backbone, weights, unfreeze, augment, image_size, overwrite,
             out, **training):
    """Fine-tune a backbone's last N blocks and a new head on the images.

    The record (test and validation accuracy, epochs, time) joins the study's results.json."""
    from pathlib import Path

    from pipeline.train.finetune import finetune as run_finetune

    cfg = tc.TrainConfig.from_options(tc.FINETUNE_EPOCHS, tc.FINETUNE_BATCH, **training)
    rec = run_finetune(tc.FinetuneRequest(
        dataset=dataset, data_dir=data_dir, limit=limit, test_fraction=test_fraction, backbone=backbone,
        weights=weights, unfreeze=unfreeze, augment=augment, image_size=image_size, train=cfg,
        out=Path(out) if out else None, overwrite=overwrite))
    click.echo(f"{rec['feature_set']}: test accuracy {rec['test_accuracy']:.4f} (validation {rec['cv_mean']:.4f}, "
               f"epoch {rec['best_epoch']} of {rec['epochs_run']} kept"
               f"{', stopped by --max-minutes' if rec['stopped_by'] == 'budget' else ''}), "
               f"{rec['fit_seconds'] / 60:.1f} min on {rec['device_name']} ({rec['precision']})")


@main.command()
@opt.out("The folder classify/project/run wrote to.", opt.STUDY_OUT)
def report(out):
    """One self-contained HTML report (and Markdown) of what a study folder holds."""
    from pipeline.report import write_report

    html_path, md_path = write_report(out)
    _say(f"report: {html_path} (self-contained) and {md_path}")


@main.command()
@opt.study_options
def run(**options):
    """The whole study in one command; skips what is done, resumes the rest.

    extract, classify, [train, finetune,] curve, galleries, audit, project, [evaluate,] maps.html, report."""
    import shlex

    from pipeline.run import RunConfig
    from pipeline.run import run as run_study

    command = shlex.join(["pipeline", *click.get_current_context().meta.get("pipeline.argv", [])])  # as typed
    info = run_study(RunConfig(**options), command=command)
    for s in info["stages"]:  # the run's result: what each stage did
        click.echo(f"{s['stage']:>9}  {s['state']:<8} {s['seconds']:8.1f} s  {s['detail']}")
    _say(f"report: {info['out']}/report.html and report.md; models in {info['out']}/models/")


@main.command()
@click.option("--model", "model", required=True, type=click.Path(path_type=str),
              help="A saved model: <out>/models/<features>_<classifier>.skops")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@opt.out("The CSV file.", PREDICTIONS, dir_okay=False)
@opt.overwrite("Replace the CSV if it exists (a regular file only).")
@click.option("--top-k", type=int, default=TOP_K, show_default=True, help="Classes (with scores) per image.")
@opt.match_domain("Map each photo toward the training images' look first.")
@opt.WEIGHTS_FILE
@opt.DEVICE
def predict(model, images, out, overwrite, top_k, match_domain, weights, device):
    """Predict IMAGES (files or folders) with a saved model: a CSV of classes and top-k scores."""
    from collections import Counter

    from pipeline.apply.predict import predict as run_predict

    rows = run_predict(model, images, out, top_k, device, weights, match_domain, overwrite=overwrite)
    counts = Counter(r["predicted"] for r in rows).most_common(5)
    _say(f"{len(rows):,} images -> {out} ({rows[0]['score_kind']} scores); most predicted: "
         + ", ".join(f"{c} {n}" for c, n in counts))


@main.command()
@click.option("--folder", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Photos in the wild: <class>/<images>, class names as the study's (case, spaces, _ and / "
                   "do not matter).")
@opt.out("The study whose saved models to score (its results.json gains wild_* fields).", opt.STUDY_OUT)
@opt.match_domain("Also score the photos mapped toward the training images' look.")
@opt.WEIGHTS_FILE
@opt.DEVICE
def evaluate(folder, out, match_domain, weights, device):
    """Score every saved model of a study on a folder of new photos (in the wild).

    Each record gains wild_* fields, and the report is written again."""
    from pipeline.apply.evaluate import evaluate as run_evaluate
    from pipeline.report import write_report

    recs = run_evaluate(out, folder, match_domain, device, weights)
    html_path, _ = write_report(out)
    _say(f"{len(recs)} models scored on {recs[0]['wild_n']:,} images; report: {html_path}")


@main.command()
@click.option("--features", "store", required=True, type=click.Path(path_type=str),
              help="A feature store (embeddings): its training images are searched.")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-k", "k", type=int, default=NEIGHBORS_K, show_default=True, help="Neighbours per image.")
@opt.out("A folder for neighbors.csv and neighbors.html (a contact sheet of the images).", file_okay=False)
@opt.overwrite("Replace neighbors.csv / neighbors.html already in --out.")
@opt.WEIGHTS_FILE
@opt.DEVICE
def neighbors(store, images, k, out, overwrite, weights, device):
    """The training images nearest each of IMAGES in a store's embedding (cosine distance)."""
    from pipeline.apply.neighbors import neighbors as run_neighbors

    rows = run_neighbors(store, images, k, out, device, weights, overwrite=overwrite)
    width = max(len(r["label"]) for r in rows)
    for i, r in enumerate(rows):
        if i == 0 or r["query"] != rows[i - 1]["query"]:
            click.echo(r["query"])
        click.echo(f"  {r['rank']:>3}  {r['label']:<{width}}  {r['distance']:.4f}  train #{r['train_index']}"
                   + (f"  {r['path']}" if r["path"] else ""))
    if out:
        _say(f"neighbours in {out}/neighbors.csv; contact sheet {out}/neighbors.html")


@main.command()
@click.option("--features", "store", default=BACKBONE, show_default=True,
              help=f"The embeddings to audit with: {opt.STORE_HELP}.")
@opt.dataset_options(raw=False)
@opt.cv("Folds of the out-of-fold probabilities the label-issue check reads.")
@opt.out(f"The study folder for audit.json and audit.csv [default: {REPORTS_ROOT}/<dataset>, with --limit N "
         f"<dataset>-firstN]; its records' saved "
         f"test predictions give the accuracy without the flagged images.", file_okay=False)
@opt.overwrite("Replace an audit.json of other data in --out.")
@opt.WEIGHTS_FILE
@opt.DEVICE
@opt.N_JOBS
def audit(store, dataset, data_dir, limit, test_fraction, cv, out, overwrite, weights, device, n_jobs):
    """Check the split before trusting its numbers: duplicates, leaks, label issues, outliers."""
    from pipeline.audit.check import audit_study, summary_lines

    out = study_out(out, dataset, data_dir, limit=limit)
    doc = audit_study(store, dataset, data_dir, limit, test_fraction, out, cv=cv, device=device, weights=weights,
                      n_jobs=n_jobs, overwrite=overwrite)
    for line in summary_lines(doc):
        click.echo(line)
    _say(f"audit in {out}/audit.json; flagged files in {out}/audit.csv")


@main.command()
@click.option("--features", "store", required=True, type=click.Path(path_type=str), help="A feature store folder.")
@click.option("--to", "to", type=click.Choice(EXPORT_FORMATS), default="parquet", show_default=True,
              help="parquet (pyarrow: the vector as one list column) or csv (columns e0..e<D-1>).")
@opt.out("The file [default: <store>.parquet or .csv beside the store].", dir_okay=False)
@click.option("--maps", "maps_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="A report's maps/ folder: add the 2-D coordinates of this store's maps (<method>_x, _y).")
@opt.overwrite("Replace an existing file.")
def export(store, to, out, maps_dir, overwrite):
    """A store as one table for pandas or DuckDB: a row per image (split, label, path, vector, maps)."""
    from pipeline.apply.export import export as run_export

    path = run_export(store, to, out, maps_dir, overwrite)
    _say(f"exported {store} to {path}")


if __name__ == "__main__":
    sys.exit(main())
