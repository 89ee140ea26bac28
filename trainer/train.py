"""One training unit: train a timm backbone for one dataset × arm × seed (× k), evaluate every
class on the frozen split, and return a self-describing result.

Written like torchvision's reference script: `create_model`, `train_one_epoch`, `evaluate` and
`run_train_unit`. Data stays as uint8 tensors for the whole run (decoded once by the split
unit); augmentation works on batches of tensors, on the training device.
"""

from __future__ import annotations

import io
import math
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scarce.trainer.config import REAL_ARM, AugmentationConfig, ModelConfig, ScheduleConfig
from scarce.trainer.data import UnitData, assemble
from scarce.trainer.store import Store, open_store
from scarce.trainer.unit import WorkUnit, extractor_weights_key

#: Inputs are scaled from uint8 to about [-2, 2]; one constant for every dataset keeps the
#: comparison between arms free of per-arm statistics.
_MEAN, _STD = 0.5, 0.25


def seed_everything(seed: int) -> None:
    """Make the run a function of the seed (bit-identical on CPU, see DESIGN.md invariants)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
    # Deterministic mode also NaN-fills every torch.empty*, a guard against ops that read
    # uninitialised memory (none of ours do); it cost 1-3% of a CPU training step, and results
    # stay bit-identical without it (docs/performance.md).
    torch.utils.deterministic.fill_uninitialized_memory = False


def create_model(config: ModelConfig, num_classes: int, store: Store | None = None) -> nn.Module:
    """Build the timm backbone; pretrained weights come from the store, never the internet."""
    import timm

    try:
        model = timm.create_model(
            config.backbone, pretrained=False, num_classes=num_classes, in_chans=config.channels
        )
    except RuntimeError as error:  # timm raises RuntimeError for unknown names
        raise ValueError(f"model.backbone: unknown timm model {config.backbone!r}") from error
    if config.pretrained and config.weights_uri:
        load_pretrained(model, config.weights_uri, store)
    return model


def load_pretrained(model: nn.Module, weights_uri: str, store: Store | None) -> None:
    """Load a state_dict from the store, skipping the classifier when its shape differs."""
    if "://" in weights_uri or store is None:
        source, key = open_store(weights_uri.rsplit("/", 1)[0]), weights_uri.rsplit("/", 1)[1]
    else:
        source, key = store, weights_uri
    state = torch.load(io.BytesIO(source.get_bytes(key)), map_location="cpu", weights_only=True)
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(compatible, strict=False)


#: Columns of the per-sample augmentation parameters: hflip, vflip (0/1), quarter turns (0-3),
#: contrast scale and brightness shift (neutral: 1 and 0 when the augmentation is off).
_HFLIP, _VFLIP, _TURNS, _SCALE, _SHIFT = range(5)


def draw_augmentation(n: int, config: AugmentationConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample augmentation parameters [n, 5] (float32, on the CPU) for one batch.

    The draws come from `gen` in a fixed order, so drawing every batch of an epoch up front
    gives the same numbers as drawing each batch when it is used.
    """
    params = torch.zeros(n, 5)
    params[:, _SCALE] = 1.0
    if config.hflip:
        params[:, _HFLIP] = (torch.rand(n, generator=gen) < 0.5).float()
    if config.vflip:
        params[:, _VFLIP] = (torch.rand(n, generator=gen) < 0.5).float()
    if config.rotate90:
        params[:, _TURNS] = torch.randint(0, 4, (n,), generator=gen).float()
    if config.contrast > 0:
        params[:, _SCALE] = 1 + (torch.rand(n, generator=gen) * 2 - 1) * config.contrast
    if config.brightness > 0:
        params[:, _SHIFT] = (torch.rand(n, generator=gen) * 2 - 1) * config.brightness
    return params


def apply_augmentation(
    batch: torch.Tensor, params: torch.Tensor, config: AugmentationConfig
) -> torch.Tensor:
    """Random flips, 90° rotations and brightness/contrast jitter on a float batch [B,C,H,W],
    with parameters from `draw_augmentation` already on the batch's device."""
    n = batch.shape[0]

    def column(index: int) -> torch.Tensor:
        return params[:, index].view(n, 1, 1, 1)

    if config.hflip:
        batch = torch.where(column(_HFLIP) > 0, batch.flip(3), batch)
    if config.vflip:
        batch = torch.where(column(_VFLIP) > 0, batch.flip(2), batch)
    if config.rotate90 and batch.shape[2] == batch.shape[3]:
        turns = column(_TURNS)
        rotated = batch
        for k in (1, 2, 3):
            rotated = torch.where(turns == k, torch.rot90(batch, k, (2, 3)), rotated)
        batch = rotated
    if config.contrast > 0:
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        batch = (batch - mean) * column(_SCALE) + mean
    if config.brightness > 0:
        batch = batch + column(_SHIFT)
    return batch


def augment(batch: torch.Tensor, config: AugmentationConfig, gen: torch.Generator) -> torch.Tensor:
    """Draw one batch's parameters and apply them (the per-batch form of the two above)."""
    params = draw_augmentation(batch.shape[0], config, gen).to(batch.device)
    return apply_augmentation(batch, params, config)


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 [B,C,H,W] -> normalised float on the device."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    x = (x - _MEAN) / _STD
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def create_optimizer(model: nn.Module, schedule: ScheduleConfig) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum; no weight decay on norms and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": schedule.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if schedule.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=schedule.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=schedule.lr)


def cosine_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up then cosine decay to zero, as a LambdaLR factor of the step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    schedule: ScheduleConfig,
    gen: torch.Generator,
    device: torch.device,
    on_first_step: Any = None,
) -> float:
    """One pass in a seeded order; returns the mean loss."""
    model.train()
    order = torch.randperm(len(images), generator=gen)
    starts = [
        start for start in range(0, len(order), schedule.batch_size)
        # a batch of one breaks batch norm
        if min(schedule.batch_size, len(order) - start) >= 2 or len(order) == 1
    ]
    # Every random number of the epoch is drawn here, in the order the batches use them, and
    # moved to the device in two copies: a host-to-device copy per batch would make the CPU
    # wait for the GPU at every step, so it could never queue the next step's kernels ahead.
    params = torch.cat([
        draw_augmentation(min(schedule.batch_size, len(order) - start), schedule.augmentation,
                          gen)
        for start in starts
    ]) if starts else torch.zeros(0, 5)
    order = order.to(images.device, non_blocking=True)
    params = params.to(device, non_blocking=True)
    # The running loss stays on the device: float(loss) every step would sync a GPU each step.
    total, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    autocast = schedule.precision == "bf16" and device.type == "cuda"
    offset = 0
    for start in starts:
        index = order[start : start + schedule.batch_size]
        batch_params = params[offset : offset + len(index)]
        offset += len(index)
        x = apply_augmentation(to_input(images[index], device, schedule.channels_last),
                               batch_params, schedule.augmentation)
        y = labels[index].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y, label_smoothing=schedule.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if on_first_step is not None:
            on_first_step()
            on_first_step = None
        total += loss.detach().double() * len(index)
        seen += len(index)
    return float(total) / max(1, seen)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    device: torch.device,
    batch_size: int,
    channels_last: bool = False,
) -> np.ndarray:
    """Confusion matrix [true, predicted] on the evaluation images."""
    model.eval()
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size], device, channels_last)
        predicted = model(x).argmax(dim=1).cpu().numpy()
        truth = labels[start : start + batch_size].numpy()
        np.add.at(matrix, (truth, predicted), 1)
    return matrix


def per_class_recall(matrix: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """Accuracy (recall) of every class in percent; None for a class with no evaluation image."""
    support = matrix.sum(axis=1)
    return {
        c: (round(100.0 * matrix[i, i] / support[i], 6) if support[i] else None)
        for i, c in enumerate(classes)
    }


def save_extractor_weights(model: nn.Module, unit: WorkUnit, store: Store) -> dict[str, str]:
    """Save the real-only seed-0 model, the fidelity stage's feature extractor (written before
    the unit's result, atomically by the store); returns its key and sha256."""
    key = extractor_weights_key(unit.benchmark, unit.dataset.name)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return {"key": key, "sha256": store.put_bytes(key, buffer.getvalue())}


def run_train_unit(unit: WorkUnit, store: Store, *, device: str = "cpu") -> dict[str, Any]:
    """Train and evaluate one unit; returns the result body (the caller writes it)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if unit.threads:
        torch.set_num_threads(unit.threads)
    seed = unit.seed or 0
    seed_everything(seed)
    data: UnitData = assemble(store, unit)
    timings["load"] = time.perf_counter() - clock

    torch_device = torch.device(device)
    model = create_model(unit.model, len(data.classes), store).to(torch_device)
    if unit.schedule.channels_last:
        model = model.to(memory_format=torch.channels_last)
    schedule = unit.schedule
    steps_per_epoch = max(1, math.ceil(len(data.train_images) / schedule.batch_size))
    total_steps = steps_per_epoch * schedule.epochs
    optimizer = create_optimizer(model, schedule)
    warmup = int(schedule.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(total_steps, warmup))
    timings["build"] = time.perf_counter() - clock - timings["load"]

    images = torch.from_numpy(data.train_images)
    labels = torch.from_numpy(data.train_labels)
    if torch_device.type == "cuda":
        images, labels = images.to(torch_device), labels.to(torch_device)
    gen = torch.Generator().manual_seed(seed)
    first_step: dict[str, float] = {}
    train_start = time.perf_counter()
    losses = []
    for _ in range(schedule.epochs):
        losses.append(
            train_one_epoch(
                model, images, labels,
                optimizer=optimizer, scheduler=scheduler, schedule=schedule,
                gen=gen, device=torch_device,
                on_first_step=None if first_step else
                (lambda: first_step.setdefault("at", time.perf_counter())),
            )
        )
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    timings["train"] = time.perf_counter() - train_start
    timings["firstStep"] = first_step.get("at", time.perf_counter()) - clock

    eval_start = time.perf_counter()
    matrix = evaluate(
        model, torch.from_numpy(data.eval_images), torch.from_numpy(data.eval_labels),
        len(data.classes), device=torch_device, batch_size=max(64, schedule.batch_size),
        channels_last=schedule.channels_last,
    )
    timings["eval"] = time.perf_counter() - eval_start
    trained = len(data.train_images) * schedule.epochs
    extra = {}
    if unit.stage == "train" and unit.arm == REAL_ARM and unit.seed == 0 and unit.k is None:
        extra["extractorWeights"] = save_extractor_weights(model, unit, store)
    return {
        **extra,
        "classes": data.classes,
        "perClassAccuracy": per_class_recall(matrix, data.classes),
        "confusionMatrix": matrix.tolist(),
        "evalRole": data.eval_role,
        "evalCounts": dict(zip(data.classes, matrix.sum(axis=1).tolist(), strict=True)),
        "trainComposition": data.composition,
        "trainImages": len(data.train_images),
        "finalLoss": round(losses[-1], 6) if losses else None,
        "throughput": round(trained / timings["train"], 3) if timings["train"] > 0 else None,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "device": str(torch_device),
        "threads": torch.get_num_threads(),
    }
