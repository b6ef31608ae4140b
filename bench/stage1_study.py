"""Stage-1 study harness: plain PyTorch (no Ray) on a preset's data, scored on the scorecard.

Trains the stage-1 model exactly as the Ray stage does (same core: pairs, objective, schedule), takes the
scorecard (kNN probe of every subspace x known factor) every `--every` epochs, and at the end runs discovery
with every subspace criterion (KMeans++ on the chosen subspace; homogeneity / completeness per factor, NMI with
the principal labels). One JSON row per run, so variants can be compared one change at a time:

    python bench/stage1_study.py --name head --set disentangle.w_principal=1 --out bench/results/stage1/head.json

A continuation ablation (which term acts in the later epochs): save the state once, then continue it under
one change at a time; a continuation without changes reproduces the uninterrupted run exactly (measured):

    python bench/stage1_study.py --set seed=2 --save-at 7 --state /tmp/seed2.pt
    python bench/stage1_study.py --set seed=2 --resume /tmp/seed2.pt --every 1 --set disentangle.w_principal=0
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detaux_ray.discover.clustering import cluster  # noqa: E402
from detaux_ray.config import CRITERIA, load_config  # noqa: E402
from detaux_ray.data import build_source  # noqa: E402
from detaux_ray.discover.auxiliary import (choose_starts, choose_subspace, component_starts, diagnostics,  # noqa: E402
                                           nuisance_components, subspace_scores)
from detaux_ray.errors import DetauxError, SingleClusterError  # noqa: E402
from detaux_ray.disentangle.objective import (beta_schedule, build_model, detaux_loss, optimizer,  # noqa: E402
                                              optimizer_step)
from detaux_ray.disentangle.models import DisentangleAE, paired_encoder_state  # noqa: E402
from detaux_ray.tensors import to_float_images  # noqa: E402
from detaux_ray.disentangle.pairs import sample_pairs, unlabelled_walk  # noqa: E402
from detaux_ray.disentangle.scorecard import scorecard  # noqa: E402


@torch.no_grad()
def embed(model: DisentangleAE, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    out = [model.subspaces(to_float_images(torch.from_numpy(images[i:i + batch]))).numpy() for i in range(0, len(images), batch)]
    model.train()
    return np.concatenate(out)


@torch.no_grad()
def reconstruction_split(model: DisentangleAE, images: np.ndarray, n: int = 1000) -> dict:
    """Reconstruction MSE on the foreground pixels (whose colour differs from the image's border median by > 0.1
    in a channel) and on the rest, over n images: whether a small object on a plain background is
    reconstructed at all, or the background's pixels dominate the loss. n images spread evenly over the rows
    (row order follows the factors)."""
    model.eval()
    x = to_float_images(torch.from_numpy(images[np.linspace(0, len(images) - 1, min(n, len(images))).astype(int)]))
    x_rec = model(x)[1]
    model.train()
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=-1).median(dim=-1).values
    fg = ((x - border[..., None, None]).abs() > 0.1).any(dim=1, keepdim=True).expand_as(x)
    err = (x - x_rec) ** 2
    return {"rec_fg": round(float(err[fg].mean()) if fg.any() else 0.0, 5),
            "rec_bg": round(float(err[~fg].mean()), 5), "fg_share": round(float(fg.float().mean()), 4)}


def discover_all(cfg, s, src, rows, card, scores) -> dict:
    """Discovery with every subspace criterion and with the independent components (discover.space=ica)."""
    d, disc = cfg.disentangle, cfg.discover
    out = {}
    for crit in CRITERIA:
        j = choose_subspace(scores, crit, d.principal_subspace, disc.dead_subspace_frac)
        res = cluster(s[:, j], disc, cfg.seed)
        diag = diagnostics(res.labels, src.principal[rows], {f: v[rows] for f, v in src.factors.items() if f != src.principal_name})
        best, fs = diag.best_factor, diag.best_scores()
        out[crit] = {"subspace": j, "best_factor": best, "homogeneity": round(fs.get("homogeneity", 0), 4),
                                  "completeness": round(fs.get("completeness", 0), 4),
                                  "nmi_principal_aux": round(diag.nmi_principal_aux, 4), "n_clusters": diag.n_aux_classes,
                                  "subspace_best_probe": card.best_factor(j)}
    try:  # discover.space=ica: the product's own chain (every component a start, refined, recounted)
        u, loadings = nuisance_components(s, d.principal_subspace, disc, cfg.seed)
        st = choose_starts(component_starts(u, src.principal[rows], slice(None), disc, cfg.seed, cluster, lambda m: None), 1)[0]
    except DetauxError as e:
        out["ica"] = {"error": str(e)}
        return out
    diag = diagnostics(st.result.labels, src.principal[rows], {f: v[rows] for f, v in src.factors.items() if f != src.principal_name})
    fs = diag.best_scores()
    out["ica"] = {"subspace": int(np.argmax(loadings[st.component])), "component": st.component,
                  "n_components": int(u.shape[1]), "level_separation": round(st.levels, 3), "score": round(st.score, 3),
                  "best_factor": diag.best_factor, "homogeneity": round(fs.get("homogeneity", 0), 4),
                  "completeness": round(fs.get("completeness", 0), 4),
                  "nmi_principal_aux": round(diag.nmi_principal_aux, 4), "n_clusters": diag.n_aux_classes}
    return out


def evaluate(cfg, model, images, src, rows, full: bool) -> dict:
    s = embed(model, images)
    factors = {f: v[rows] for f, v in src.factors.items() if f != src.principal_name}
    card = scorecard(s, src.principal_name, src.principal[rows], factors, cfg.disentangle.principal_subspace, cfg.seed,
                     n_fit=3000 if full else 1500, n_eval=2000 if full else 1000)
    out = {"scorecard": card.to_dict(), "variance": (2 * ((s - s.mean(0)) ** 2).sum(-1).mean(0) / 2).round(7).tolist(),
           **reconstruction_split(model, images)}
    if not full:
        return out
    d, disc = cfg.disentangle, cfg.discover
    scores = subspace_scores(s, src.principal[rows], d.principal_subspace, d.margin, d.oracle_prob, cfg.seed,
                             n_clusters=disc.n_clusters)
    out["subspace_scores"] = {k: np.round(v, 5).tolist() for k, v in scores.items()}
    out["discovery"] = {}
    try:
        out["discovery"].update(discover_all(cfg, s, src, rows, card, scores))
    except SingleClusterError as e:  # a dead nuisance latent: the run's scorecard is still the finding
        out["discovery"]["error"] = str(e)
    return out


def with_heads(d, heads: tuple[bool, bool]):
    """d with the principal head and the adversary a continued run saved (heads = (head, adversary)), so that its
    state loads; only the model's construction reads these weights' being zero or not."""
    return replace(d, w_principal=(d.w_principal or 1.0) if heads[0] else 0.0,
                   w_adversary=(d.w_adversary or 1.0) if heads[1] else 0.0)


def param_names(model: DisentangleAE, d) -> list[str]:
    """Parameter names in the order `optimizer(model, d)` numbers them (its groups, one after the other)."""
    opt = optimizer(model, d)
    name = {id(p): n for n, p in model.named_parameters()}
    return [name[id(p)] for g in opt.param_groups for p in g["params"]]


def remap_optimizer(saved: dict, old_names: list[str], new_names: list[str], fresh: dict) -> dict:
    """`saved` (AdamW's state over a shared-encoder model's old_names) renumbered for a private-alpha model's
    new_names: f_alpha takes the shared encoder's moments (the second half of each paired encoder tensor)."""
    old = {n: saved["state"][i] for i, n in enumerate(old_names) if i in saved["state"]}
    step = next(iter(old.values()))["step"]
    moments = {}
    for kind in ("exp_avg", "exp_avg_sq"):
        t = {n: st[kind] for n, st in old.items()}
        t.update({"alpha_encoder." + n[len("encoder."):]: v for n, v in t.items() if n.startswith("encoder.")})
        moments[kind] = paired_encoder_state(t)
    state = {i: {"step": step.clone(), **{kind: m[n].clone() for kind, m in moments.items()}}
             for i, n in enumerate(new_names) if n in moments["exp_avg"]}
    groups = [{**g_saved, "params": g_fresh["params"]} for g_saved, g_fresh in zip(saved["param_groups"], fresh["param_groups"])]
    return {"state": state, "param_groups": groups}


def changes(r: dict) -> str:
    """A run's changes against its preset, as the table shows them."""
    out = [o.split(".", 1)[-1] for o in r["overrides"]]
    if r.get("decoder_output") == "linear":
        out.append("decoder output linear")
    if r.get("leaky_projectors"):
        out.append(f"leaky projectors {r['leaky_projectors']}")
    if r.get("rec_weight") == "median":
        out.append("L_rec weighted by the median image")
    if r.get("rec_loss") == "bce":
        out.append("L_rec cross-entropy")
    return ", ".join(out) or "-"


def table(paths: list[str]) -> str:
    """Markdown table of finished runs (JSON rows): the scorecard targets and each criterion's discovery."""
    lines = ["| run | changes vs quick preset | steps | principal in alpha | best other | best factor per subspace (probe) | "
             "cluster: subspace -> factor H / C, NMI | calinski | l_dist | dot | ica |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        r = json.loads(Path(p).read_text())
        f = r["final"]
        card = f["scorecard"]
        sep = card["principal_separation"]
        best = []
        for i, row in enumerate(card["scores"][:-1]):
            if len(row) < 2:  # a dataset without known factors (digits)
                continue
            j = int(np.argmax(row[1:])) + 1  # the best non-principal factor
            best.append(f"{i}: {card['factors'][j]} {row[j]:.2f}")
        disc = []
        for crit in ("cluster", "calinski", "l_dist", "dot", "ica"):
            d = f["discovery"].get(crit)
            disc.append(f"{d['subspace']} -> {d['best_factor']} {d['homogeneity']:.2f} / {d['completeness']:.2f}, "
                        f"{d['nmi_principal_aux']:.3f}" if d else "-")
        lines.append(f"| {r['name']} | {changes(r)} | {r['steps']} | "
                     f"{sep['in_alpha']:.2f} | {sep['best_other']:.2f} | {'; '.join(best)} | " + " | ".join(disc) + " |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--table"]:
        print(table(sys.argv[2:]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--name", default="run")
    ap.add_argument("--every", type=int, default=5, help="epochs between scorecards")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--embeddings", default="", help="also save the final embeddings (N, k, d), rows and factors (.npz)")
    ap.add_argument("--save-at", type=int, default=0, help="after this epoch, save model + optimiser to --state and stop")
    ap.add_argument("--resume", default="", help="continue from a --save-at state under this run's --set overrides "
                    "(a continuation ablation: which term acts in the later epochs)")
    ap.add_argument("--state", default="", help="path of the --save-at state")
    ap.add_argument("--decoder-output", default="", help="experiment: 'linear' drops the decoder's output sigmoid; "
                    "'extended' is 1.2 sigmoid - 0.1 (0 and 1 at finite logits)")
    ap.add_argument("--rec-loss", default="", help="experiment: 'bce' makes L_rec the Bernoulli cross-entropy")
    ap.add_argument("--rec-weight", default="", help="experiment: 'median' weights L_rec's pixels by their distance to "
                    "the training images' median image")
    ap.add_argument("--no-unlabelled", action="store_true", help="with data.labelled_frac < 1: train on the labelled "
                    "images alone (the ablation of reconstructing the unlabelled ones)")
    ap.add_argument("--output-bias", default="", help="experiment: 'mean' starts the decoder's output bias at the logit of "
                    "the training images' per-channel mean (default: PyTorch's init, logit ~0)")
    ap.add_argument("--leaky-projectors", type=float, default=0.0, help="experiment: LeakyReLU slope in the projectors")
    args = ap.parse_args()
    if args.leaky_projectors > 0:
        from detaux_ray.disentangle import models

        slope = args.leaky_projectors

        def leaky_forward(self, z):
            act = torch.nn.functional.leaky_relu
            h = act(torch.einsum("bd,kde->bke" if z.dim() == 2 else "bkd,kde->bke", z, self.w1) + self.b1, slope)
            return torch.einsum("bkd,kde->bke", h, self.w2) + self.b2

        def leaky_one(self, z, i):
            h = torch.nn.functional.leaky_relu(torch.einsum("bd,bde->be", z, self.w1[i]) + self.b1[i], slope)
            return torch.einsum("bd,bde->be", h, self.w2[i]) + self.b2[i]
        models.Projectors.forward, models.Projectors.project_one = leaky_forward, leaky_one
    if args.rec_loss == "bce":
        from detaux_ray.disentangle import losses

        losses.reconstruction_loss = lambda x, x_rec: torch.nn.functional.binary_cross_entropy(x_rec, x)
    if args.decoder_output == "linear":
        from detaux_ray.disentangle import models

        def linear_forward(self, z):
            return self.deconv(self.mlp(z).view(-1, self.c0, 4, 4))
        models.ConvDecoder.forward = linear_forward
    if args.decoder_output == "extended":
        from detaux_ray.disentangle import models

        def extended_forward(self, z):
            # 1.2 sigmoid - 0.1: pixel values 0 and 1 sit at logits -/+2.4, where the sigmoid's slope is 0.08, not 0
            return 1.2 * torch.sigmoid(self.deconv(self.mlp(z).view(-1, self.c0, 4, 4))) - 0.1
        models.ConvDecoder.forward = extended_forward
    if args.save_at and not args.state:
        ap.error("--save-at needs --state PATH")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.preset, args.overrides)
    d = cfg.disentangle
    torch.manual_seed(cfg.seed)
    src = build_source(cfg.data, cfg.seed)
    rows = src.train_rows()
    t0 = time.time()
    images = src.images(rows)
    print(f"[{args.name}] {len(rows)} images in {time.time() - t0:.1f}s", flush=True)
    labels = torch.from_numpy(src.principal[rows])
    if args.rec_weight == "median":
        from detaux_ray.disentangle import losses

        sample = to_float_images(torch.from_numpy(images[np.random.default_rng([cfg.seed, 31]).permutation(len(images))[:2000]]))
        median = sample.median(dim=0).values  # (3, S, S)
        typical = float((sample - median).abs().mean())

        def weighted(x, x_rec):
            # w = (1 + |x - m| / mean |x - m|) / 2: mean 1 over the data; pixels that differ from the typical image weigh more
            w = (1.0 + (x - median).abs() / typical) / 2.0
            return (w * (x - x_rec).pow(2)).mean()
        losses.reconstruction_loss = weighted
    w_principal = d.formulation()[0]
    state = torch.load(args.resume, weights_only=False) if args.resume else None
    heads = state["heads"] if state else (w_principal > 0, d.w_adversary > 0)  # a continuation keeps the saved modules
    model = build_model(with_heads(d, heads), cfg.data.image_size, src.n_principal_classes).to(memory_format=torch.channels_last)
    if args.output_bias == "mean":
        sample = to_float_images(torch.from_numpy(images[np.random.default_rng([cfg.seed, 37]).permutation(len(images))[:2000]]))
        mean = sample.mean(dim=(0, 2, 3)).clamp(1e-3, 1 - 1e-3)
        out = model.decoder.deconv[-1] if hasattr(model.decoder, "deconv") else model.decoder.out
        with torch.no_grad():
            out.bias.copy_(torch.log(mean / (1 - mean)))
    opt = optimizer(model, d)
    # data.labelled_frac < 1: pairs from the labelled rows, one unlabelled image reconstructed beside each pair as in
    # the product (train_disentangle), unless --no-unlabelled (the ablation: the labelled images alone).
    known = src.is_labelled()[rows]
    lab = np.flatnonzero(known)
    unl = np.array([], np.int64) if args.no_unlabelled else np.flatnonzero(~known)
    n_pairs = d.pairs_per_epoch or len(lab)
    curve, step, first = [], 0, 0
    if state:
        saved = dict(state["model"])
        if model.private_alpha and "alpha_index" not in saved:
            # A shared-encoder state continued with a private alpha encoder: f_alpha starts as a copy of the shared
            # encoder, weights and AdamW moments both, so at the first step nothing but the gradients' routing changed.
            old_names = param_names(build_model(with_heads(replace(d, alpha_encoder="shared"), heads), cfg.data.image_size,
                                                src.n_principal_classes), d)
            saved.update({"alpha_encoder." + n[len("encoder."):]: v.clone() for n, v in state["model"].items() if n.startswith("encoder.")})
            saved["alpha_index"] = model.alpha_index
            model.load_state_dict(saved)
            opt.load_state_dict(remap_optimizer(state["opt"], old_names, param_names(model, d), opt.state_dict()))
        else:
            model.load_state_dict(saved)
            opt.load_state_dict(state["opt"])
        for g in opt.param_groups:  # the continuation's own rates (--set disentangle.lr=...)
            g["lr"] = d.lr * (d.adversary_lr_scale if len(opt.param_groups) > 1 and g is opt.param_groups[-1] else 1)
        first, step = state["epoch"], state["step"]
        curve.append({"epoch": first, "step": step, "time_s": 0.0, **evaluate(cfg, model, images, src, rows, full=False)})
    t_train = time.time()
    for epoch in range(first, d.epochs):
        p1, p2, same = sample_pairs(src.principal[rows[lab]], n_pairs, d.oracle_prob, cfg.seed, epoch, d.pair_mode)
        p1, p2 = lab[p1], lab[p2]
        pu = unlabelled_walk(unl, n_pairs, cfg.seed, epoch) if len(unl) else None  # as the Ray stage's pair_table
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009)
        steps = n_pairs // d.batch_size
        sums: dict[str, float] = {}
        for b in range(steps):
            sl = slice(b * d.batch_size, (b + 1) * d.batch_size)
            x1 = to_float_images(torch.from_numpy(images[p1[sl]]))
            x2 = to_float_images(torch.from_numpy(images[p2[sl]]))
            betas = beta_schedule(epoch + b / steps, d)
            xu = to_float_images(torch.from_numpy(images[pu[sl]])) if pu is not None else None
            loss, terms, _ = detaux_loss(model, x1, x2, torch.from_numpy(same[sl]), betas, d,
                                         y1=labels[p1[sl]], y2=labels[p2[sl]], xu=xu)
            optimizer_step(opt, loss)
            step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        if not np.isfinite(float(loss.detach())):
            raise SystemExit(f"[{args.name}] non-finite loss in epoch {epoch}")
        msg = " ".join(f"{k}={v / steps:.4g}" for k, v in sums.items())
        if (epoch + 1) % args.every == 0 or epoch == d.epochs - 1:
            ev = evaluate(cfg, model, images, src, rows, full=epoch == d.epochs - 1)
            sep = ev["scorecard"]["principal_separation"]
            curve.append({"epoch": epoch + 1, "step": step, "time_s": round(time.time() - t_train, 1), **ev})
            msg += (f" | principal in alpha {sep['in_alpha']:.3f}, best other {sep['best_other']:.3f}; rec fg {ev['rec_fg']:.4f} "
                    f"bg {ev['rec_bg']:.4f}; variance " + " ".join(f"{v:.2g}" for v in ev["variance"]))
        print(f"[{args.name}] epoch {epoch + 1}/{d.epochs} {msg}", flush=True)
        if args.save_at and epoch + 1 == args.save_at:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1, "step": step,
                        "heads": heads}, args.state)
            print(f"[{args.name}] saved the state after epoch {epoch + 1} to {args.state}")
            return
    final = curve[-1]
    row = {"name": args.name, "preset": args.preset, "overrides": args.overrides, "decoder_output": args.decoder_output or "sigmoid",
           "rec_loss": args.rec_loss or "mse", "leaky_projectors": args.leaky_projectors,
           "rec_weight": args.rec_weight or "none", "steps": step,
           "labelled": int(len(lab)), "unlabelled_reconstructed": int(len(unl)),
           "train_time_s": round(time.time() - t_train, 1), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "date": time.strftime("%Y-%m-%d"), "final": final, "curve": curve}
    for crit, r in final["discovery"].items():
        if crit == "error":
            print(f"[{args.name}] discovery: {r}")
            continue
        print(f"[{args.name}] {crit}: subspace {r['subspace']} -> {r['best_factor']} H {r['homogeneity']:.3f} "
              f"C {r['completeness']:.3f} NMI(principal) {r['nmi_principal_aux']:.3f}")
    card = final["scorecard"]
    print(f"[{args.name}] scorecard ({', '.join(card['factors'])}):")
    for r, vals in zip(card["rows"], card["scores"]):
        print(f"  {r:>4}: " + " ".join(f"{v:5.2f}" for v in vals))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(row, indent=1))
    if args.embeddings:  # for comparing subspace criteria offline on the same embeddings
        np.savez_compressed(args.embeddings, s=embed(model, images), rows=rows, principal=src.principal[rows],
                            **{f"factor_{f}": v[rows] for f, v in src.factors.items() if f != src.principal_name})


if __name__ == "__main__":
    main()
