"""Report figures as PNG bytes (matplotlib, headless): the few-shot curve of report Figure 2 and
the paired per-seed plot behind every Table 1 row."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reducers run in containers without a display

import matplotlib.pyplot as plt

_COLORS = {"real": "#4d4d4d", "placebo": "#9e9e9e"}
_CYCLE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]


def _color(arm: str, index: int) -> str:
    return _COLORS.get(arm, _CYCLE[index % len(_CYCLE)])


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    # Fixed metadata keeps the bytes identical between runs (no timestamp in the PNG).
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def few_shot_figure(dataset: dict[str, Any]) -> bytes | None:
    """Hardest-class accuracy against real labels per class k, one curve per arm (Figure 2).

    With a label saving, a dashed guide marks where the real-only curve reaches the synthetic
    arm's accuracy at the smallest k.
    """
    curves = dataset.get("fewShot")
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for index, (arm, by_k) in enumerate(curves.get("curves", {}).items()):
        ks = sorted(int(k) for k in by_k)
        means = [by_k[str(k)]["mean"] for k in ks]
        ax.plot(ks, means, marker="o", color=_color(arm, index),
                label="real only" if arm == "real" else f"real + {arm}")
    for saving in curves.get("labelSaving", []):
        if saving.get("reached"):
            y = saving["syntheticAccuracy"]
            ax.hlines(y, saving["kMin"], saving["kEquivalent"], linestyles="dashed",
                      colors="#555555", linewidth=1)
            ax.annotate(
                f"{saving['arm']}: k={saving['kMin']} ≈ real k={saving['kEquivalent']:.2f} "
                f"({saving['savingPercent']:.1f}% fewer labels)",
                (saving["kEquivalent"], y), textcoords="offset points", xytext=(-10, 8),
                ha="right", fontsize=8,
            )
    ax.set_xlabel("real labels per class (k)")
    ax.set_ylabel(f"{dataset['hardestClass']} accuracy (%)")
    ax.set_title(f"Few-shot data efficiency: {dataset['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def paired_seeds_figure(dataset: dict[str, Any]) -> bytes | None:
    """Per-seed hardest-class accuracy of every arm, seeds joined by lines (the pairing)."""
    arms = dataset.get("arms") or {}
    if not arms:
        return None
    names = list(arms)
    seeds = sorted({int(s) for a in arms.values() for s in a["perSeed"]})
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(names), 3.8))
    for seed in seeds:
        ys = [arms[a]["perSeed"].get(str(seed)) for a in names]
        xs = [i for i, y in enumerate(ys) if y is not None]
        ax.plot(xs, [ys[i] for i in xs], color="#bbbbbb", linewidth=0.8, zorder=1)
    for index, arm in enumerate(names):
        values = list(arms[arm]["perSeed"].values())
        ax.scatter([index] * len(values), values, color=_color(arm, index), zorder=2, s=18)
        if arms[arm].get("mean") is not None:
            ax.hlines(arms[arm]["mean"], index - 0.25, index + 0.25, colors="black", zorder=3)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"{dataset['hardestClass']} accuracy (%)")
    ax.set_title(f"{dataset['dataset']}: paired by seed (n = {len(seeds)})")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def fidelity_figure(rows: list[dict[str, Any]]) -> bytes | None:
    """Report Figure 1: one row per synthetic image, [synthetic | its mask | nearest real defect],
    with the feature-space cosine between the two printed.

    Each row holds ``source``, ``label``, ``synthetic`` and ``real`` (uint8 ``[C, S, S]``),
    ``mask`` (uint8 ``[S, S]`` or None: the source ships none) and ``cosine``; optional
    ``syntheticName`` and ``realName`` caption the images. The rows are chosen by similarity
    (see `scarce.trainer.fidelity`), never by hand.
    """
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.3 * len(rows)), squeeze=False,
                             layout="constrained")
    for row, (ax_synth, ax_mask, ax_real) in zip(rows, axes, strict=True):
        _show(ax_synth, row["synthetic"])
        if row.get("mask") is not None:
            ax_mask.imshow(row["mask"], cmap="gray", vmin=0, vmax=255)
        else:
            ax_mask.text(0.5, 0.5, "no mask\nshipped", ha="center", va="center", fontsize=8)
        _show(ax_real, row["real"])
        ax_synth.set_title(f"{row['source']} · {row['label']}", fontsize=8)
        ax_mask.set_title("its mask", fontsize=8)
        ax_real.set_title(f"nearest real defect · cos {row['cosine']:.3f}", fontsize=8)
        ax_synth.set_xlabel(_short(row.get("syntheticName")), fontsize=6)
        ax_real.set_xlabel(_short(row.get("realName")), fontsize=6)
        for ax in (ax_synth, ax_mask, ax_real):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Synthetic images beside their nearest real defect (feature-space cosine)",
                 fontsize=9)
    return _png(fig)


def _show(ax: Any, image: Any) -> None:
    """Draw a uint8 [C, S, S] image: grey for one channel, RGB for three."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image.transpose(1, 2, 0))


def _short(name: str | None, limit: int = 40) -> str:
    if not name:
        return ""
    return name if len(name) <= limit else "…" + name[-(limit - 1):]
