"""`scarce`: validate and run benchmarks, make demo data, show reports.

    scarce validate SPEC                 check a spec; errors name the field path and value
    scarce run SPEC [--workers N] [--device cpu|cuda]
    scarce data demo DEST                procedural demo dataset (not a benchmark)
    scarce data import FORMAT SRC DEST   copy a dataset into the store with an index
    scarce data inspect URI              classes, counts, image sizes, mask coverage
    scarce report REPORT                 print the Table-1 view of a report.json (path or URI)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from scarce.operator.spec import SpecError, load_spec, spec_warnings
from scarce.trainer.report import TABLE_HEADER, table_rows

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])
data_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Datasets.")
app.add_typer(data_app, name="data")

# Piped output (logs, CI) gets a wide console so the table is never cut to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _load(spec_path: Path):
    try:
        benchmark = load_spec(spec_path)
    except SpecError as error:
        err_console.print(f"[red]{escape(str(error))}[/red]", highlight=False)
        raise typer.Exit(2) from None
    for warning in spec_warnings(benchmark):
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    return benchmark


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="Spec YAML file.")]) -> None:
    """Check a ScarceBenchmark spec without running anything."""
    from scarce.operator.plan import plan_benchmark

    benchmark = _load(spec)
    plan = plan_benchmark(benchmark, base_dir=spec.resolve().parent)
    console.print(
        f"{spec}: valid ScarceBenchmark {benchmark.name!r}: {len(plan.split)} dataset(s), "
        f"arms {', '.join(benchmark.spec.resolved_arms)}, {benchmark.spec.seeds} seeds, "
        f"{plan.total} units",
        highlight=False,
    )


def print_report_table(report: dict[str, Any]) -> None:
    """Print the report's Table-1 view."""
    table = Table(title=f"SCARCE: {report['benchmark']} (hardest-class accuracy, %)")
    for column in TABLE_HEADER:
        table.add_column(
            column, justify="left" if column in TABLE_HEADER[:3] else "right", no_wrap=True
        )
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Spec YAML file.")],
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes (default: spec.parallelism, at most the CPU count)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    log_dir: Annotated[Path | None, typer.Option(help="Worker logs (default: a temp dir).")] = None,
    stop_after: Annotated[
        str | None,
        typer.Option(
            "--stop-after",
            help="split: freeze the splits and make the synthetic sets, then stop (e.g. to "
            "carry the store to a GPU machine and run the rest there).",
        ),
    ] = None,
) -> None:
    """Run a benchmark on this machine: split, train every unit, reduce, print the table."""
    import tempfile

    from scarce.operator.local import ExecutorInterrupted, LocalExecutor
    from scarce.operator.plan import plan_benchmark

    if device not in ("cpu", "cuda"):
        err_console.print(f"--device: must be cpu or cuda, got {device!r}")
        raise typer.Exit(2)
    if stop_after not in (None, "split"):
        err_console.print(f"--stop-after: must be split, got {stop_after!r}")
        raise typer.Exit(2)
    benchmark = _load(spec)
    plan = plan_benchmark(benchmark, base_dir=spec.resolve().parent)
    if stop_after == "split":
        plan = plan.only_split()
    if workers is None:
        workers = max(1, min(benchmark.spec.parallelism, os.cpu_count() or 1))
    logs = log_dir or Path(tempfile.gettempdir()) / f"scarce-{benchmark.name}-logs"
    console.print(
        f"benchmark {benchmark.name}: {plan.total} units "
        f"({len(plan.split)} split, {len(plan.pilot)} pilot, {len(plan.train)} train, "
        f"{len(plan.fidelity)} fidelity, {int(plan.reduce_enabled)} reduce), "
        f"{workers} worker(s) on {device}; store {plan.reduce.storage.uri}",
        highlight=False,
    )
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("units", total=plan.total)

        def on_event(event: str, data: dict[str, Any]) -> None:
            if event == "stage":
                progress.update(task, description=f"{data['stage']:>6}")
            elif event == "unit":
                progress.advance(task)
                if data["status"] == "failed":
                    progress.console.print(
                        f"[red]failed[/red] {escape(data['key'])}: "
                        f"{escape(str(data.get('error')))}",
                        highlight=False,
                    )

        executor = LocalExecutor(plan, workers=workers, device=device, log_dir=logs,
                                 progress=on_event)
        try:
            outcome = executor.run()
        except ExecutorInterrupted as error:
            progress.stop()
            err_console.print(f"[yellow]{escape(str(error))}[/yellow]")
            raise typer.Exit(130) from None
    console.print(
        f"{outcome.count('done')} done, {outcome.count('skipped')} reused, "
        f"{len(outcome.failed)} failed in {outcome.seconds:.1f}s",
        highlight=False,
    )
    if outcome.report:
        print_report_table(outcome.report)
        console.print(
            f"report: {plan.reduce.storage.uri}/reports/{benchmark.name}/report.json and "
            "report.md",
            highlight=False,
        )
    if outcome.failed:
        err_console.print(f"{len(outcome.failed)} unit(s) failed; worker logs in {logs}")
        raise typer.Exit(1)


@app.command()
def report(
    location: Annotated[
        str,
        typer.Argument(help="Results of a benchmark (STORE/results/NAME, a path or s3:// URI), "
                       "or a report.json to show."),
    ],
    fmt: Annotated[str, typer.Option("--format", help="table, md, html or json.")] = "table",
    out: Annotated[Path | None, typer.Option(help="Write every report file here.")] = None,
    hardest_class: Annotated[
        list[str] | None,
        typer.Option(
            "--hardest-class",
            help="DATASET=CLASS: report this class instead of the spec's (or the pilot's) "
            "choice. No unit is retrained: every result holds every class's accuracy, and "
            "nothing a unit trains depends on the reported class. Repeatable.",
        ),
    ] = None,
) -> None:
    """Rebuild a benchmark's report from its result objects alone (or show a report.json)."""
    from scarce.trainer.report import render_markdown
    from scarce.trainer.store import StoreError, open_store

    if fmt not in ("table", "md", "html", "json"):
        err_console.print(f"--format: must be table, md, html or json, got {fmt!r}")
        raise typer.Exit(2)
    try:
        if hardest_class and location.rstrip("/").endswith(".json"):
            raise ValueError("--hardest-class needs STORE/results/NAME, not a report.json")
        if location.rstrip("/").endswith(".json"):
            folder, _, name = location.rstrip("/").rpartition("/")
            document = open_store(folder or ".").get_json(name)
            files = {"report.json": json.dumps(document).encode(),
                     "report.md": render_markdown(document).encode()}
        else:
            document, files = _rebuild_report(location, _parse_overrides(hardest_class or []))
    except (StoreError, ValueError) as error:
        err_console.print(escape(str(error)), highlight=False)
        raise typer.Exit(1) from None
    if out is not None:
        for name, data in files.items():
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.tmp")
            temp.write_bytes(data)
            temp.replace(target)
        err_console.print(f"wrote {len(files)} files to {out}", highlight=False)
    if fmt == "json":
        sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    elif fmt == "md":
        sys.stdout.write(files["report.md"].decode())
    elif fmt == "html":
        sys.stdout.write(files.get("report.html", b"").decode())
    else:
        print_report_table(document)


def _parse_overrides(values: list[str]) -> dict[str, str]:
    """`DATASET=CLASS` options -> {dataset: class}."""
    overrides: dict[str, str] = {}
    for value in values:
        dataset, sep, cls = value.partition("=")
        if not sep or not dataset or not cls:
            raise ValueError(f"--hardest-class: expected DATASET=CLASS, got {value!r}")
        overrides[dataset] = cls
    return overrides


def _rebuild_report(
    location: str, hardest_class: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Reduce again from STORE/results/NAME: the same report the run's reducer wrote, or the
    same results reported on other hardest classes."""
    from scarce.trainer.integrity_report import fidelity_figures
    from scarce.trainer.reduce import BENCHMARK_KEY, reduce_benchmark
    from scarce.trainer.report_files import render_report_files
    from scarce.trainer.store import open_store
    from scarce.trainer.unit import WorkUnit

    root, marker, benchmark = location.rstrip("/").rpartition("/results/")
    if not marker or not benchmark or "/" in benchmark:
        raise ValueError(
            f"{location}: expected the results of one benchmark, STORE/results/NAME "
            "(e.g. runs/store/results/demo or s3://bucket/prefix/results/demo)"
        )
    store = open_store(root)
    unit = WorkUnit.model_validate(store.get_json(BENCHMARK_KEY.format(benchmark=benchmark)))
    if hardest_class:
        unit = _with_hardest_classes(unit, hardest_class, store)
    document, used = reduce_benchmark(unit, store)
    return document, render_report_files(
        document, used, fidelity_figures(store, benchmark, document)
    )


def _with_hardest_classes(unit: Any, chosen: dict[str, str], store: Any) -> Any:
    """The reduce unit with other hardest classes, each checked against its frozen split."""
    names = [d.name for d in unit.datasets]
    datasets = []
    for dataset in unit.datasets:
        cls = chosen.get(dataset.name)
        if cls is not None:
            split = store.get_json(f"results/{unit.benchmark}/{dataset.name}/split.json")
            defects = sorted(c for c in split["counts"] if c != split["goodClass"])
            if cls not in defects:
                raise ValueError(
                    f"--hardest-class {dataset.name}={cls}: not a defect class of the split "
                    f"(one of {', '.join(defects)})"
                )
            dataset = dataset.model_copy(update={"hardest_class": cls})
        datasets.append(dataset)
    for name in chosen:
        if name not in names:
            raise ValueError(
                f"--hardest-class {name}=...: no dataset {name!r} in this benchmark "
                f"(datasets: {', '.join(names)})"
            )
    return unit.model_copy(update={"datasets": datasets})


@app.command()
def crd(
    out: Annotated[
        Path | None, typer.Option(help="Write the YAML to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the ScarceBenchmark CustomResourceDefinition generated from the spec model."""
    from scarce.operator.crd import render_crd_yaml

    text = render_crd_yaml()
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    err_console.print(f"wrote {out}", highlight=False)


@data_app.command("demo")
def data_demo(
    dest: Annotated[Path, typer.Argument(help="Folder to create.")],
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
) -> None:
    """Generate the procedural demo dataset and a vendor drop (a demo, not a benchmark)."""
    from scarce.trainer.datasets.demo import generate_demo

    summary = generate_demo(dest, seed=seed)
    counts = ", ".join(f"{c} {n}" for c, n in summary.counts.items())
    vendor = ", ".join(f"{c} {n}" for c, n in summary.vendor_counts.items())
    verb = "generated" if summary.generated else "already there"
    console.print(
        f"demo data {verb} in {summary.seconds:.1f}s: {summary.surfaces} ({counts}); "
        f"vendor drop {summary.vendor_drop} ({vendor}). Procedural demo data, not a benchmark.",
        highlight=False,
    )


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            err_console.print(f"--option: expected key=value, got {pair!r}")
            raise typer.Exit(2)
        lowered = value.lower()
        options[key] = {"true": True, "false": False}.get(lowered, value)
    return options


@data_app.command("import")
def data_import(
    format_name: Annotated[str, typer.Argument(metavar="FORMAT", help="Layout of SRC.")],
    src: Annotated[Path, typer.Argument(help="Folder holding the dataset.")],
    dest: Annotated[str, typer.Argument(metavar="DEST_URI", help="Store folder or s3:// URI.")],
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Format option key=value.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier import at DEST.")] = False,
) -> None:
    """Copy a dataset into the store as class folders with an index, refusing bad files."""
    from scarce.trainer.dataimport import import_dataset
    from scarce.trainer.datasets import DatasetError
    from scarce.trainer.store import StoreError

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err_console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done)

        try:
            summary = import_dataset(format_name, src, dest, options=_parse_options(option or []),
                                     overwrite=overwrite, progress=on_progress)
        except (DatasetError, StoreError, ValueError, FileExistsError) as error:
            progress.stop()
            err_console.print(f"[red]import refused:[/red] {escape(str(error))}", highlight=False)
            raise typer.Exit(1) from None
    console.print(summary.describe(), highlight=False, markup=False)


@data_app.command("inspect")
def data_inspect(
    uri: Annotated[str, typer.Argument(help="Dataset folder or s3:// URI.")],
    fmt: Annotated[str | None, typer.Option("--format", help="Layout (default: index.json "
                                             "if present, else imagefolder).")] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Format option key=value.")
    ] = None,
) -> None:
    """Print classes, counts, image sizes and mask coverage of a dataset."""
    from scarce.trainer.dataimport import describe_inspection, inspect_dataset
    from scarce.trainer.datasets import DatasetError
    from scarce.trainer.store import StoreError

    try:
        info = inspect_dataset(uri, fmt, _parse_options(option or []))
    except (DatasetError, StoreError, ValueError) as error:
        err_console.print(escape(str(error)), highlight=False)
        raise typer.Exit(1) from None
    console.print(describe_inspection(info), highlight=False, markup=False)


def main() -> None:
    """Entry point of `scarce`."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
