"""Stage 1 on Ray Train: DDP over the per-epoch pairs, checkpoint every epoch, resume, TensorBoard on rank 0."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import ray.train.torch
import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from ..config import Config, uses_constant_latent_remedy
from ..disentangle.objective import (beta_schedule, build_model, compiled_graphs, compiled_step, latent_traversal,
                                     optimizer, optimizer_step)
from ..disentangle.models import DisentangleAE
from ..tensors import autocast, to_device, to_float_images
from ..disentangle.scorecard import heatmap, scorecard
from .checkpoints import load_resume_state, resume, run_path
from .faults import make_latent_constant, maybe_kill
from .progress import Progress, send
from .status import StatusBoard
from .trainer import diverged, end_epoch, fit_on_board, run_guarded, start_worker, torch_trainer
from .streams import EpochPairs, gather, pair_table


def train_loop_per_worker(config: dict) -> None:
    run_guarded(_train, config)  # a diverged loss or a bad image stops the stage instead of restarting it


def _train(config: dict) -> None:
    w = start_worker(config)
    cfg, rank, world, device = w.cfg, w.rank, w.world, w.device
    d, res, rows = cfg.disentangle, cfg.resources, config["train_rows"]
    model = build_model(d, cfg.data.image_size, config["n_principal"]).to(device, memory_format=torch.channels_last)
    opt = optimizer(model, d, fused=res.compile == "none")
    state = resume(config["run_path"], model, opt)
    start_epoch, global_step = state.get("epoch", -1) + 1, state.get("step", 0)
    ddp_model = ray.train.torch.prepare_model(model)  # Ray: DDP across the workers
    loss_fn, update = compiled_step(opt, res.compile)
    board = _Board(config, cfg, device) if rank == 0 else None  # TensorBoard (rank 0)
    if board and start_epoch:
        send(config["status"], resumed_after=start_epoch)
    # Deterministic resume: batches arrive in table order (pair_batches) and each epoch reseeds the swap sampling,
    # so a run resumed from epoch e's checkpoint retraces an uninterrupted run exactly (same auxiliary labels).
    pairs = EpochPairs(lambda epoch: pair_table(  # this rank's share of the epoch's pairs
        rows, config["principal"], d.pairs_per_epoch or len(rows), d.oracle_prob, cfg.seed, epoch, rank, world,
        d.batch_size, d.pair_mode, config.get("unlabelled_rows")), config["cache"], res.data_cpus, d.batch_size)
    for epoch in range(start_epoch, d.epochs):
        t0, sums, picks = time.time(), {}, torch.zeros(d.k, device=device)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank)
        table, batches = pairs.open(epoch)
        steps = max(1, table.num_rows // d.batch_size)
        for step, batch in enumerate(batches):
            betas = beta_schedule(epoch + step / steps, d)
            x1, x2, same, y1, y2, xu = _pair_tensors(batch, device)
            with autocast(device, res.amp):
                loss, terms, lam = loss_fn(ddp_model, x1, x2, same, betas, d, y1=y1, y2=y2, xu=xu)
            maybe_kill(cfg.debug.kill_at, "disentangle", epoch, step, rank, config["status"])
            if epoch == cfg.debug.nan_epoch and (cfg.debug.nan_node == "any" or not w.on_driver_node):  # test hook
                loss = loss * float("nan")
            optimizer_step(opt, loss, update)
            global_step += 1
            for name, v in {"total": loss.detach(), **terms}.items():  # on device: one host sync per epoch
                sums[name] = sums.get(name, 0.0) + v
            picks += lam.sum(0)
        if epoch == d.epochs - 1 and cfg.debug.constant_latent and not uses_constant_latent_remedy(cfg):  # test hook
            make_latent_constant(model)
        means = {name: float(v) / steps for name, v in sums.items()}
        if diverged(means.values(), rank, config["status"], f"stage 1 loss became non-finite in epoch {epoch} "
                    f"({means}); training stopped, the last good checkpoint (epoch {epoch - 1}) is kept. Lower "
                    "disentangle.lr or check the data."):
            return
        epoch_time_s = time.time() - t0
        if epoch + 1 < d.epochs:
            pairs.prefetch(epoch + 1)  # its first batch arrives while this epoch is logged and checkpointed
        metrics = {"epoch": epoch, "epoch_time_s": epoch_time_s, "pairs": steps * d.batch_size * world,
                   # unlabelled images reconstructed beside the pairs this epoch (one per pair; data.labelled_frac < 1)
                   "unlabelled_images": steps * d.batch_size * world if "u" in table.column_names else 0,
                   **{f"loss/{k}": v for k, v in means.items()}}
        if res.compile != "none":
            metrics["compiled_graphs"] = compiled_graphs()
        if board:
            metrics |= board.epoch(model, epoch, means, betas, (picks / picks.sum().clamp_min(1e-12)).cpu().numpy())
        end_epoch(metrics, {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": global_step},
                  rank, config["status"], metrics["pairs"], means)
        time.sleep(cfg.debug.epoch_pause_s)  # test hook
    if board:
        board.writer.close()


def _pair_tensors(batch: dict, device: torch.device) -> tuple:
    """(x1, x2, same, y1, y2, xu) on the device from a pair batch, the images as stored (uint8; the loss converts
    them), xu the unlabelled images to reconstruct (None when every training image is labelled); the label columns
    arrive as read-only Arrow views: copied (a few bytes) rather than aliased."""
    x1, x2 = (to_device(torch.from_numpy(batch[k]), device) for k in ("x1", "x2"))
    same = to_device(torch.from_numpy(np.array(batch["same"])), device)
    y1, y2 = (to_device(torch.from_numpy(np.array(batch[y], dtype=np.int64)), device) for y in ("y1", "y2"))
    xu = to_device(torch.from_numpy(batch["xu"]), device) if "xu" in batch else None
    return x1, x2, same, y1, y2, xu


class _Board:
    """Rank 0's TensorBoard: losses, betas, the oracle's picks, reconstruction / traversal grids of 8 images spread
    over the data (the first rows are near-identical scenes), and every `scorecard_every` epochs the scorecard."""

    def __init__(self, config: dict, cfg: Config, device: torch.device):
        self.cfg, self.device, self.writer = cfg, device, SummaryWriter(config["tb_dir"])
        rows = config["train_rows"]
        spread = np.sort(np.random.default_rng([cfg.seed, 17]).choice(rows, min(8, len(rows)), replace=False))
        self.fixed = torch.from_numpy(gather(config["cache"], spread))
        self.probe = config.get("probe") if cfg.disentangle.scorecard_every > 0 else None
        self.probe_images = gather(config["cache"], self.probe["rows"]) if self.probe else None

    def epoch(self, model: DisentangleAE, epoch: int, means: dict, betas, pick_frac: np.ndarray) -> dict:
        """Log the epoch; returns the scorecard's headline metrics when it was taken."""
        d = self.cfg.disentangle
        _log_epoch(self.writer, model, self.fixed, self.device, epoch, means, betas, pick_frac, d)
        if self.probe and ((epoch + 1) % d.scorecard_every == 0 or epoch == d.epochs - 1):
            return _log_scorecard(self.writer, model, self.probe, self.probe_images, self.device, epoch, self.cfg)
        return {}


def _log_epoch(writer: SummaryWriter, model: DisentangleAE, fixed: torch.Tensor, device, epoch: int, means: dict,
               betas, pick_frac: np.ndarray, d) -> None:
    for k, v in means.items():
        writer.add_scalar(f"loss/{k}", v, epoch)
    for name in ("beta1", "beta2", "beta3"):
        writer.add_scalar(f"beta/{name}", getattr(betas, name), epoch)
    for i, f in enumerate(pick_frac):
        writer.add_scalar(f"oracle/pick_subspace_{i}", float(f), epoch)
    writer.add_histogram("oracle/picks", np.repeat(np.arange(len(pick_frac)), np.round(pick_frac * 1000).astype(int)), epoch)
    if epoch % max(1, d.log_images_every) == 0 or epoch == d.epochs - 1:
        model.eval()
        with torch.no_grad():
            x = to_float_images(fixed.to(device))
            _, rec = model(x)
            writer.add_image("reconstruction", make_grid(torch.cat([x, rec]).float().cpu(), nrow=len(x)), epoch)
            trav = latent_traversal(model, x[0], x[1], steps=8)
            writer.add_image("latent_traversal", make_grid(trav.float().cpu(), nrow=8), epoch)
        model.train()
    writer.flush()


def _log_scorecard(writer: SummaryWriter, model: DisentangleAE, probe: dict, images: np.ndarray, device, epoch: int,
                   cfg: Config) -> dict:
    """The scorecard on the probe images: one scalar per (factor, subspace) and the heatmap, so the curve shows."""
    model.eval()
    with torch.no_grad():
        s = np.concatenate([model.subspaces(to_float_images(to_device(torch.from_numpy(images[i:i + 512]), device))).float().cpu().numpy()
                            for i in range(0, len(images), 512)])
    model.train()
    card = scorecard(s, probe["principal_name"], probe["principal"], probe["factors"], cfg.disentangle.principal_subspace,
                     cfg.seed, n_fit=len(s) // 2, n_eval=len(s) - len(s) // 2)
    for f_i, factor in enumerate(card.factors):
        for r_i, row in enumerate(card.rows):
            writer.add_scalar(f"scorecard/{factor}/subspace_{row}", float(card.scores[r_i, f_i]), epoch)
    sep = card.principal_separation()
    writer.add_scalar("scorecard/principal_in_alpha", sep["in_alpha"], epoch)
    writer.add_scalar("scorecard/principal_best_other", sep["best_other"], epoch)
    writer.add_figure("scorecard", heatmap(card, title=f"stage 1, epoch {epoch + 1}"), epoch)
    return {"scorecard/principal_in_alpha": sep["in_alpha"], "scorecard/principal_best_other": sep["best_other"]}


def run(cfg: Config, train_rows: np.ndarray, principal: np.ndarray, cache, tb_dir: Path, storage: str,
        probe: dict | None = None, data_fingerprint: str = "", unlabelled_rows: np.ndarray | None = None,
        fits_at_once: int = 1, label: str = "") -> dict:
    """Fit stage 1 (resuming from the run's last checkpoint) and return the final model state, its metrics and
    where it trained (`placement`: workers, nodes, restarts).

    train_rows: the labelled training rows the pairs come from; unlabelled_rows: training rows without a principal
    label, one reconstructed beside each pair (None or empty: none).

    probe: {"rows", "principal_name", "principal", "factors"} of the images the TensorBoard scorecard embeds.
    fits_at_once: stage-1 fits training now (restarts side by side share the nodes' cores); label: tells their
    progress lines apart."""
    name = f"disentangle-{cfg.stage_hash('disentangle', data_fingerprint)}"
    board = StatusBoard()
    progress = Progress(f"disentangle{':' + label if label else ''}", cfg.disentangle.epochs, "pairs", board)
    # The workers' seed is the restart's own (initialisation, pairs); the data split was made with cfg.seed.
    worker_cfg = dataclasses.replace(cfg, seed=cfg.stage1_seed)
    trainer = torch_trainer(train_loop_per_worker, {
        "cfg": worker_cfg.to_dict(), "train_rows": train_rows, "principal": principal, "cache": cache, "tb_dir": str(tb_dir),
        "status": board.handle, "driver_node": board.driver_node, "probe": probe, "unlabelled_rows": unlabelled_rows,
        "n_principal": int(principal.max()) + 1, "run_path": run_path(storage, name), "fits_at_once": fits_at_once},
        cfg, name, storage)
    result, placement = fit_on_board(trainer, progress, board)
    state = load_resume_state(result.checkpoint, run_path(storage, name))
    return {"model": state["model"], "epoch": state["epoch"], "steps": state["step"], "metrics": dict(result.metrics or {}),
            "placement": placement}
