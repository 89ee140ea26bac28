"""Every file of a report, rendered from the report dict and the results it used.

`render_report_files` is pure (name -> bytes); `write_report_files` puts them into the store
(or any object with `put_bytes`). Files: report.json, report.md, report.html (self-contained,
figures embedded), per_seed.csv (one row per unit), all_classes.csv (every class in every
arm: nothing cherry-picked) and figures/*.png.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import pandas as pd

from scarce.trainer.figures import few_shot_figure, paired_seeds_figure
from scarce.trainer.report import TABLE_HEADER, render_markdown, table_rows


class _Sink(Protocol):
    def put_bytes(self, key: str, data: bytes, *, content_type: str = ...) -> str: ...


def per_seed_table(results: Iterable[Mapping[str, Any]], report: Mapping[str, Any]) -> pd.DataFrame:
    """One row per train unit: its config, hardest-class accuracy and every class's accuracy."""
    hardest = {ds["dataset"]: ds["hardestClass"] for ds in report["datasets"]}
    rows = []
    for result in results:
        unit = result["unit"]
        dataset = unit["datasets"][0]["name"]
        row = {
            "dataset": dataset,
            "arm": unit["arm"],
            "k": unit.get("k"),
            "seed": unit["seed"],
            "hardestClass": hardest.get(dataset),
            "hardestAccuracy": result["perClassAccuracy"].get(hardest.get(dataset)),
            "trainImages": result.get("trainImages"),
            "throughput": result.get("throughput"),
            "trainSeconds": result.get("timings", {}).get("train"),
            "splitDigest": result.get("splitDigest"),
        }
        row.update({f"acc_{c}": v for c, v in result["perClassAccuracy"].items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["k"] = frame["k"].astype("Int64")
    return frame.sort_values(["dataset", "arm", "k", "seed"], na_position="first").reset_index(
        drop=True
    )


def all_classes_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """Mean accuracy of every class in every arm (full training pool), per dataset."""
    rows = [
        {"dataset": ds["dataset"], "arm": arm, "class": cls, "meanAccuracy": v["mean"],
         "n": v["n"], "hardest": cls == ds["hardestClass"]}
        for ds in report["datasets"]
        for arm, classes in ds.get("allClasses", {}).items()
        for cls, v in classes.items()
    ]
    return pd.DataFrame(rows, columns=["dataset", "arm", "class", "meanAccuracy", "n", "hardest"])


def figures(report: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG figures by file name."""
    out = {}
    for ds in report["datasets"]:
        paired = paired_seeds_figure(ds)
        if paired:
            out[f"figures/{ds['dataset']}-paired-seeds.png"] = paired
        curve = few_shot_figure(ds)
        if curve:
            out[f"figures/{ds['dataset']}-few-shot.png"] = curve
    return out


def render_html(report: Mapping[str, Any], markdown_tables: str, pngs: Mapping[str, bytes]) -> str:
    """A self-contained HTML page: Table 1, verdicts, the supplementary table, figures inline."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in table_rows(report)
    )
    verdicts = "".join(
        f"<li><b>{html.escape(ds['dataset'])}</b> / {html.escape(c['arm'])}: "
        f"{html.escape(str(c.get('verdict')))}</li>"
        for ds in report["datasets"] for c in ds["comparisons"] if c["baseline"] == "real"
    )
    images = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode()}'/><figcaption>{html.escape(name)}</figcaption>"
        "</figure>"
        for name, data in sorted(pngs.items())
    )
    title = f"SCARCE report: {html.escape(report['benchmark'])}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}}
figure{{display:inline-block;margin:.5rem}}pre{{white-space:pre-wrap}}</style></head><body>
<h1>{title}</h1>
<p>{html.escape(report['statistic'])}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Verdicts</h2><ul>{verdicts}</ul>
<h2>Figures</h2>{images}
<h2>Details</h2><pre>{html.escape(markdown_tables)}</pre>
</body></html>
"""


def render_report_files(
    report: Mapping[str, Any],
    results: Iterable[Mapping[str, Any]],
    extra_pngs: Mapping[str, bytes] | None = None,
) -> dict[str, bytes]:
    """Every report file by name (relative to the report folder); `extra_pngs` are figures the
    reducer drew from the store (Figure 1 needs the shards' pixels, not just the report)."""
    results = list(results)
    classes = all_classes_table(report)
    per_seed = per_seed_table(results, report)
    pngs = {**figures(report), **(extra_pngs or {})}
    markdown = render_markdown(dict(report), classes)
    files = {
        "report.json": (json.dumps(report, indent=2, sort_keys=True) + "\n").encode(),
        "report.md": markdown.encode(),
        "report.html": render_html(report, markdown, pngs).encode(),
        "per_seed.csv": _csv(per_seed),
        "all_classes.csv": _csv(classes),
    }
    files.update(pngs)
    return files


def _csv(frame: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.6g")
    return buffer.getvalue().encode()


_CONTENT_TYPES = {".json": "application/json", ".md": "text/markdown", ".html": "text/html",
                  ".csv": "text/csv", ".png": "image/png"}


def write_report_files(
    sink: _Sink,
    prefix: str,
    report: Mapping[str, Any],
    results: Iterable[Mapping[str, Any]],
    extra_pngs: Mapping[str, bytes] | None = None,
) -> list[str]:
    """Write every file under `prefix`; report.json last, so its presence means complete."""
    files = render_report_files(report, results, extra_pngs)
    keys = []
    for name in sorted(files, key=lambda n: n == "report.json"):
        suffix = name[name.rfind("."):]
        key = f"{prefix}/{name}"
        content_type = _CONTENT_TYPES.get(suffix, "application/octet-stream")
        sink.put_bytes(key, files[name], content_type=content_type)
        keys.append(key)
    return keys
