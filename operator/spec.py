"""The `ScarceBenchmark` spec model (apiVersion scarce.dev/v1alpha1): the single source of truth.

The same YAML is read by `scarce run` on one machine and by the operator on a cluster; the CRD
schema is generated from these models. Unknown fields are errors, and every error message names
the field path and the bad value, e.g. ``spec.datasets[1].split.testFraction: must be in
(0, 1), got 1.5``.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from scarce.trainer.config import (
    PLACEBO_ARM,
    REAL_ARM,
    ConfigModel,
    DatasetConfig,
    LeakageConfig,
    ModelConfig,
    ScheduleConfig,
    SyntheticConfig,
    VerdictConfig,
    check_name,
    check_uri,
)
from scarce.trainer.unit import StorageConfig

API_VERSION = "scarce.dev/v1alpha1"
KIND = "ScarceBenchmark"

#: The report's minimum number of seeds (§3.4); fewer is allowed but warned about.
RECOMMENDED_MIN_SEEDS = 7


class SpecError(ValueError):
    """A spec that cannot be used; `messages` holds one ``path: problem, got value`` line each."""

    def __init__(self, messages: list[str], source: str | None = None) -> None:
        self.messages = messages
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "invalid spec:\n" + "\n".join(f"  {m}" for m in messages))


class CredentialsSpec(ConfigModel):
    """Where S3 credentials come from. Values never appear in a spec."""

    secret_name: str | None = Field(
        None,
        description="Kubernetes Secret holding the keys (cluster runs). Local runs read "
        "SCARCE_S3_ACCESS_KEY / SCARCE_S3_SECRET_KEY (or AWS_*) from the environment.",
    )
    access_key_key: str = Field("accessKey", description="Key of the access key in the Secret.")
    secret_key_key: str = Field("secretKey", description="Key of the secret key in the Secret.")


class StorageSpec(StorageConfig):
    """The object store every unit reads and writes."""

    credentials: CredentialsSpec = Field(default_factory=CredentialsSpec)

    @field_validator("uri")
    @classmethod
    def _supported_uri(cls, value: str) -> str:
        return check_uri(value)

    def unit_storage(self) -> StorageConfig:
        """The part of the storage config that travels in work units (no credentials)."""
        return StorageConfig(uri=self.uri, endpoint=self.endpoint, secure=self.secure)


#: A Kubernetes resource quantity (``500m``, ``2``, ``8Gi``, ``1.5``); the apiserver rejects
#: anything else when the Job is created, so the spec rejects it first, naming the field.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
#: A DNS-1123 subdomain: Secret, ServiceAccount and PriorityClass names.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

DnsName = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]


class TolerationSpec(ConfigModel):
    """A pod toleration, as in a Pod spec (lets trainer pods run on tainted GPU nodes)."""

    key: str | None = Field(
        None, max_length=253, description="Taint key to tolerate; empty with operator Exists "
        "tolerates every taint."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        None, description="Exists or Equal (the Kubernetes default when omitted)."
    )
    value: str | None = Field(
        None, max_length=63, description="Taint value to match (operator Equal)."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; omitted matches every effect."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="NoExecute only: how long the pod stays bound after the taint "
        "appears."
    )

    def to_k8s(self) -> dict[str, Any]:
        """The toleration as it goes into a Pod spec (unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class JobsSpec(ConfigModel):
    """Shape of the Kubernetes Jobs the operator creates (ignored by `scarce run`).

    Fields left unset fall back to the operator's defaults (its SCARCE_TRAINER_DEFAULTS
    setting, see docs/kubernetes.md); a field set here replaces the default as a whole.
    """

    image: str | None = Field(
        None, max_length=512, description="Trainer image for every Job of this benchmark. "
        "Default: the operator's SCARCE_TRAINER_IMAGE."
    )
    gpu: int = Field(
        0, ge=0, le=16, description="GPUs per pilot, train and fidelity Job (requested and "
        "limited; the resource name is the operator's SCARCE_GPU_RESOURCE). Split and reducer "
        "Jobs never get a GPU. With gpu > 0 the trainer runs with SCARCE_DEVICE=cuda."
    )
    cpu: str = Field(
        "2", pattern=QUANTITY_PATTERN, max_length=32,
        description="CPU per Job, requested and limited (a Kubernetes quantity: 2, 500m).",
    )
    memory: str = Field(
        "8Gi", pattern=QUANTITY_PATTERN, max_length=32,
        description="Memory per Job, requested and limited (a Kubernetes quantity: 8Gi).",
    )
    node_selector: dict[str, str] | None = Field(
        None, max_length=32, description="Node labels a trainer pod must match."
    )
    tolerations: list[TolerationSpec] | None = Field(
        None, max_length=32, description="Taints trainer pods tolerate (e.g. GPU nodes)."
    )
    priority_class_name: DnsName | None = Field(
        None, description="PriorityClass of trainer pods."
    )
    image_pull_secrets: list[DnsName] | None = Field(
        None, max_length=16, description="Names of Secrets to pull the trainer image with."
    )
    service_account_name: DnsName | None = Field(
        None, description="ServiceAccount of split, pilot, train and fidelity pods. Default: "
        "the operator's SCARCE_TRAINER_SERVICE_ACCOUNT. The reducer always runs as "
        "SCARCE_REDUCER_SERVICE_ACCOUNT (it may patch this benchmark's status)."
    )
    backoff_limit: int = Field(
        2, ge=0, le=20, description="Retries of a Job after a transient failure (exit code "
        "1, a killed pod). A permanent failure (exit code 2 or 3) is never retried; a pod "
        "evicted by a disruption does not count."
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Wall-clock limit of one Job, retries included; a Job past it "
        "fails. Default: no limit."
    )
    ttl_seconds_after_finished: int = Field(
        86_400, ge=0, le=31_536_000, description="Seconds a finished Job (and its pod logs) is "
        "kept once its outcome is recorded in the status; Jobs are deleted with the benchmark "
        "in any case."
    )


class BenchmarkSpec(ConfigModel):
    """What to measure: datasets, synthetic sources, arms, seeds, backbone and schedule."""

    storage: StorageSpec = Field(description="Object store for splits, results and reports.")
    datasets: list[DatasetConfig] = Field(min_length=1, description="Datasets to benchmark.")
    synthetic: list[SyntheticConfig] = Field(
        default_factory=list, description="Synthetic sources; each one is a synthetic arm."
    )
    arms: list[str] | None = Field(
        None,
        description="Arms to train: real, placebo and synthetic source names. Default: real, "
        "placebo (when there is a synthetic source) and every synthetic source.",
    )
    seeds: int = Field(
        ge=2, le=1000, description="Seeds per arm (0..seeds-1), compared paired by seed; 7-15."
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Backbone.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Schedule.")
    few_shot: list[int] = Field(
        default_factory=list,
        description="Few-shot study: real labels per class k (e.g. [2, 3, 5]); real and every "
        "synthetic arm are trained at each k with nested subsets.",
    )
    parallelism: int = Field(
        1, ge=1, le=10_000, description="Units running at once at most (on a cluster: Jobs, "
        "each running one unit or a pack of seedsPerJob seeds)."
    )
    seeds_per_job: int = Field(
        1, ge=1, le=100, description="Seed packing: train units of the same dataset, arm and "
        "k run this many seeds, in seed order, in one Job (one process, one model load), to "
        "save pod start-up and data loading on small units."
    )
    min_pairs: int = Field(
        RECOMMENDED_MIN_SEEDS, ge=2, le=1000, description="Fewest seed pairs (arm vs real) a "
        "dataset needs for the benchmark to succeed when units fail; capped at seeds. Below "
        "it the benchmark ends Failed, at or above it Succeeded (Degraded when pairs are "
        "missing). Default: 7, the report's minimum."
    )
    jobs: JobsSpec = Field(
        default_factory=JobsSpec,
        description="Kubernetes Jobs: image, resources, scheduling, retries (cluster only).",
    )
    suspend: bool = Field(
        False,
        description="Pause the benchmark: no new unit is started; running units finish. "
        "Set it back to false to go on.",
    )
    queue_name: str | None = Field(
        None,
        max_length=63,  # it becomes a label value
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Kueue LocalQueue to submit to: Jobs are created suspended with the "
        "kueue.x-k8s.io/queue-name label, and Kueue admits them. Default: no queue.",
    )
    pilot_seeds: int = Field(
        3, ge=1, le=100, description="Seeds of the pilot stage (hardestClass: auto)."
    )
    leakage: LeakageConfig = Field(
        default_factory=LeakageConfig, description="Leakage check before training."
    )
    verdict: VerdictConfig = Field(
        default_factory=VerdictConfig, description="Thresholds of the verdicts in the report."
    )
    placebo_matches: str | None = Field(
        None,
        description="Synthetic source whose per-class image counts the placebo arm copies "
        "(default: the first synthetic source).",
    )

    @field_validator("datasets")
    @classmethod
    def _unique_datasets(cls, value: list[DatasetConfig]) -> list[DatasetConfig]:
        _no_duplicates([d.name for d in value], "dataset names")
        return value

    @field_validator("synthetic")
    @classmethod
    def _unique_sources(cls, value: list[SyntheticConfig]) -> list[SyntheticConfig]:
        _no_duplicates([s.name for s in value], "synthetic source names")
        return value

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, value: list[str] | None, info: Any) -> list[str] | None:
        if value is None or "synthetic" not in info.data:
            return value  # an invalid synthetic list is reported on its own, not as arm errors
        sources = [s.name for s in info.data["synthetic"]]
        allowed = [REAL_ARM, PLACEBO_ARM, *sources]
        for arm in value:
            if arm not in allowed:
                raise ValueError(
                    f"unknown arm {arm!r}; an arm is real, placebo or a synthetic source "
                    f"name ({', '.join(allowed)})"
                )
        _no_duplicates(value, "arms")
        if REAL_ARM not in value:
            raise ValueError(f"the real arm is required (it is every comparison's baseline), "
                             f"got {value}")
        if PLACEBO_ARM in value and not sources:
            raise ValueError("the placebo arm needs at least one synthetic source to match")
        return value

    @field_validator("few_shot")
    @classmethod
    def _valid_few_shot(cls, value: list[int]) -> list[int]:
        for k in value:
            if k < 1:
                raise ValueError(f"every k must be at least 1, got {k}")
        _no_duplicates(value, "fewShot values")
        return sorted(value)

    @field_validator("placebo_matches")
    @classmethod
    def _known_source(cls, value: str | None, info: Any) -> str | None:
        if "synthetic" not in info.data:
            return value
        sources = [s.name for s in info.data["synthetic"]]
        if value is not None and value not in sources:
            raise ValueError(
                f"must name a synthetic source ({', '.join(sources) or 'none declared'}), "
                f"got {value!r}"
            )
        return value

    @property
    def resolved_arms(self) -> list[str]:
        """The arms to train, defaults applied, in a stable order (real first)."""
        if self.arms is not None:
            return [REAL_ARM, *[a for a in self.arms if a != REAL_ARM]]
        sources = [s.name for s in self.synthetic]
        return [REAL_ARM, *([PLACEBO_ARM] if sources else []), *sources]

    @property
    def effective_min_pairs(self) -> int:
        """Pairs a dataset needs: minPairs, but never more than the seeds asked for."""
        return min(self.min_pairs, self.seeds)

    @property
    def placebo_source(self) -> str | None:
        """The synthetic source the placebo arm matches in size."""
        if self.placebo_matches:
            return self.placebo_matches
        return self.synthetic[0].name if self.synthetic else None


def _no_duplicates(values: list[Any], what: str) -> None:
    seen = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} must be unique, {value!r} appears twice")
        seen.add(value)


class Metadata(BaseModel):
    """Kubernetes object metadata; only `name` matters to SCARCE, the rest is passed through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    namespace: str | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)


class ScarceBenchmark(ConfigModel):
    """A whole benchmark document, as in a YAML file or a Kubernetes object."""

    api_version: Literal["scarce.dev/v1alpha1"]
    kind: Literal["ScarceBenchmark"]
    metadata: Metadata
    spec: BenchmarkSpec
    status: dict[str, Any] | None = Field(None, description="Written by the operator.")

    @property
    def name(self) -> str:
        """The benchmark's name (metadata.name)."""
        return self.metadata.name


# --- error messages ---------------------------------------------------------------------------


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _unwrap(annotation: Any) -> Any:
    """The model class inside list[...] / X | None annotations, or None."""
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found is not None:
                return found
        return None
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_model else None


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Aliases of the fields allowed at the parent of `loc` (for did-you-mean hints)."""
    model: Any = ScarceBenchmark
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next(
            (f for n, f in model.model_fields.items() if (f.alias or n) == part or n == part),
            None,
        )
        model = _unwrap(field.annotation) if field else None
        if model is None:
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_error(error: dict[str, Any]) -> str:
    """One pydantic error as ``path: problem, got value``."""
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx") or {}
    got = error.get("input")
    if kind == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{_path(loc)}: unknown field{suggestion}"
    if kind == "missing":
        return f"{_path(loc)}: required field is missing"
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        return f"{_path(loc)}: {message}"
    templates = {
        "greater_than_equal": "must be at least {ge}",
        "less_than_equal": "must be at most {le}",
        "greater_than": "must be greater than {gt}",
        "less_than": "must be less than {lt}",
        "too_short": "must have at least {min_length} item(s)",
        "too_long": "must have at most {max_length} item(s)",
        "literal_error": "must be one of {expected}",
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "model_type": "must be a mapping",
        "dict_type": "must be a mapping",
    }
    template = templates.get(kind)
    problem = template.format(**ctx) if template else error["msg"][0].lower() + error["msg"][1:]
    return f"{_path(loc)}: {problem}, got {_shown(got)}"


def validate_document(document: Any, *, source: str | None = None) -> ScarceBenchmark:
    """Validate a parsed YAML/JSON document; raise SpecError with field-path messages."""
    if not isinstance(document, dict):
        raise SpecError([f"(document): must be a mapping, got {_shown(document)}"], source)
    try:
        return ScarceBenchmark.model_validate(document)
    except ValidationError as error:
        raise SpecError([describe_error(e) for e in error.errors()], source) from None


def spec_warnings(benchmark: ScarceBenchmark) -> list[str]:
    """Things that are allowed but weaken the measurement."""
    spec = benchmark.spec
    warnings = []
    if spec.seeds < RECOMMENDED_MIN_SEEDS:
        warnings.append(
            f"spec.seeds: {spec.seeds} seeds is below the report's minimum of "
            f"{RECOMMENDED_MIN_SEEDS}; paired comparisons will be weak"
        )
    return warnings


def cluster_problems(benchmark: ScarceBenchmark) -> list[str]:
    """What a valid spec cannot do on a cluster, as ``path: problem, got value`` lines.

    A relative path means "next to the spec file" for `scarce run`; a cluster has no spec
    file, so every location must be absolute (s3://, or file:/// for a volume mounted at the
    same path in every pod).
    """
    spec = benchmark.spec
    locations = [("spec.storage.uri", spec.storage.uri)]
    locations += [(f"spec.datasets[{i}].source", d.source) for i, d in enumerate(spec.datasets)]
    locations += [
        (f"spec.synthetic[{i}].uri", s.uri) for i, s in enumerate(spec.synthetic) if s.uri
    ]
    if spec.model.weights_uri:
        locations.append(("spec.model.weightsUri", spec.model.weights_uri))
    return [
        f"{path}: a relative path has no meaning on a cluster; use s3://bucket/prefix (or "
        f"file:///absolute/path on a volume every pod mounts), got {_shown(value)}"
        for path, value in locations
        if not value.startswith(("s3://", "file:///"))
    ]


def load_spec(path: Path) -> ScarceBenchmark:
    """Read and validate a spec file; errors name the file, field path and value."""
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError([f"cannot read the file: {error.strerror}"], str(path)) from None
    except UnicodeDecodeError as error:
        raise SpecError(
            [f"not a UTF-8 text file (byte {error.start}: {error.reason})"], str(path)
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError([f"{where}not valid YAML ({getattr(error, 'problem', error)})"],
                        str(path)) from None
    return validate_document(document, source=str(path))
