"""GPU check (issue 13): the project's core on one accelerator, no Ray. One run, one JSON, one scorecard PNG.

    python bench/gpu_check.py --budget-s 270 --out bench/results/gpu/h200.json   # on the GPU machine, ~5 minutes
    python bench/gpu_check.py --tiny --out /tmp/gpu_check.json             # CPU, seconds: what the test runs

1. **Mixed precision**: the stage-1 step at the paper preset's model and batch (64 px, k = 10, batch 32), fp32
   against bf16 autocast: pairs/s each, the ratio, and the loss of two models trained from the same start on the
   same batches for N steps (the difference says whether bf16 changes the optimisation).
2. **Stage 1 at GPU budget**: 64 px shapes (rendered on every core), k = 10, the stage-1 defaults as they stand,
   for as many epochs as fit in --budget-s (timed from part 1), the scorecard every --every epochs (the learning
   curve), and at the end discovery as the pipeline runs it (the preset's criterion, KMeans++ on the chosen
   subspace): homogeneity / completeness of the labels against every hidden factor, NMI with the principal.
3. **Clustering on the accelerator**: the chosen subspace's points clustered by KMeans++ and labelled by their
   nearest fitted neighbours on the CPU (sklearn, SciPy's KD-tree: the pipeline's path) and on the accelerator
   (`bench/torch_clustering.py`): time and agreement (ARI, share of equal
   labels). HDBSCAN on a GPU needs cuML, which this machine does not have.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detaux_ray.discover.clustering import label_by_neighbours  # noqa: E402
from detaux_ray.config import load_config  # noqa: E402
from detaux_ray.data import build_source  # noqa: E402
from detaux_ray.data.shapes import ShapesRenderer  # noqa: E402
from detaux_ray.discover.auxiliary import choose_subspace, diagnostics, subspace_scores  # noqa: E402
from detaux_ray.disentangle.objective import beta_schedule, build_model, detaux_loss, optimizer  # noqa: E402
from detaux_ray.disentangle.models import DisentangleAE  # noqa: E402
from detaux_ray.tensors import autocast, to_float_images  # noqa: E402
from torch_clustering import kmeans_torch, label_by_neighbours_torch  # noqa: E402  (bench/, beside this script)
from detaux_ray.disentangle.pairs import sample_pairs  # noqa: E402
from detaux_ray.disentangle.scorecard import heatmap, scorecard  # noqa: E402

TINY = ["data.image_size=16", "data.n_images=3000", "disentangle.k=3", "disentangle.latent_dim=4",
        "disentangle.batch_size=16", "discover.n_clusters=4"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _render(size: int, noise: float, seed: int, ids: np.ndarray, workers: int) -> np.ndarray:
    """Shapes images for `ids`, rendered on `workers` processes."""
    parts = np.array_split(ids, max(1, workers * 4))
    renderer = ShapesRenderer(size, noise, seed)
    if workers <= 1:
        return np.concatenate([renderer.render(p) for p in parts])
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(renderer.render, parts)))


def _model(cfg, n_principal: int, device: torch.device, seed: int) -> DisentangleAE:
    d = cfg.disentangle
    torch.manual_seed(seed)
    return build_model(d, cfg.data.image_size, n_principal).to(device, memory_format=torch.channels_last)


def _batches(images, labels, n_pairs, cfg, epoch):
    d = cfg.disentangle
    p1, p2, same = sample_pairs(labels, n_pairs, d.oracle_prob, cfg.seed, epoch, d.pair_mode)
    for b in range(n_pairs // d.batch_size):
        sl = slice(b * d.batch_size, (b + 1) * d.batch_size)
        yield images[p1[sl]], images[p2[sl]], same[sl], labels[p1[sl]], labels[p2[sl]]


def _step(model, opt, batch, betas, cfg, device, amp: str) -> float:
    x1, x2, same, y1, y2 = (torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True) for a in batch)
    with autocast(device, amp):
        loss, _, _ = detaux_loss(model, to_float_images(x1), to_float_images(x2), same, betas, cfg.disentangle,
                                 y1=y1.long(), y2=y2.long())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()  # a device tensor: no host sync per step


def precision(cfg, images, labels, device, steps: int, warmup: int) -> dict:
    """fp32 vs bf16: pairs/s and the loss after `steps` identical steps from the same start."""
    d = cfg.disentangle
    betas = beta_schedule(0.95 * d.epochs, d)  # every term on, as late in training
    batches = list(_batches(images, labels, (steps + warmup) * d.batch_size, cfg, 0))
    out = {}
    for amp in ("none", "bf16"):
        model = _model(cfg, int(labels.max()) + 1, device, cfg.seed)
        opt = optimizer(model, d)
        for b in batches[:warmup]:
            _step(model, opt, b, betas, cfg, device, amp)
        _sync(device)
        t0 = time.perf_counter()
        losses = [_step(model, opt, b, betas, cfg, device, amp) for b in batches[warmup:]]
        _sync(device)
        dt = time.perf_counter() - t0
        tail = [float(v) for v in losses[-10:]]
        out[amp] = {"pairs_per_s": round(steps * d.batch_size / dt, 1), "step_ms": round(1000 * dt / steps, 3),
                    "final_loss_mean_last10": float(np.mean(tail))}
    out["bf16_speedup"] = round(out["bf16"]["pairs_per_s"] / out["none"]["pairs_per_s"], 3)
    a, b = out["none"]["final_loss_mean_last10"], out["bf16"]["final_loss_mean_last10"]
    out["loss_difference"] = {"absolute": abs(a - b), "relative": abs(a - b) / max(abs(a), 1e-12)}
    out["steps"], out["batch_size"] = steps, d.batch_size
    return out


@torch.no_grad()
def embed(model, images, device, amp: str, batch: int = 2048) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = to_float_images(torch.from_numpy(images[i:i + batch]).to(device))
        with autocast(device, amp):
            out.append(model.subspaces(x).float().cpu().numpy())
    model.train()
    return np.concatenate(out)


def stage1(cfg, src, rows, images, device, budget_s: float, pairs_per_s: float, every: int, amp: str,
           png: Path | None) -> tuple[dict, np.ndarray]:
    """Stage 1 for as many epochs as fit in budget_s; the scorecard every `every` epochs; discovery at the end."""
    d = cfg.disentangle
    labels = src.principal[rows]
    n_pairs = d.pairs_per_epoch or len(rows)
    d.epochs = max(2, int(budget_s * pairs_per_s / n_pairs))  # the beta schedule spans the whole budget
    factors = {f: v[rows] for f, v in src.factors.items() if f != src.principal_name}
    probe = np.sort(np.random.default_rng([cfg.seed, 19]).choice(len(rows), min(len(rows), 3000), replace=False))
    model = _model(cfg, int(labels.max()) + 1, device, cfg.seed)
    opt = optimizer(model, d)
    curve, step, t0 = [], 0, time.perf_counter()
    for epoch in range(d.epochs):
        steps = n_pairs // d.batch_size
        for b, batch in enumerate(_batches(images, labels, n_pairs, cfg, epoch)):
            loss = _step(model, opt, batch, beta_schedule(epoch + b / steps, d), cfg, device, amp)
            step += 1
        if not np.isfinite(float(loss)):
            raise SystemExit(f"stage 1: non-finite loss in epoch {epoch}")
        if (epoch + 1) % every == 0 or epoch == d.epochs - 1:
            s = embed(model, images[probe], device, amp)
            card = scorecard(s, src.principal_name, labels[probe], {f: v[probe] for f, v in factors.items()},
                             d.principal_subspace, cfg.seed, n_fit=len(s) // 2, n_eval=len(s) - len(s) // 2)
            sep = card.principal_separation()
            curve.append({"epoch": epoch + 1, "step": step, "time_s": round(time.perf_counter() - t0, 1),
                          "loss": float(loss), **sep,
                          "best_subspace_per_factor": {f: [int(np.argmax(card.scores[:card.k, i])), round(float(card.scores[:card.k, i].max()), 3)]
                                                       for i, f in enumerate(card.factors)}})
            print(f"[gpu_check] epoch {epoch + 1}/{d.epochs} step {step} loss {float(loss):.4f} | principal in alpha "
                  f"{sep['in_alpha']:.3f}, best other {sep['best_other']:.3f} | {time.perf_counter() - t0:.0f}s", flush=True)
    train_s = time.perf_counter() - t0
    s = embed(model, images, device, amp)
    card = scorecard(s, src.principal_name, labels, factors, d.principal_subspace, cfg.seed)
    if png is not None:
        heatmap(card, png, title=f"GPU check: stage 1 after {step} steps (probe score, 0 = chance, 1 = perfect)")
    scores = subspace_scores(s, labels, d.principal_subspace, d.margin, d.oracle_prob, cfg.seed,
                             n_clusters=cfg.discover.n_clusters)
    j = choose_subspace(scores, cfg.discover.criterion, d.principal_subspace, cfg.discover.dead_subspace_frac)
    km, _ = kmeans_torch(s[:, j], cfg.discover.n_clusters, cfg.seed, device=str(device))
    diag = diagnostics(km, labels, factors)
    return {"epochs": d.epochs, "steps": step, "train_time_s": round(train_s, 1), "curve": curve,
            "scorecard": card.to_dict(), "criterion": cfg.discover.criterion, "chosen_subspace": j,
            "labels": {"clusterer": "kmeans++ (accelerator)", "n_clusters": cfg.discover.n_clusters,
                       "nmi_principal_aux": diag.nmi_principal_aux, "best_factor": diag.best_factor,
                       "factor_scores": diag.factor_scores}}, s[:, j]


def clustering(x: np.ndarray, n_clusters: int, seed: int, device: torch.device, fit_n: int) -> dict:
    """KMeans++ (fit on a subsample) + nearest-neighbour labelling of every point: CPU path vs accelerator."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    fit = np.sort(np.random.default_rng([seed, 7]).choice(len(x), min(fit_n, len(x)), replace=False))
    t0 = time.perf_counter()
    cpu_fit = KMeans(n_clusters=n_clusters, init="k-means++", n_init=10, random_state=seed).fit_predict(x[fit])
    t1 = time.perf_counter()
    cpu_all = label_by_neighbours(x[fit], cpu_fit, x, k=10)
    t2 = time.perf_counter()
    acc_fit, _ = kmeans_torch(x[fit], n_clusters, seed, device=str(device))
    _sync(device)
    t3 = time.perf_counter()
    acc_all = label_by_neighbours_torch(x[fit], acc_fit, x, k=10, device=str(device))
    _sync(device)
    t4 = time.perf_counter()
    same_input = label_by_neighbours_torch(x[fit], cpu_fit, x, k=10, device=str(device))  # the same task as cpu_all
    return {"n_points": len(x), "n_fit": len(fit), "dim": int(x.shape[1]), "n_clusters": n_clusters,
            "cpu": {"kmeans_s": round(t1 - t0, 3), "knn_label_s": round(t2 - t1, 3)},
            "accelerator": {"kmeans_s": round(t3 - t2, 3), "knn_label_s": round(t4 - t3, 3)},
            "kmeans_ari_cpu_vs_accelerator": float(adjusted_rand_score(cpu_fit, acc_fit)),
            "labels_ari_cpu_vs_accelerator": float(adjusted_rand_score(cpu_all, acc_all)),
            "knn_same_labels_share": float((same_input == cpu_all).mean())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON to write (a PNG of the scorecard is written beside it)")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long CPU run (what the test runs)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stage-1 training time (part 2)")
    ap.add_argument("--n-images", type=int, default=160_000, help="64 px shapes images for part 2 (0 = all 480,000)")
    ap.add_argument("--amp-steps", type=int, default=300, help="timed steps per precision (part 1)")
    ap.add_argument("--every", type=int, default=2, help="epochs between scorecards (part 2)")
    ap.add_argument("--amp", default="none", help="precision of part 2: none (fp32, the default) | bf16")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="config overrides (section.key=value)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    overrides = (TINY if args.tiny else [f"data.n_images={args.n_images}"]) + args.overrides
    cfg = load_config("paper", overrides)
    budget = 5.0 if args.tiny else args.budget_s
    workers = os.cpu_count() or 1
    t_all = time.perf_counter()
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                 else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
                 "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                 "cpu_cores": workers, "tiny": args.tiny, "overrides": overrides,
                 "settings": {"image_size": cfg.data.image_size, "k": cfg.disentangle.k, "latent_dim": cfg.disentangle.latent_dim,
                              "batch_size": cfg.disentangle.batch_size, "lr": cfg.disentangle.lr,
                              "w_principal": cfg.disentangle.w_principal, "w_adversary": cfg.disentangle.w_adversary,
                              "pulls": cfg.disentangle.pulls, "margin": cfg.disentangle.margin, "amp_part2": args.amp}}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    src = build_source(cfg.data, cfg.seed)
    rows = src.train_rows()
    t0 = time.perf_counter()
    images = _render(cfg.data.image_size, cfg.data.noise, cfg.seed, src.ids[rows], 1 if args.tiny else workers)
    out["render"] = {"images": len(rows), "seconds": round(time.perf_counter() - t0, 1), "processes": workers}
    print(f"[gpu_check] {device}: rendered {len(rows)} training images in {out['render']['seconds']}s", flush=True)

    out["precision"] = precision(cfg, images, src.principal[rows], device, 10 if args.tiny else args.amp_steps,
                                 2 if args.tiny else 30)
    p = out["precision"]
    print(f"[gpu_check] fp32 {p['none']['pairs_per_s']} pairs/s, bf16 {p['bf16']['pairs_per_s']} pairs/s "
          f"(x{p['bf16_speedup']}); loss after {p['steps']} steps differs by {p['loss_difference']['relative']:.2%}", flush=True)

    png = Path(args.out).with_suffix(".png")
    out["stage1"], chosen = stage1(cfg, src, rows, images, device, budget, p["bf16" if args.amp == "bf16" else "none"]["pairs_per_s"],
                                   1 if args.tiny else args.every, args.amp, png)
    lab = out["stage1"]["labels"]
    best = lab["best_factor"]
    print(f"[gpu_check] stage 1: {out['stage1']['steps']} steps in {out['stage1']['train_time_s']}s; subspace "
          f"{out['stage1']['chosen_subspace']} -> {best} H {lab['factor_scores'][best]['homogeneity']:.3f} "
          f"C {lab['factor_scores'][best]['completeness']:.3f}, NMI(principal) {lab['nmi_principal_aux']:.4f}", flush=True)

    out["clustering"] = clustering(chosen, cfg.discover.n_clusters, cfg.seed, device, 2000 if args.tiny else 50_000)
    c = out["clustering"]
    print(f"[gpu_check] KMeans++ cpu {c['cpu']['kmeans_s']}s vs accelerator {c['accelerator']['kmeans_s']}s; kNN labels "
          f"cpu {c['cpu']['knn_label_s']}s vs accelerator {c['accelerator']['knn_label_s']}s; ARI {c['labels_ari_cpu_vs_accelerator']:.3f}",
          flush=True)
    out["total_s"] = round(time.perf_counter() - t_all, 1)
    out["scorecard_png"] = png.name
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1, default=float))
    tmp.replace(args.out)
    print(f"[gpu_check] wrote {args.out} and {png} in {out['total_s']}s", flush=True)
    return out


if __name__ == "__main__":
    main()
