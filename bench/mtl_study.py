"""Stage-3 study harness: STL vs multi-task models on a finished run's auxiliary labels, plain PyTorch (no Ray).

Reads `<run-dir>/discover/labels.parquet` and the run's `config.yaml`, renders / reads the same images, and trains
each variant over seeds the way the Ray stage does (same model builders, loss, optimizer, batch size and epochs; one
seeded shuffle per epoch, as the Ray stream's is where an epoch's table is one block), then reports the held-out
principal accuracy per seed, mean +/- sample std and Welch's p against STL. A variant is a name plus config
overrides, so loss weights and models compare one change at a time:

    python bench/mtl_study.py --run-dir runs/quick --seeds 3 --variant stl:stl --variant hps:hps \\
        --variant hps-unc:hps,mtl.loss_weighting=uncertainty --out r.json

Harness-only keys in a variant: `opt=adamw|sgd|taskadam` overrides mtl.optimizer (`train`; taskadam: `TaskAdam`);
`tasks=principal` trains the model's architecture on the principal task alone (the control for its size).
Trained on the batch rows the Ray stream gives, this harness gives the product's accuracies to the fourth digit
(docs/studies/2026-12-06-few-labels-auxiliary-gradient.md, section 7).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detaux_ray.config import load_config  # noqa: E402
from detaux_ray.data import build_source  # noqa: E402
from detaux_ray.tensors import to_float_images  # noqa: E402
from detaux_ray.mtl import tables  # noqa: E402
from detaux_ray.mtl.models import UNLABELLED, build_mtl_model, learning_rate, make_optimizer, multitask_loss  # noqa: E402
from detaux_ray.statistics import seed_statistics  # noqa: E402


HARNESS_KEYS = ("opt=", "tasks=")  # a variant's keys that are the harness's, not the config's


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = np.concatenate([model(to_float_images(torch.from_numpy(images[i:i + 512])))["principal"].argmax(1).numpy()
                           for i in range(0, len(images), 512)])
    model.train()
    return float((pred == y).mean())


class TaskAdam:
    """Adam whose moments are kept per task on the shared parameters (the harness's `opt=taskadam`).

    AdamW normalises each parameter's step by the root of its summed gradient's second moment, so where the principal
    task's gradient is ~0 the auxiliary task takes full-size steps whatever its loss weight. Here each task t has its
    own moments (m_t, v_t) of its unweighted gradient g_t, and a shared parameter moves by
        -lr * sum_t w_t * m_t_hat / (sqrt(v_t_hat) + eps)  (plus decoupled weight decay),
    so w_t scales the task's *step*; a task-specific parameter (a head) is plain AdamW on its own task's gradient.
    """

    def __init__(self, model: torch.nn.Module, tasks: list[str], weights: dict[str, float], lr: float,
                 weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.shared = list(model.backbone.parameters())
        self.heads = {t: list(model.heads[t].parameters()) for t in tasks}
        self.tasks, self.weights, self.lr, self.wd, self.betas, self.eps = tasks, weights, lr, weight_decay, betas, eps
        self.state = {t: [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.shared + self.heads[t]] for t in tasks}
        self.step_n = 0

    @torch.no_grad()
    def _adam(self, t: str, i: int, g: torch.Tensor) -> torch.Tensor:
        m, v = self.state[t][i]
        b1, b2 = self.betas
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        return (m / (1 - b1 ** self.step_n)) / ((v / (1 - b2 ** self.step_n)).sqrt() + self.eps)

    def step(self, losses: dict[str, torch.Tensor]) -> None:
        self.step_n += 1
        grads = {}
        for j, t in enumerate(self.tasks):
            params = self.shared + self.heads[t]
            grads[t] = torch.autograd.grad(losses[t], params, retain_graph=j < len(self.tasks) - 1, allow_unused=True)
        with torch.no_grad():
            for i, p in enumerate(self.shared):
                upd = sum(self.weights[t] * self._adam(t, i, grads[t][i]) for t in self.tasks if grads[t][i] is not None)
                p.mul_(1 - self.lr * self.wd).sub_(self.lr * upd)
            for t in self.tasks:
                for i, p in enumerate(self.heads[t]):
                    k = len(self.shared) + i
                    p.mul_(1 - self.lr * self.wd).sub_(self.lr * self.weights[t] * self._adam(t, k, grads[t][k]))


def train(cfg, kind: str, images: np.ndarray, targets: dict[str, np.ndarray], test: tuple[np.ndarray, np.ndarray],
          seed: int, iid_test: tuple[np.ndarray, np.ndarray] | None = None, opt_name: str = "config",
          val: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """One model `kind` (stl, hps, nddr, mti) on the tasks in `targets` (principal only for stl); per-epoch test
    accuracy, and the final accuracy on `iid_test` (images held out of the training split) when given; per-epoch
    accuracy on `val` when given (what a setting is chosen on).
    `opt_name`: config (mtl.optimizer, the product's) | adamw | sgd | taskadam (`TaskAdam`, hps)."""
    m = cfg.mtl
    tasks = ["principal"] if kind == "stl" else list(targets)
    n_classes = {t: int(targets[t].max()) + 1 for t in tasks}
    torch.manual_seed(seed)
    model = build_mtl_model(kind, n_classes, m.width, m.loss_weighting, m.backbone, cfg.data.image_size, m.pretrained,
                            m.aux_gradient)
    model = model.to(memory_format=torch.channels_last)
    weights = model.loss_weights if hasattr(model, "loss_weights") else {
        t: m.principal_weight if t == "principal" else m.auxiliary_weight for t in tasks}
    if opt_name == "taskadam":
        opt = TaskAdam(model, tasks, weights, m.lr, m.weight_decay)
    else:
        opt = make_optimizer(model, m.optimizer if opt_name == "config" else opt_name, m.lr, m.weight_decay, m.momentum)
    y = {t: torch.from_numpy(targets[t].astype(np.int64)) for t in tasks}
    # Few labels (principal UNLABELLED on some rows): the product's tables (mtl/tables.py), on row indices. STL and
    # principal-only models train on the labelled rows repeated up to every image's count; a multi-task model on that
    # beside every image with its principal masked, at twice the batch.
    n = len(images)
    table = pa.table({"row": np.arange(n), "principal": targets["principal"].astype(np.int64)})
    if 0 < tables.n_labelled(table) < n:
        table = tables.labelled_only(table) if tasks == ["principal"] else tables.labelled_beside_every_image(table)
    rows_per_epoch, principal_per_row = table.column("row").to_numpy(), torch.from_numpy(table.column("principal").to_numpy())
    bs = m.batch_size * table.num_rows // n  # twice the batch where the table is twice the rows
    curve, ce_curve, val_curve, t0 = [], [], [], time.time()
    for epoch in range(m.epochs):
        lr = learning_rate(m.lr, epoch, m.epochs, m.lr_schedule)
        if isinstance(opt, TaskAdam):
            opt.lr = lr
        else:
            for group in opt.param_groups:
                group["lr"] = lr
        order = np.random.default_rng([seed, epoch]).permutation(len(rows_per_epoch))
        ces = {t: 0.0 for t in tasks}
        for b in range(len(order) // bs):
            pos = order[b * bs:(b + 1) * bs]
            idx = rows_per_epoch[pos]
            out = model(to_float_images(torch.from_numpy(images[idx])))
            batch_y = {t: y[t][idx] for t in tasks} | {"principal": principal_per_row[pos]}
            if isinstance(opt, TaskAdam):
                opt.step({t: torch.nn.functional.cross_entropy(out[t], batch_y[t]) for t in tasks})
                continue
            loss, per_task = multitask_loss(out, batch_y, weights)
            for t in tasks:
                ces[t] += float(per_task[t])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        curve.append(round(accuracy(model, *test), 4))
        ce_curve.append({t: round(v / max(len(order) // bs, 1), 4) for t, v in ces.items()})
        if val is not None:
            val_curve.append(round(accuracy(model, *val), 4))
    out = {"test_principal_accuracy": curve[-1], "curve": curve, "train_ce": ce_curve, "time_s": round(time.time() - t0, 1)}
    if val is not None:
        out |= {"val_principal_accuracy": val_curve[-1], "val_curve": val_curve}
    if iid_test is not None:
        out["iid_principal_accuracy"] = round(accuracy(model, *iid_test), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a finished pipeline run (config.yaml, discover/labels.parquet)")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:MODEL[,KEY=VALUE...]",
                    help="a model (stl, hps, nddr, mti) to train under a name, with config overrides (repeatable); the "
                         "variant named 'stl' is the baseline of the t-tests")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iid-test", type=float, default=0.0, metavar="FRAC",
                    help="also hold out this seeded fraction of the training split as a second test set, from the "
                         "training distribution (on shapes the test split's floor / wall hue combinations are unseen)")
    ap.add_argument("--train-frac", type=float, default=1.0, metavar="FRAC",
                    help="train on this seeded fraction of the training split only (the same images for every variant "
                         "and seed; the rest unused): does the auxiliary task help when principal labels are scarce?")
    ap.add_argument("--val-unlabelled", type=int, default=0, metavar="N",
                    help="few labels: take N seeded unlabelled training images out of training, with their true principal "
                         "labels, as a validation set (a setting is chosen on it, never on the test split)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    base = load_config(str(run / "config.yaml"), [])
    src = build_source(base.data, base.seed)
    labels = pq.read_table(run / "discover" / "labels.parquet").to_pydict()
    rows = np.asarray(labels["row"])
    targets = {t: np.asarray(v) for t, v in labels.items() if t == "principal" or t.startswith("auxiliary")}
    t0 = time.time()
    images, test_rows = src.images(rows), src.test_rows()
    test = (src.images(test_rows), src.principal[test_rows])
    iid = None
    if args.iid_test > 0:  # the same held-out rows for every variant and seed
        held = np.zeros(len(rows), bool)
        held[np.random.default_rng(base.seed).permutation(len(rows))[:int(args.iid_test * len(rows))]] = True
        iid = (images[held], targets["principal"][held])
        images, targets = images[~held], {t: v[~held] for t, v in targets.items()}
    if args.train_frac < 1.0:  # a seeded subset, drawn after the iid hold-out so both stay disjoint
        keep = np.sort(np.random.default_rng([base.seed, 1]).permutation(len(images))[:int(args.train_frac * len(images))])
        images, targets = images[keep], {t: v[keep] for t, v in targets.items()}
    val = None
    if args.val_unlabelled:  # seeded unlabelled rows out of training, scored with the labels the user did not give
        if args.iid_test or args.train_frac < 1.0:  # both re-index the rows; the true labels below follow `rows`
            raise SystemExit("--val-unlabelled does not combine with --iid-test / --train-frac")
        unl = np.flatnonzero(targets["principal"] == UNLABELLED)
        if len(unl) < args.val_unlabelled:
            raise SystemExit(f"--val-unlabelled {args.val_unlabelled}: the run has {len(unl)} unlabelled training images")
        held = np.zeros(len(images), bool)
        held[np.random.default_rng([base.seed, 2]).permutation(unl)[:args.val_unlabelled]] = True
        val = (images[held], src.principal[rows][held])
        images, targets = images[~held], {t: v[~held] for t, v in targets.items()}
    print(f"{len(images)} training / {len(test_rows)} test{f' / {len(iid[1])} iid test' if iid else ''} images in "
          f"{time.time() - t0:.1f}s", flush=True)
    seeds = [base.seed + i for i in range(args.seeds)]
    acc, iid_acc, val_acc, runs = {}, {}, {}, {}
    for spec in args.variant:
        name, _, rest = spec.partition(":")
        kind, *sets = rest.split(",")
        harness = dict(x.split("=", 1) for x in sets if x.startswith(HARNESS_KEYS))
        cfg = load_config(str(run / "config.yaml"), [x for x in sets if not x.startswith(HARNESS_KEYS)])
        # tasks=principal: the model's architecture on the principal task alone (the control for its own size)
        fit_targets = {"principal": targets["principal"]} if harness.get("tasks") == "principal" else targets
        for seed in seeds:
            r = train(cfg, kind, images, fit_targets, test, seed, iid, harness.get("opt", "config"), val)
            acc.setdefault(name, []).append(r["test_principal_accuracy"])
            if iid:
                iid_acc.setdefault(name, []).append(r["iid_principal_accuracy"])
            runs.setdefault(name, []).append(r)
            extra = (f", iid {r['iid_principal_accuracy']:.4f}" if iid else "") + (
                f", val {r['val_principal_accuracy']:.4f} (curve {r['val_curve']})" if val else "")
            if val:
                val_acc.setdefault(name, []).append(r["val_principal_accuracy"])
            print(f"[{name}] seed {seed}: {r['test_principal_accuracy']:.4f}{extra} (curve {r['curve']}, {r['time_s']}s)",
                  flush=True)
    stats = seed_statistics(seeds, acc, "")
    iid_stats = seed_statistics(seeds, iid_acc, "") if iid else None
    val_stats = seed_statistics(seeds, val_acc, "") if val else None
    for which, st in (("val", val_stats), ("test", stats), ("iid test", iid_stats)):
        for name, row in (st.models.items() if st else []):
            p = f", Welch p vs stl {row['p_value']:.3g}" if "p_value" in row else ""
            print(f"{which}: {name}: {row['mean']:.4f} +/- {row['std']:.4f}{p}")
    if args.out:
        out = {"run_dir": str(run), "variants": args.variant, "seeds": seeds, "statistics": stats.to_dict(), "runs": runs,
               "iid_test_frac": args.iid_test, "train_frac": args.train_frac,
               "iid_statistics": iid_stats.to_dict() if iid_stats else None,
               "val_unlabelled": args.val_unlabelled, "val_statistics": val_stats.to_dict() if val_stats else None,
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "date": time.strftime("%Y-%m-%d")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
