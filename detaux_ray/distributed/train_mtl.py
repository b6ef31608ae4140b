"""Stage 3 on Ray Train: STL or a multi-task model on (image, principal, auxiliary), principal accuracy on the
held-out split each epoch, checkpoint every epoch, resume, TensorBoard on rank 0."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.train
import ray.train.torch
import torch
from torch.utils.tensorboard import SummaryWriter

from ..auxlearn import LEARNERS, AuxLabelLearner, build_learner
from ..auxlearn import train_loss as learner_loss
from ..config import Config
from ..models import autocast, count_parameters, to_float_images
from ..mtl import build_mtl_model, multitask_loss
from ..results import FitResult
from .checkpoints import resume, run_path
from .faults import maybe_kill
from .progress import Progress, send
from .status import DIVERGED, raise_if_failed, record
from .trainer import fit, report, run_guarded, start_worker, torch_trainer
from .streams import ImageCache, row_stream


def train_loop_per_worker(config: dict) -> None:
    run_guarded(_train, config)  # a diverged loss or a bad image stops the stage instead of restarting it


def _train(config: dict) -> None:
    w = start_worker(config)
    cfg, rank, device = w.cfg, w.rank, w.device
    m, res, kind = cfg.mtl, cfg.resources, config["kind"]
    learner = None
    if kind in LEARNERS:  # MAXL / AuxiLearn: the multi-task net learns labels that a generator makes
        model, gen = build_learner(config["n_classes"]["principal"], m.psi, m.width, m.backbone, cfg.data.image_size)
        learner = AuxLabelLearner(kind, gen.to(device, memory_format=torch.channels_last), m.meta_lr, m.meta_alpha,
                                  m.auxiliary_weight, m.entropy_weight, m.neumann_steps)
        model = model.to(device, memory_format=torch.channels_last)
    else:
        model = build_mtl_model(kind, config["n_classes"], m.width, m.loss_weighting, m.backbone, cfg.data.image_size,
                                m.pretrained).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=m.lr, weight_decay=m.weight_decay)
    state = resume(config["run_path"], model, opt)
    start_epoch = state.get("epoch", -1) + 1
    if learner is not None and state:
        learner.load_state_dict(state["learner"])
    if rank == 0 and start_epoch:
        send(config["progress"], resumed_after=start_epoch)
    ddp_model = ray.train.torch.prepare_model(model)
    tasks = list(config["n_classes"]) if kind not in ("stl", *LEARNERS) else ["principal"]
    weights = model.loss_weights if hasattr(model, "loss_weights") else {
        t: m.principal_weight if t == "principal" else m.auxiliary_weight for t in tasks}
    writer = SummaryWriter(config["tb_dir"]) if rank == 0 else None
    train_shard = ray.train.get_dataset_shard("train")
    test_shard = ray.train.get_dataset_shard("test")
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None
    meta_batches = _forever(ray.train.get_dataset_shard("meta"), m.batch_size, device) if kind == "auxilearn" else None

    for epoch in range(start_epoch, m.epochs):
        t0 = time.time()
        ddp_model.train()
        total, n_batches, meta_sums, n_meta = torch.zeros((), device=device), 0, {}, 0
        for step, batch in enumerate(train_shard.iter_torch_batches(batch_size=m.batch_size, local_shuffle_buffer_size=4 * m.batch_size,
                                                    local_shuffle_seed=cfg.seed * 100_003 + epoch, drop_last=True,
                                                    device=device, pin_memory=device.type == "cuda")):
            maybe_kill(cfg.debug.kill_at, kind, epoch, step, rank, config["status_dir"])
            x = to_float_images(batch["image"])
            targets = {t: batch[t].long() for t in tasks}
            with autocast(device, res.amp):
                if learner is None:
                    loss, _ = multitask_loss(ddp_model(x), targets, weights)
                else:
                    y = targets["principal"]
                    loss = learner_loss(ddp_model(x), y, learner.targets(x, y), m.auxiliary_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            n_batches += 1
            if learner is not None and step % m.meta_every == 0:  # the generator's step (fp32: second order)
                extra = next(meta_batches) if meta_batches is not None else None
                aux = (to_float_images(extra["image"]), extra["principal"].long()) if extra is not None else (None, None)
                for k, v in learner.meta_step(model, x, targets["principal"], *aux).items():
                    meta_sums[k] = meta_sums.get(k, 0.0) + v
                n_meta += 1
        train_loss = float(total) / max(n_batches, 1)
        if not np.isfinite(train_loss):
            if rank == 0:
                record(config["status_dir"], DIVERGED, (
                    f"stage 3 ({kind}) loss became non-finite in epoch {epoch}; the last good checkpoint "
                    f"(epoch {epoch - 1}) is kept. Lower mtl.lr."))
            return
        metrics = {"epoch": epoch, "train_loss": train_loss, "epoch_time_s": time.time() - t0}
        if rank == 0:
            metrics["test_principal_accuracy"] = _accuracy(model, test_shard, device)
            if val_shard is not None:
                metrics["val_principal_accuracy"] = _accuracy(model, val_shard, device)
            _log_epoch(writer, kind, model, metrics, learner, meta_sums, n_meta, x, targets["principal"], epoch)
        report(metrics, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                         **({"learner": learner.state_dict()} if learner is not None else {})} if rank == 0 else None)
        if rank == 0:  # the driver prints it; the epoch's checkpoint exists by now
            send(config["progress"], epoch=epoch, epoch_time_s=metrics["epoch_time_s"], items=n_batches * m.batch_size * w.world,
                 values={k: v for k, v in metrics.items() if k.endswith("accuracy") or k == "train_loss"})
    if writer:
        writer.close()


def _log_epoch(writer: SummaryWriter, kind: str, model: torch.nn.Module, metrics: dict, learner, meta_sums: dict,
               n_meta: int, x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
    """TensorBoard: loss and accuracies; uncertainty weights; a learner's meta losses and how its generated labels
    spread over the C * psi classes (on the epoch's last batch x, y)."""
    for name, value in metrics.items():
        if name.endswith("accuracy") or name == "train_loss":
            writer.add_scalar(f"{kind}/{name}", value, epoch)
    for task, log_var in getattr(getattr(model, "loss_weights", None), "log_vars", {}).items():
        writer.add_scalar(f"{kind}/log_sigma2_{task}", float(log_var), epoch)
    if learner is not None:
        for k, v in meta_sums.items():
            writer.add_scalar(f"{kind}/{k}", v / max(n_meta, 1), epoch)
        for k, v in learner.label_stats(x, y).items():
            writer.add_scalar(f"{kind}/{k}", v, epoch)
    writer.flush()


def _forever(shard, batch_size: int, device):
    """Batches of a dataset shard, pass after pass (AuxiLearn's auxiliary split, read alongside the training split)."""
    while True:
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device=device):
            yield batch


@torch.no_grad()
def _accuracy(model: torch.nn.Module, shard, device) -> float:
    """Principal-task accuracy of the unwrapped model (no DDP collectives) over the whole test stream."""
    model.eval()
    correct = seen = 0
    for batch in shard.iter_torch_batches(batch_size=512, device=device):
        pred = model(to_float_images(batch["image"]))["principal"].argmax(1)
        correct += int((pred == batch["principal"].long()).sum())
        seen += len(pred)
    model.train()
    return correct / max(seen, 1)


def run(cfg: Config, kind: str, train_table: pa.Table, test_table: pa.Table, n_classes: dict[str, int],
        cache: ImageCache, tb_dir: Path, storage: str, status_dir: Path, val_table: pa.Table | None = None,
        callbacks: list | None = None, tag: str = "") -> FitResult:
    """Fit one model ('stl' or cfg.mtl.model) and return its final metrics and parameter count.

    `val_table` adds a per-epoch validation accuracy (tuning's objective); `callbacks` are Ray Train callbacks
    (a Tune trial passes TuneReportCallback so each epoch reaches the scheduler); `tag` tells apart runs of the same
    model and config on different labels (the entangled ablation), whose checkpoints must not be shared.
    """
    res = cfg.resources
    raise_if_failed(status_dir, clear=True)
    name = f"mtl-{kind}-{cfg.stage_hash('mtl')}{'-' + tag if tag else ''}"
    meta_table = None
    if kind == "auxilearn":  # its generator learns on a held-out share of the training split
        train_table, meta_table = auxiliary_split(train_table, cfg.mtl.aux_split, cfg.seed)
    datasets = {"train": row_stream(train_table, cache, res.data_cpus), "test": row_stream(test_table, cache, res.data_cpus)}
    if val_table is not None:
        datasets["val"] = row_stream(val_table, cache, res.data_cpus)
    if meta_table is not None:
        datasets["meta"] = row_stream(meta_table, cache, res.data_cpus)
    t0 = time.time()
    progress = Progress(f"mtl:{kind}", cfg.mtl.epochs, "images")
    trainer = torch_trainer(train_loop_per_worker, {
        "cfg": cfg.to_dict(), "kind": kind, "n_classes": n_classes, "tb_dir": str(tb_dir), "status_dir": str(status_dir),
        "has_val": val_table is not None, "run_path": run_path(storage, name), "progress": progress.queue},
        cfg, name, storage, datasets=datasets, callbacks=callbacks)
    try:
        result = fit(trainer, progress)
    finally:
        raise_if_failed(status_dir)
    tasks = ({"principal": 0} if kind == "stl" else {"principal": 0, "auxiliary (learned)": 0} if kind in LEARNERS
             else n_classes)
    return FitResult(
        model=kind,
        test_principal_accuracy=float(result.metrics["test_principal_accuracy"]),
        val_principal_accuracy=float(result.metrics["val_principal_accuracy"]) if val_table is not None else None,
        epochs=int(result.metrics["epoch"]) + 1,
        parameters=parameter_count(kind, n_classes, cfg),
        backbone=cfg.mtl.backbone,
        loss_weighting="fixed" if kind == "stl" else cfg.mtl.loss_weighting,
        tasks=sorted(tasks),
        auxiliary_classes=n_classes["principal"] * cfg.mtl.psi if kind in LEARNERS else None,
        auxiliary_split_images=meta_table.num_rows if meta_table is not None else None,
        wall_time_s=round(time.time() - t0, 1),
    )


def parameter_count(kind: str, n_classes: dict[str, int], cfg: Config) -> int:
    """Trainable parameters of the model, with a learner's label generator counted in."""
    m = cfg.mtl
    if kind in LEARNERS:
        return sum(count_parameters(mod) for mod in build_learner(n_classes["principal"], m.psi, m.width, m.backbone,
                                                                  cfg.data.image_size))
    return count_parameters(build_mtl_model(kind, n_classes, m.width, backbone=m.backbone, image_size=cfg.data.image_size))


def auxiliary_split(table: pa.Table, frac: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(training rows, auxiliary-split rows): a seeded `frac` of the table held out (AuxiLearn's auxiliary set)."""
    n = table.num_rows
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng([seed, 23]).choice(n, max(1, int(round(frac * n))), replace=False)] = True
    return table.filter(pa.array(~held)), table.filter(pa.array(held))
