"""Spec -> work units: split, pilot, train, fidelity and reduce, with deterministic keys (pure,
no I/O).

The same plan drives the local executor and the Kubernetes operator. Units of the pilot, train
and fidelity stages need the split digest, known only once the split stage has run; `bind_digests`
fills it in. Relative paths in the spec are resolved against the spec file's folder here, so
every unit is self-contained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scarce.operator.spec import ScarceBenchmark
from scarce.trainer.config import AUTO, PLACEBO_ARM, REAL_ARM, DatasetConfig, SyntheticConfig
from scarce.trainer.unit import StorageConfig, WorkUnit


@dataclass(frozen=True)
class Plan:
    """All units of a benchmark, by stage, in execution order."""

    benchmark: str
    split: list[WorkUnit]
    pilot: list[WorkUnit]
    train: list[WorkUnit]
    reduce: WorkUnit
    #: One unit per dataset with synthetic sources: Figure 1's similarity of each synthetic
    #: image to real defects, in the features of the real-only model of seed 0 (after train).
    fidelity: list[WorkUnit] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: False for a plan cut short on purpose (`scarce run --stop-after split`): no report.
    reduce_enabled: bool = True

    @property
    def stages(self) -> list[tuple[str, list[WorkUnit]]]:
        """(stage name, units) in the order they must run."""
        return [
            ("split", self.split),
            ("pilot", self.pilot),
            ("train", self.train),
            ("fidelity", self.fidelity),
            ("reduce", [self.reduce] if self.reduce_enabled else []),
        ]

    def only_split(self) -> Plan:
        """The split stage alone: splits frozen and synthetic sets made, nothing trained."""
        return Plan(benchmark=self.benchmark, split=self.split, pilot=[], train=[],
                    reduce=self.reduce, fidelity=[], warnings=self.warnings, reduce_enabled=False)

    @property
    def total(self) -> int:
        """Number of units in the plan."""
        return (len(self.split) + len(self.pilot) + len(self.train) + len(self.fidelity)
                + int(self.reduce_enabled))


def resolve_uri(uri: str, base_dir: Path | None) -> str:
    """Absolute file:/// URI for a local path (relative to base_dir); other URIs unchanged."""
    if uri.startswith(("s3://", "file:///")):
        return uri
    path = Path(uri).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return "file://" + str(path.resolve())


def plan_benchmark(benchmark: ScarceBenchmark, *, base_dir: Path | None = None) -> Plan:
    """Expand a validated spec into its units.

    Train units: dataset × arm × seed on the whole training pool, then, for the few-shot
    study, dataset × (real and every synthetic arm) × k × seed.
    """
    spec = benchmark.spec
    name = benchmark.name
    storage = spec.storage.unit_storage()
    storage = StorageConfig(
        uri=resolve_uri(storage.uri, base_dir), endpoint=storage.endpoint, secure=storage.secure
    )
    datasets = [
        d.model_copy(update={"source": resolve_uri(d.source, base_dir)}) for d in spec.datasets
    ]
    synthetic = [
        s.model_copy(update={"uri": resolve_uri(s.uri, base_dir) if s.uri else None})
        for s in spec.synthetic
    ]
    arms = spec.resolved_arms
    source_by_name = {s.name: s for s in synthetic}

    def arm_sources(arm: str) -> list[SyntheticConfig]:
        # The source an arm trains on is part of its unit, so changing a source invalidates
        # exactly the results that used it (and never the real arm's).
        if arm == PLACEBO_ARM:
            return [source_by_name[spec.placebo_source]] if spec.placebo_source else []
        return [source_by_name[arm]] if arm in source_by_name else []

    def unit(stage: str, dataset: DatasetConfig | None, **extra: object) -> WorkUnit:
        return WorkUnit(
            stage=stage,  # type: ignore[arg-type]
            benchmark=name,
            storage=storage,
            datasets=[dataset] if dataset else datasets,
            model=spec.model,
            schedule=spec.schedule,
            **extra,  # type: ignore[arg-type]
        )

    split = [
        unit("split", d, synthetic=_sources_for(d, synthetic), leakage=spec.leakage)
        for d in datasets
    ]
    # The pilot picks the class for hardestClass: auto; with a named class and a validation
    # split it still runs, so the report can warn when the pilot ranks another class lowest.
    pilot = [
        unit("pilot", d, arm=REAL_ARM, seed=seed)
        for d in datasets
        if d.hardest_class == AUTO or d.split.val_fraction > 0
        for seed in range(spec.pilot_seeds)
    ]
    train = []
    for d in datasets:
        for arm in arms:
            for seed in range(spec.seeds):
                train.append(
                    unit("train", d, arm=arm, seed=seed, synthetic=arm_sources(arm),
                         placebo_source=spec.placebo_source if arm == PLACEBO_ARM else None)
                )
        for k in spec.few_shot:
            for arm in [a for a in arms if a != PLACEBO_ARM]:
                for seed in range(spec.seeds):
                    train.append(
                        unit("train", d, arm=arm, seed=seed, k=k, synthetic=arm_sources(arm))
                    )
    # Same model and schedule as the real seed-0 unit whose weights it reads, so changing
    # either invalidates the fidelity result too; the leakage policy decides which sets exist.
    fidelity = [
        unit("fidelity", d, synthetic=_sources_for(d, synthetic), leakage=spec.leakage)
        for d in datasets
        if _sources_for(d, synthetic)
    ]
    reduce = unit(
        "reduce", None, arms=arms, seeds=spec.seeds, verdict=spec.verdict, few_shot=spec.few_shot
    )
    return Plan(
        benchmark=name, split=split, pilot=pilot, train=train, reduce=reduce, fidelity=fidelity
    )


def _sources_for(dataset: DatasetConfig, synthetic: list[SyntheticConfig]) -> list[SyntheticConfig]:
    # Every source applies to every dataset for now; a per-source dataset filter would go here.
    return list(synthetic)


def bind_digests(units: list[WorkUnit], digests: dict[str, str]) -> list[WorkUnit]:
    """Give every unit the split digest of its dataset (after the split stage ran)."""
    bound = []
    for u in units:
        digest = digests.get(u.dataset.name)
        if digest is None:
            raise KeyError(f"no split digest for dataset {u.dataset.name!r}")
        bound.append(u.model_copy(update={"split_digest": digest}))
    return bound


def pack_units(units: list[WorkUnit], seeds_per_job: int) -> list[list[WorkUnit]]:
    """Group units into the packs one Job (one trainer process) runs.

    Train units of the same dataset, arm and k are packed `seeds_per_job` at a time, in seed
    order, so a pack loads its data once; every other unit runs alone. Packs keep the order of
    their first unit in `units`, so the same plan always gives the same packs (and Job names).
    """
    if seeds_per_job < 1:
        raise ValueError(f"seeds_per_job must be at least 1, got {seeds_per_job}")
    first_index: dict[int, int] = {id(u): i for i, u in enumerate(units)}
    buckets: dict[tuple[str, str | None, int | None], list[WorkUnit]] = {}
    packs: list[list[WorkUnit]] = []
    for unit in units:
        if unit.stage == "train":
            buckets.setdefault((unit.dataset.name, unit.arm, unit.k), []).append(unit)
        else:
            packs.append([unit])
    for bucket in buckets.values():
        ordered = sorted(bucket, key=lambda u: u.seed or 0)
        packs += [ordered[i:i + seeds_per_job] for i in range(0, len(ordered), seeds_per_job)]
    return sorted(packs, key=lambda pack: min(first_index[id(u)] for u in pack))
