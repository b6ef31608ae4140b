"""Stage 3 on Ray Train: STL or a multi-task model on (image, principal, auxiliary), principal accuracy on the
held-out split each epoch, checkpoint every epoch, resume, TensorBoard on rank 0."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.train
import ray.train.torch
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer
from torch.utils.tensorboard import SummaryWriter

from ..artifacts import save_torch
from ..config import Config, config_from_dict
from ..models import autocast, count_parameters, set_torch_threads, to_float_images
from ..mtl import build_mtl_model, multitask_loss
from .checkpoints import fit, load_resume_state, run_guarded, run_path
from .faults import maybe_kill
from .status import DIVERGED, raise_if_failed, record
from .streams import ImageCache, row_stream


def train_loop_per_worker(config: dict) -> None:
    run_guarded(_train, config)  # a diverged loss or a bad image stops the stage instead of restarting it


def _train(config: dict) -> None:
    cfg = config_from_dict(config["cfg"])
    m, res = cfg.mtl, cfg.resources
    set_torch_threads(res.torch_threads, ray.train.get_context().get_local_world_size())
    kind = config["kind"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    model = build_mtl_model(kind, config["n_classes"], m.width, m.loss_weighting, m.backbone, cfg.data.image_size,
                            m.pretrained).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=m.lr, weight_decay=m.weight_decay)
    start_epoch = 0
    state = load_resume_state(ray.train.get_checkpoint(), config["run_path"])
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        if rank == 0:
            print(f"[mtl:{kind}] resuming after epoch {start_epoch}/{m.epochs} (the newest checkpoint)", flush=True)
    ddp_model = ray.train.torch.prepare_model(model)
    tasks = list(config["n_classes"]) if kind != "stl" else ["principal"]
    weights = model.loss_weights if hasattr(model, "loss_weights") else {
        t: m.principal_weight if t == "principal" else m.auxiliary_weight for t in tasks}
    writer = SummaryWriter(config["tb_dir"]) if rank == 0 else None
    train_shard = ray.train.get_dataset_shard("train")
    test_shard = ray.train.get_dataset_shard("test")
    val_shard = ray.train.get_dataset_shard("val") if config["has_val"] else None

    for epoch in range(start_epoch, m.epochs):
        t0 = time.time()
        ddp_model.train()
        total, n_batches = torch.zeros((), device=device), 0
        for step, batch in enumerate(train_shard.iter_torch_batches(batch_size=m.batch_size, local_shuffle_buffer_size=4 * m.batch_size,
                                                    local_shuffle_seed=cfg.seed * 100_003 + epoch, drop_last=True,
                                                    device=device, pin_memory=device.type == "cuda")):
            maybe_kill(cfg.debug.kill_at, kind, epoch, step, rank, config["status_dir"])
            x = to_float_images(batch["image"])
            targets = {t: batch[t].long() for t in tasks}
            with autocast(device, res.amp):
                loss, _ = multitask_loss(ddp_model(x), targets, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            n_batches += 1
        train_loss = float(total) / max(n_batches, 1)
        if not np.isfinite(train_loss):
            if rank == 0:
                record(config["status_dir"], DIVERGED, (
                    f"stage 3 ({kind}) loss became non-finite in epoch {epoch}; the last good checkpoint "
                    f"(epoch {epoch - 1}) is kept. Lower mtl.lr."))
            return
        metrics = {"epoch": epoch, "train_loss": train_loss, "epoch_time_s": time.time() - t0}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                metrics["test_principal_accuracy"] = _accuracy(model, test_shard, device)
                if val_shard is not None:
                    metrics["val_principal_accuracy"] = _accuracy(model, val_shard, device)
                for name, value in metrics.items():
                    if name.endswith("accuracy") or name == "train_loss":
                        writer.add_scalar(f"{kind}/{name}", value, epoch)
                for task, log_var in getattr(getattr(model, "loss_weights", None), "log_vars", {}).items():
                    writer.add_scalar(f"{kind}/log_sigma2_{task}", float(log_var), epoch)
                writer.flush()
                save_torch(Path(tmp) / "state.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch})
                checkpoint = Checkpoint.from_directory(tmp)
                print(f"[mtl:{kind}] epoch {epoch + 1}/{m.epochs} loss={train_loss:.4f} "
                      f"test_principal_acc={metrics['test_principal_accuracy']:.4f}"
                      + (f" val_principal_acc={metrics['val_principal_accuracy']:.4f}" if val_shard is not None else ""), flush=True)
            ray.train.report(metrics, checkpoint=checkpoint)
    if writer:
        writer.close()


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
        callbacks: list | None = None, tag: str = "") -> dict:
    """Fit one model ('stl' or cfg.mtl.model) and return its final metrics and parameter count.

    `val_table` adds a per-epoch validation accuracy (tuning's objective); `callbacks` are Ray Train callbacks
    (a Tune trial passes TuneReportCallback so each epoch reaches the scheduler); `tag` tells apart runs of the same
    model and config on different labels (the entangled ablation), whose checkpoints must not be shared.
    """
    res = cfg.resources
    raise_if_failed(status_dir, clear=True)
    name = f"mtl-{kind}-{cfg.stage_hash('mtl')}{'-' + tag if tag else ''}"
    datasets = {"train": row_stream(train_table, cache, res.data_cpus), "test": row_stream(test_table, cache, res.data_cpus)}
    if val_table is not None:
        datasets["val"] = row_stream(val_table, cache, res.data_cpus)
    t0 = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "kind": kind, "n_classes": n_classes, "tb_dir": str(tb_dir),
                           "status_dir": str(status_dir), "has_val": val_table is not None,
                           "run_path": run_path(storage, name)},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker}),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), failure_config=FailureConfig(max_failures=res.max_failures),
                             callbacks=callbacks or []),
    )
    try:
        result = fit(trainer)
    finally:
        raise_if_failed(status_dir)
    tasks = n_classes if kind != "stl" else {"principal": n_classes["principal"]}
    return {
        "model": kind,
        "test_principal_accuracy": float(result.metrics["test_principal_accuracy"]),
        **({"val_principal_accuracy": float(result.metrics["val_principal_accuracy"])} if val_table is not None else {}),
        "epochs": int(result.metrics["epoch"]) + 1,
        "parameters": count_parameters(build_mtl_model(kind, n_classes, cfg.mtl.width, backbone=cfg.mtl.backbone,
                                                       image_size=cfg.data.image_size)),
        "backbone": cfg.mtl.backbone,
        "loss_weighting": "fixed" if kind == "stl" else cfg.mtl.loss_weighting,
        "tasks": sorted(tasks),
        "wall_time_s": round(time.time() - t0, 1),
    }
