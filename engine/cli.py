"""The `voxelbase` command line: each command is a thin wrapper over a typed function in `engine`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from voxelbase.errors import VoxelbaseError
from voxelbase.project import PROJECT_ENV, Project


class UserError(click.ClickException):
    """An error the user can fix; printed without a traceback."""


class VoxelbaseGroup(click.Group):
    """Turns every `VoxelbaseError` (bad input, a state the user can fix) into a clean message and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VoxelbaseError as error:
            raise UserError(str(error)) from error


def _project(ctx: click.Context) -> Project:
    return ctx.obj["project"]


@click.group(cls=VoxelbaseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--project",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=PROJECT_ENV,
    default=None,
    help="Project directory (default: $VOXELBASE_PROJECT or ./voxelbase-project).",
)
@click.option(
    "--store",
    metavar="URL",
    default=None,
    help="Where a new project keeps its Zarr store: an fsspec URL (s3://bucket/prefix; credentials and endpoint "
    "from the AWS_* variables or profile) or a local folder (default: PROJECT/store). The catalog records it, so "
    "later commands need no --store; another location for an existing project is an error.",
)
@click.pass_context
def cli(ctx: click.Context, project: Path | None, store: str | None) -> None:
    """Voxelbase: self-configuring 3D segmentation over a dataset database (Zarr + DuckDB)."""
    ctx.ensure_object(dict)
    try:
        ctx.obj["project"] = Project.resolve(project, store=store)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--store") from error
    if store is not None:  # refuse another project's location before any command touches a store
        from voxelbase.store.location import check_store_location

        check_store_location(ctx.obj["project"])


def _use_scheduler(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """--scheduler: checked, then handed to every per-case loop of this command through the environment."""
    if value:
        from voxelbase.parallel import SCHEDULER_ENV, SchedulerError, resolve_scheduler

        try:
            chosen = resolve_scheduler(value) or ""
        except SchedulerError as error:
            raise click.BadParameter(str(error)) from error
        before = os.environ.get(SCHEDULER_ENV)
        os.environ[SCHEDULER_ENV] = chosen

        def restore() -> None:  # for this command only (matters where commands run in one process, as in tests)
            if before is None:
                os.environ.pop(SCHEDULER_ENV, None)
            else:
                os.environ[SCHEDULER_ENV] = before

        ctx.call_on_close(restore)


def _scheduler_option(func):
    """--scheduler: the per-case work on a Dask cluster."""
    return click.option(
        "--scheduler",
        default=None,
        expose_value=False,
        callback=_use_scheduler,
        help="Run the per-case work on Dask: local:N (a LocalCluster of N workers) or a scheduler address "
        "(tcp://host:8786). Default: $VOXELBASE_SCHEDULER, else local worker processes.",
    )(func)


def _workers_option(func):
    """Per-case commands: local worker processes, or a Dask cluster."""
    func = _scheduler_option(func)
    return click.option(
        "--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPU cores)."
    )(func)


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Dataset name in the catalog.")
@click.option("--replace", is_flag=True, help="Replace an existing dataset of that name with different content.")
@_workers_option
@click.pass_context
def ingest(ctx: click.Context, source: Path, name: str, replace: bool, workers: int | None) -> None:
    """Import an nnU-Net v2 raw folder or an MSD task folder."""
    from voxelbase.ingest import ingest_dataset

    result = ingest_dataset(source, name=name, project=_project(ctx), workers=workers, replace=replace)
    click.echo(result.summary())


@cli.command()
@click.pass_context
def datasets(ctx: click.Context) -> None:
    """List datasets with case counts, channels and labels."""
    from voxelbase.catalog import connect
    from voxelbase.catalog.datasets import dataset_overview
    from voxelbase.tabular import format_table

    with connect(_project(ctx), read_only=True) as con:
        click.echo(format_table(dataset_overview(con), fmt="table"))


@cli.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file.")
@click.pass_context
def sql(ctx: click.Context, query: str, fmt: str, output: Path | None) -> None:
    """Run any SQL over the catalog (read-only)."""
    import duckdb

    from voxelbase.catalog.queries import run_query
    from voxelbase.tabular import format_table

    try:
        table = run_query(query, project=_project(ctx))
    except duckdb.Error as error:
        raise UserError(str(error)) from error
    text = format_table(table, fmt=fmt)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + ("" if text.endswith("\n") else "\n"))
        click.echo(f"wrote {table.num_rows} rows to {output}", err=True)


@cli.command()
@click.argument("name")
@click.option(
    "--preset", type=click.Choice(["nnunet", "resenc-m", "resenc-l", "resenc-xl"]), default="nnunet", show_default=True
)
@click.option("--gpu-memory", "gpu_memory", type=float, default=None, help="GPU memory target in GB (preset default).")
@click.pass_context
def plan(ctx: click.Context, name: str, preset: str, gpu_memory: float | None) -> None:
    """Fingerprint a dataset and plan 2d, 3d_fullres (and 3d_lowres + cascade when warranted)."""
    import pyarrow as pa

    from voxelbase.planning import plan_dataset
    from voxelbase.tabular import format_table

    result = plan_dataset(name, project=_project(ctx), preset=preset, gpu_memory_gb=gpu_memory)
    click.echo(f"plan {result.plan!r} for dataset {result.dataset!r} -> {result.artifact}")
    click.echo(format_table(pa.Table.from_pylist(result.rows()), fmt="table", max_width=80))
    if result.splits_written:
        click.echo("wrote nnU-Net's default 5-fold splits (table splits)")


@cli.command()
@click.argument("name")
@click.option("--folds", "n_folds", type=int, default=None, help="Make N folds by nnU-Net's rule (KFold, seed 12345).")
@click.option(
    "--import",
    "import_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Take the folds from an nnU-Net splits_final.json (fold k is the k-th entry).",
)
@click.option(
    "--export",
    "export_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the splits to a file in nnU-Net's splits_final.json format.",
)
@click.pass_context
def splits(
    ctx: click.Context, name: str, n_folds: int | None, import_file: Path | None, export_file: Path | None
) -> None:
    """Show a dataset's cross-validation splits, or replace them (--folds N or --import FILE)."""
    import pyarrow as pa

    from voxelbase.planning.user_splits import export_splits, import_splits, make_splits, show_splits
    from voxelbase.tabular import format_table

    if n_folds is not None and import_file is not None:
        raise UserError("give --folds or --import, not both")
    if import_file is not None:
        result = import_splits(name, import_file, project=_project(ctx))
    elif n_folds is not None:
        result = make_splits(name, n_folds, project=_project(ctx))
    else:
        result = show_splits(name, project=_project(ctx))
    click.echo(result.summary())
    if result.folds:
        click.echo(format_table(pa.Table.from_pylist(result.rows()), fmt="table", max_width=80))
    if export_file is not None:
        exported = export_splits(name, export_file, project=_project(ctx))
        click.echo(f"wrote {len(exported.folds)} folds to {export_file}")


@cli.command()
@click.argument("name")
@click.option("--configuration", "-c", required=True, help="Planned configuration, e.g. 3d_fullres.")
@click.option("--plan", "plan_name", default=None, help="Plan name (default: the newest plan of the dataset).")
@_workers_option
@click.pass_context
def preprocess(ctx: click.Context, name: str, configuration: str, plan_name: str | None, workers: int | None) -> None:
    """Crop, normalize and resample a dataset's cases into the preprocessed Zarr store (skips up-to-date cases)."""
    from voxelbase.preprocessing.dataset import preprocess_dataset

    result = preprocess_dataset(
        name, configuration=configuration, plan=plan_name, workers=workers, project=_project(ctx)
    )
    click.echo(result.summary())


@cli.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cases", type=click.IntRange(min=2), default=10, show_default=True, help="Labelled training cases.")
@click.option("--test-cases", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shape", type=int, nargs=3, default=(32, 64, 64), show_default=True, help="z y x voxels (jittered).")
@click.option(
    "--kind",
    type=click.Choice(["ct", "ct-quick", "brats"]),
    default="ct",
    show_default=True,
    help="ct: abdomen CT, plain labels; ct-quick: the same with larger, high-contrast structures that train in "
    "minutes (make demo); brats: 4-channel MR with nested tumour regions (region labels).",
)
@click.option(
    "--coarse-axis",
    type=click.Choice(["z", "y", "x"]),
    default="z",
    show_default=True,
    help="ct kinds: the thick-slice axis (nnU-Net's 2d then cuts slices along it).",
)
@click.option(
    "--sparse-from",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Instead: write a sparsely annotated copy of this labelled raw dataset (the rest set to an ignore label).",
)
@click.option(
    "--keep-every",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="--sparse-from: 1 slice in N per axis.",
)
def demo_data(
    out: Path,
    cases: int,
    test_cases: int,
    seed: int,
    shape: tuple[int, int, int],
    kind: str,
    coarse_axis: str,
    sparse_from: Path | None,
    keep_every: int,
) -> None:
    """Write a small synthetic dataset (CT, or BraTS-like regions) or a sparse copy of one, in nnU-Net raw layout."""
    if sparse_from is not None:
        from voxelbase.ingest.sparse import write_sparse_copy

        write_sparse_copy(sparse_from, out, every=keep_every)
        click.echo(f"wrote a sparse copy of {sparse_from} (1 slice in {keep_every} per axis labelled) to {out}")
        return
    if kind == "brats":
        from voxelbase.ingest.demo_brats import write_brats_dataset

        if coarse_axis != "z":
            raise click.UsageError("--coarse-axis applies to the ct kinds (brats volumes are isotropic)")

        write_brats_dataset(out, cases=cases, test_cases=test_cases, seed=seed, shape=shape)
    else:
        from voxelbase.ingest.demo import write_demo_dataset

        write_demo_dataset(
            out, cases=cases, test_cases=test_cases, seed=seed, shape=shape, kind=kind, coarse_axis=coarse_axis
        )
    click.echo(f"wrote {cases} training and {test_cases} test cases to {out}")


@cli.command()
@click.argument("pred_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--reference",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of reference segmentations.",
)
@click.option("--dataset", default=None, help="An ingested dataset whose labels are the references.")
@click.option("--name", default=None, help="Name of this evaluation (default: the folder's name).")
@click.option(
    "--nsd-tolerance", type=click.FloatRange(min=0), default=1.0, show_default=True, help="NSD tolerance in mm."
)
@_workers_option
@click.pass_context
def evaluate(
    ctx: click.Context,
    pred_dir: Path,
    reference: Path | None,
    dataset: str | None,
    name: str | None,
    nsd_tolerance: float,
    workers: int | None,
) -> None:
    """Score predictions against references (Dice, IoU, HD95, NSD per case and label) into the catalog."""
    from voxelbase.evaluation.evaluate import evaluate_folder, evaluation_summary
    from voxelbase.tabular import format_table

    run_id = evaluate_folder(
        pred_dir,
        reference_dir=reference,
        dataset=dataset,
        name=name,
        project=_project(ctx),
        nsd_tolerance_mm=nsd_tolerance,
        workers=workers,
    )
    click.echo(format_table(evaluation_summary(run_id, project=_project(ctx)), fmt="table"))
    click.echo(
        f'run {run_id}: per-case rows in metrics (voxelbase sql "SELECT * FROM metrics WHERE run_id = {run_id}")'
    )


@cli.command()
@click.argument("experiments", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--metric", type=click.Choice(["dice", "iou", "hd95", "nsd"]), default="dice", show_default=True)
@click.pass_context
def compare(ctx: click.Context, experiments: tuple[str, ...], fmt: str, metric: str) -> None:
    """Configurations x folds (and ensembles, evaluations), mean ± std per label, from the summary views."""
    from voxelbase.evaluation.compare import compare as compare_table
    from voxelbase.evaluation.compare import for_display
    from voxelbase.tabular import format_table

    table = compare_table(list(experiments), project=_project(ctx), metric=metric)
    if table.num_rows == 0:
        raise UserError("no finished runs with metrics yet: train and validate, or evaluate a folder, first")
    click.echo(format_table(for_display(table) if fmt == "table" else table, fmt=fmt))


@cli.command()
@click.argument("experiment")
@click.option(
    "--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for index.html."
)
@click.pass_context
def report(ctx: click.Context, experiment: str, output: Path) -> None:
    """A static HTML report of an experiment: tables, training curves, per-case metrics, overlays."""
    from voxelbase.evaluation.report import write_report

    index = write_report(experiment, output=output, project=_project(ctx))
    click.echo(f"wrote {index}")


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--configuration", "-c", default=None, help="Train only this configuration (default: the spec's).")
@click.option(
    "--fold",
    "-f",
    default=None,
    help="Train only this fold: a fold of the dataset's splits (0-4 by default) or all (default: the spec's folds).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key, e.g. train.epochs=50."
)
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the spec's train.device).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its latest checkpoint.")
@click.option(
    "--world-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train each fold on this many DDP ranks on this machine (one GPU each on CUDA, gloo on the CPU); "
    "the global batch is split over them. Under torchrun, leave it out.",
)
@click.pass_context
def train(ctx: click.Context, spec: Path, configuration, fold, overrides, device, resume, world_size) -> None:
    """Train one or more folds of an experiment spec."""
    from voxelbase.workflow.train import train as train_spec

    results = train_spec(
        spec,
        project=_project(ctx),
        configuration=configuration,
        fold=fold,
        overrides=overrides,
        device=device,
        resume=resume,
        world_size=world_size,
    )
    for r in results:
        note = "already trained to these epochs" if r.status == "skipped" else f"{r.epochs} epochs"
        click.echo(f"run {r.run_id}: {r.run_dir} ({note})")


@cli.command("run")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="List the steps that would run, and why, without running them.")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key, e.g. train.epochs=50."
)
@click.pass_context
def run_command(ctx: click.Context, spec: Path, dry_run: bool, overrides) -> None:
    """Run the whole declared experiment, doing only what is not done yet."""
    from voxelbase.workflow import run_experiment

    report = run_experiment(spec, project=_project(ctx), dry_run=dry_run, overrides=overrides, echo=click.echo)
    for line in report.lines():
        click.echo(line)


@cli.command(context_settings={"ignore_unknown_options": False, "allow_extra_args": True})
@click.option("--experiment", "-e", default=None, help="Trained experiment (its name in the catalog).")
@click.option(
    "--model",
    "-m",
    type=click.Path(path_type=Path),
    default=None,
    help="A model bundle (folder or .zip from voxelbase export), instead of --experiment; needs no project.",
)
@click.option("--input", "input_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--configuration", "-c", default=None, help="Configuration or 'ensemble:A+B' (default: the selection).")
@click.option("--folds", "-f", multiple=True, help="Folds to average, e.g. --folds 0 1 2 (default: all trained).")
@click.option("--no-tta", "no_tta", is_flag=True, help="Switch off mirroring test-time augmentation.")
@click.option("--batch-windows", type=click.IntRange(min=1), default=None, help="Windows per forward pass.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the spec's predict.device).")
@click.option("--save-probabilities", is_flag=True, help="Also write <case>.npz class probabilities.")
@_scheduler_option
@click.pass_context
def predict(
    ctx: click.Context, experiment, model, input_dir, output_dir, configuration, folds, no_tta, **options
) -> None:
    """Segment images (imagesTs layout) with a trained experiment or a model bundle, in their original geometry."""
    from voxelbase.inference.predict import predict as predict_images

    if (experiment is None) == (model is None):
        raise UserError("give --experiment NAME or --model BUNDLE" + (", not both" if model is not None else ""))
    extra = list(ctx.args)  # `--folds 0 1 2`: click hands the values after the first over as extra arguments
    if extra and (not folds or not all(a.isdigit() or a == "all" for a in extra)):
        raise UserError(f"unexpected argument(s): {' '.join(extra)}")
    written = predict_images(
        experiment,
        model=model,
        input_dir=input_dir,
        output_dir=output_dir,
        project=_project(ctx),
        configuration=configuration,
        folds=[f for value in (*folds, *extra) for f in value.replace(",", " ").split()] or None,
        tta=False if no_tta else None,
        **options,
    )
    click.echo(f"wrote {len(written)} segmentation(s) to {output_dir}")


def _fold_values(ctx: click.Context, folds) -> list[str] | None:
    """`--folds 0 1 2`: click hands the values after the first over as extra arguments."""
    extra = list(ctx.args)
    if extra and (not folds or not all(a.isdigit() or a == "all" for a in extra)):
        raise UserError(f"unexpected argument(s): {' '.join(extra)}")
    return [f for value in (*folds, *extra) for f in value.replace(",", " ").split()] or None


@cli.command(context_settings={"ignore_unknown_options": False, "allow_extra_args": True})
@click.argument("experiment")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Bundle folder, or a .zip file.")
@click.option("--configuration", "-c", default=None, help="Configuration or 'ensemble:A+B' (default: the selection).")
@click.option("--folds", "-f", multiple=True, help="Folds to include, e.g. --folds 0 1 (default: all trained).")
@click.option("--replace", is_flag=True, help="Overwrite an existing bundle at --output.")
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["voxelbase", "nnunet"]),
    default="voxelbase",
    show_default=True,
    help="voxelbase: a model bundle; nnunet: an nnU-Net v2 trained-model folder (one configuration).",
)
@click.pass_context
def export(ctx: click.Context, experiment, output, configuration, folds, replace, export_format) -> None:
    """Write a self-contained model bundle (plans, safetensors weights, manifest with sha256) of an experiment,
    or with --format nnunet a folder nnUNetv2_predict_from_modelfolder runs."""
    from voxelbase.inference.bundle_project import export_bundle
    from voxelbase.inference.nnunet_export import export_nnunet

    write = export_nnunet if export_format == "nnunet" else export_bundle  # same arguments
    result = write(
        experiment,
        output,
        project=_project(ctx),
        configuration=configuration,
        folds=_fold_values(ctx, folds),
        replace_existing=replace,
    )
    click.echo(result.summary())


@cli.command("import-model")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="Experiment name in this project (default: the bundle's).")
@click.option("--replace", is_flag=True, help="Replace an existing experiment of that name.")
@click.pass_context
def import_model(ctx: click.Context, bundle: Path, name: str | None, replace: bool) -> None:
    """Register a model bundle as an experiment of the project (predict --experiment, compare and SQL see it)."""
    from voxelbase.inference.bundle_project import import_bundle

    result = import_bundle(bundle, project=_project(ctx), name=name, replace_existing=replace)
    click.echo(result.summary())


@cli.command("import-nnunet", context_settings={"ignore_unknown_options": False, "allow_extra_args": True})
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Experiment name in this project.")
@click.option("--configuration", "-c", "configurations", multiple=True, help="Import only this configuration.")
@click.option("--folds", "-f", multiple=True, help="Folds to import, e.g. --folds 0 1 (default: every fold there).")
@click.option("--replace", is_flag=True, help="Replace an existing experiment of that name.")
@click.pass_context
def import_nnunet_command(ctx: click.Context, source: Path, name: str, configurations, folds, replace: bool) -> None:
    """Register an nnU-Net v2 trained-model folder (or nnUNetv2_export_model_to_zip zip) as an experiment."""
    from voxelbase.inference.nnunet_import import import_nnunet

    result = import_nnunet(
        source,
        name=name,
        project=_project(ctx),
        folds=_fold_values(ctx, folds),
        configurations=list(configurations) or None,
        replace_existing=replace,
    )
    click.echo(result.summary())


def main() -> None:
    cli(prog_name="voxelbase")


if __name__ == "__main__":
    sys.exit(main())
