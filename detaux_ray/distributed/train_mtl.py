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

from ..mtl.auxlearn import LEARNERS, AuxLabelLearner, build_learner
from ..mtl.auxlearn import train_loss as learner_loss
from ..config import Config
from ..tensors import autocast, count_parameters, to_float_images
from ..mtl.models import build_mtl_model, learning_rate, make_optimizer, multitask_loss
from ..results import FitResult
from .checkpoints import resume, run_path
from .faults import maybe_kill
from .progress import Progress, send
from .status import StatusBoard
from .trainer import diverged, end_epoch, fit_on_board, run_guarded, start_worker, torch_trainer
from .streams import ImageCache, row_stream


def train_loop_per_worker(config: dict) -> None:
    run_guarded(_train, config)  # a diverged loss or a bad image stops the stage instead of restarting it


def _train(config: dict) -> None:
    w = start_worker(config)
    cfg, rank, device = w.cfg, w.rank, w.device
    m, res, kind = cfg.mtl, cfg.resources, config["kind"]
    model, learner = _build(kind, config["n_classes"], cfg, device)
    opt = make_optimizer(model, m.optimizer, m.lr, m.weight_decay, m.momentum)
    state = resume(config["run_path"], model, opt)
    start_epoch = state.get("epoch", -1) + 1
    if learner is not None and state:
        learner.load_state_dict(state["learner"])
    if rank == 0 and start_epoch:
        send(config["status"], resumed_after=start_epoch)
    ddp_model = ray.train.torch.prepare_model(model)  # Ray: DDP across the workers
    tasks = list(config["n_classes"]) if kind not in ("stl", *LEARNERS) else ["principal"]
    weights = model.loss_weights if hasattr(model, "loss_weights") else {
        t: m.principal_weight if t == "principal" else m.auxiliary_weight for t in tasks}
    writer = SummaryWriter(config["tb_dir"]) if rank == 0 else None
    shards = {name: ray.train.get_dataset_shard(name) for name in ("train", "test") + (("val",) if config["has_val"] else ())}
    meta_batches = _forever(ray.train.get_dataset_shard("meta"), m.batch_size, device) if kind == "auxilearn" else None

    for epoch in range(start_epoch, m.epochs):
        t0, total, n_batches, meta = time.time(), torch.zeros((), device=device), 0, {}
        per_task = {t: torch.zeros((), device=device) for t in tasks}
        for group in opt.param_groups:
            group["lr"] = learning_rate(m.lr, epoch, m.epochs, m.lr_schedule)
        ddp_model.train()
        for step, batch in enumerate(shards["train"].iter_torch_batches(  # Ray Data: this rank's shard, shuffled
                batch_size=m.batch_size, local_shuffle_buffer_size=4 * m.batch_size, local_shuffle_seed=cfg.seed * 100_003 + epoch,
                drop_last=True, device=device, pin_memory=device.type == "cuda")):
            maybe_kill(cfg.debug.kill_at, kind, epoch, step, rank, config["status"])
            x, targets = to_float_images(batch["image"]), {t: batch[t].long() for t in tasks}
            with autocast(device, res.amp):
                if learner is None:
                    loss, ces = multitask_loss(ddp_model(x), targets, weights)
                    for t in tasks:  # each task's own CE, unweighted: which task still drives the shared trunk
                        per_task[t] += ces[t]
                else:
                    loss = learner_loss(ddp_model(x), targets["principal"], learner.targets(x, targets["principal"]), m.auxiliary_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n_batches = total + loss.detach(), n_batches + 1
            if learner is not None and step % m.meta_every == 0:  # the generator's step (fp32: second order)
                for k, v in _meta_step(learner, model, x, targets["principal"], meta_batches).items():
                    meta[k] = meta.get(k, []) + [v]
        metrics = {"epoch": epoch, "train_loss": float(total) / max(n_batches, 1), "epoch_time_s": time.time() - t0,
                   "lr": opt.param_groups[0]["lr"]}
        if learner is None and len(tasks) > 1:
            metrics |= {f"train_ce/{t}": float(v) / max(n_batches, 1) for t, v in per_task.items()}
        if diverged([metrics["train_loss"]], rank, config["status"], f"stage 3 ({kind}) loss became non-finite in "
                    f"epoch {epoch}; the last good checkpoint (epoch {epoch - 1}) is kept. Lower mtl.lr."):
            return
        if rank == 0:
            # Validation every epoch (tuning's objective); the test split every mtl.test_every epochs and at the end.
            due = (epoch + 1) % m.test_every == 0 or epoch == m.epochs - 1
            metrics |= {f"{name}_principal_accuracy": _accuracy(model, shard, device) for name, shard in shards.items()
                        if name == "val" or (name == "test" and due)}
            _log_epoch(writer, model, metrics, learner, meta, x, targets["principal"], epoch)
        end_epoch(metrics, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                            **({"learner": learner.state_dict()} if learner is not None else {})},
                  rank, config["status"], n_batches * m.batch_size * w.world,
                  {k: v for k, v in metrics.items() if k.endswith("accuracy") or k == "train_loss"})
    if writer:
        writer.close()


def _build(kind: str, n_classes: dict[str, int], cfg: Config, device: torch.device) -> tuple[torch.nn.Module, AuxLabelLearner | None]:
    """The model to train and, for MAXL / AuxiLearn, the label learner (the generator and its meta step)."""
    m = cfg.mtl
    if kind not in LEARNERS:
        return build_mtl_model(kind, n_classes, m.width, m.loss_weighting, m.backbone, cfg.data.image_size,
                               m.pretrained, m.aux_gradient).to(device, memory_format=torch.channels_last), None
    model, gen = build_learner(n_classes["principal"], m.psi, m.width, m.backbone, cfg.data.image_size)
    learner = AuxLabelLearner(kind, gen.to(device, memory_format=torch.channels_last), m.meta_lr, m.meta_alpha,
                              m.auxiliary_weight, m.entropy_weight, m.neumann_steps)
    return model.to(device, memory_format=torch.channels_last), learner


def _meta_step(learner: AuxLabelLearner, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, meta_batches) -> dict:
    """One generator update on the training batch (and, for AuxiLearn, a batch of its held-out auxiliary split)."""
    extra = next(meta_batches) if meta_batches is not None else None
    aux = (to_float_images(extra["image"]), extra["principal"].long()) if extra is not None else (None, None)
    return learner.meta_step(model, x, y, *aux)


def _log_epoch(writer: SummaryWriter, model: torch.nn.Module, metrics: dict, learner, meta: dict,
               x: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
    """TensorBoard (one run per model, so the tags carry no model name and the models' curves overlay): loss and
    accuracies; uncertainty weights; a learner's meta losses (the epoch's mean) and how its
    generated labels spread over the C * psi classes (on the epoch's last batch x, y)."""
    for name, value in metrics.items():
        if name.endswith("accuracy") or name in ("train_loss", "lr") or name.startswith("train_ce/"):
            writer.add_scalar(name, value, epoch)
    for task, log_var in getattr(getattr(model, "loss_weights", None), "log_vars", {}).items():
        writer.add_scalar(f"log_sigma2_{task}", float(log_var.detach()), epoch)
    if learner is not None:
        for k, v in meta.items():
            writer.add_scalar(k, sum(v) / len(v), epoch)
        for k, v in learner.label_stats(x, y).items():
            writer.add_scalar(k, v, epoch)
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
        cache: ImageCache, tb_dir: Path, storage: str, val_table: pa.Table | None = None,
        callbacks: list | None = None, tag: str = "", fits_at_once: int = 1, label: str = "",
        data_fingerprint: str = "") -> FitResult:
    """Fit one model ('stl' or cfg.mtl.model) and return its final metrics and parameter count.

    `val_table` adds a per-epoch validation accuracy (tuning's objective); `callbacks` are Ray Train callbacks
    (a Tune trial passes TuneReportCallback so each epoch reaches the scheduler); `tag` tells apart runs of the same
    model and config on different labels (the entangled ablation), whose checkpoints must not be shared;
    `fits_at_once` is how many fits share the cluster now (their workers share a node's cores); `label` names the fit
    in the progress lines. Each fit has a status board of its own (fits may run at once).
    """
    res = cfg.resources
    name = f"mtl-{kind}-{cfg.stage_hash('mtl', data_fingerprint)}{'-' + tag if tag else ''}"
    meta_table = None
    if kind == "auxilearn":  # its generator learns on a held-out share of the training split
        train_table, meta_table = auxiliary_split(train_table, cfg.mtl.aux_split, cfg.seed)
        meta_table = shuffled(meta_table, cfg.seed)
    train_table = shuffled(train_table, cfg.seed)
    datasets = {"train": row_stream(train_table, cache, res.data_cpus), "test": row_stream(test_table, cache, res.data_cpus)}
    if val_table is not None:
        datasets["val"] = row_stream(val_table, cache, res.data_cpus)
    if meta_table is not None:
        datasets["meta"] = row_stream(meta_table, cache, res.data_cpus)
    t0 = time.time()
    board = StatusBoard()
    progress = Progress(f"mtl:{label or kind}", cfg.mtl.epochs, "images", board)
    trainer = torch_trainer(train_loop_per_worker, {
        "cfg": cfg.to_dict(), "kind": kind, "n_classes": n_classes, "tb_dir": str(tb_dir),
        "status": board.handle, "driver_node": board.driver_node,
        "has_val": val_table is not None, "run_path": run_path(storage, name),
        "fits_at_once": fits_at_once},
        cfg, name, storage, datasets=datasets, callbacks=callbacks)
    result, placement = fit_on_board(trainer, progress, board)
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
        aux_gradient=cfg.mtl.aux_gradient if kind == "hps" else "sum",
        tasks=sorted(tasks),
        auxiliary_classes=n_classes["principal"] * cfg.mtl.psi if kind in LEARNERS else None,
        auxiliary_split_images=meta_table.num_rows if meta_table is not None else None,
        wall_time_s=round(time.time() - t0, 1),
        nodes=placement["nodes"],
        restarts=placement["restarts"],
    )


def parameter_count(kind: str, n_classes: dict[str, int], cfg: Config) -> int:
    """Trainable parameters of the model, with a learner's label generator counted in."""
    m = cfg.mtl
    if kind in LEARNERS:
        return sum(count_parameters(mod) for mod in build_learner(n_classes["principal"], m.psi, m.width, m.backbone,
                                                                  cfg.data.image_size))
    return count_parameters(build_mtl_model(kind, n_classes, m.width, backbone=m.backbone, image_size=cfg.data.image_size))


def shuffled(table: pa.Table, seed: int) -> pa.Table:
    """The table's rows in a seeded random order.

    Tables arrive in row order, and row order follows the data: on `shapes` it is sorted by floor hue, then wall
    hue (1.2 and 2.8 distinct values per 256 consecutive training rows); an image folder lists its files class by
    class. The training loop's local shuffle buffer mixes the stream's blocks as they arrive, and Ray Data packs
    gathered images into blocks of up to ~128 MiB: `shapes`' 10,496 training images at 32 px are one block, so each
    epoch is a full reshuffle there (rows move a median 3,100 places), but at 64 px a block holds ~10,000 images and
    at 224 px (by size) under a thousand, and a stream in row order would give each batch a few classes. Shuffled
    once per fit (seed = the fit's seed), each batch is a random draw whatever the block size; the buffer varies the
    order per epoch, and a resumed fit sees the same order."""
    return table.take(pa.array(np.random.default_rng([seed, 31]).permutation(table.num_rows)))


def auxiliary_split(table: pa.Table, frac: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(training rows, auxiliary-split rows): a seeded `frac` of the table's images held out (AuxiLearn's auxiliary
    set). An image the table repeats (few labels: `Pipeline.fit`) is on one side only."""
    rows = table.column("row").to_numpy()
    _, first = np.unique(rows, return_index=True)
    images = rows[np.sort(first)]  # in table order: without repeats, position i is image i
    n = len(images)
    chosen = images[np.random.default_rng([seed, 23]).choice(n, max(1, int(round(frac * n))), replace=False)]
    held = np.isin(rows, chosen)
    return table.filter(pa.array(~held)), table.filter(pa.array(held))
