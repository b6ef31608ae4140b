"""The Detaux pipeline on Ray: disentangle -> discover -> multi-task learning, each stage reading the previous
stage's artifacts from the run directory and skipped when already complete for the same config."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import yaml

from ..artifacts import load_torch, manifest, save_torch, stage_complete, staging_dir, write_json, write_text
from ..clustering import cluster
from ..config import Config
from ..data import ImageSource, build_source
from ..discovery import choose_subspace, diagnostics, subspace_scores
from ..errors import ConfigError, DataError
from ..report import build_report, write_report
from . import train_disentangle, train_mtl
from .discover import embed
from .streams import ImageCache


def ensure_ray(address: str = "") -> None:
    """Connect to `address` / RAY_ADDRESS (a cluster or `ray job submit`), else start a local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    ray.init(address=address or None, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _say(msg: str) -> None:
    print(f"[pipeline] {msg}", flush=True)


class Pipeline:
    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir).resolve()
        self.source: ImageSource = build_source(cfg.data, cfg.seed)  # bad data config fails before Ray starts
        if len(self.source.test_rows()) == 0:
            raise DataError("the held-out split is empty: with data.heldout_hues, no image has both floor and wall "
                            "hue held out; raise data.n_images or change data.heldout_hues")
        d, world = cfg.disentangle, cfg.resources.num_workers
        n_pairs = d.pairs_per_epoch or len(self.source.train_rows())
        if n_pairs // world < d.batch_size:
            raise ConfigError(f"{n_pairs} pairs per epoch over {world} worker(s) is less than one batch of "
                              f"{d.batch_size}: raise disentangle.pairs_per_epoch or data.n_images, or lower the batch size")
        self._cache: ImageCache | None = None
        self.stages: dict[str, dict] = {}
        self.storage = cfg.resources.storage_path or str(self.run_dir / "checkpoints")

    @property
    def cache(self) -> ImageCache:
        if self._cache is None:
            t0 = time.time()
            self._cache = ImageCache.build(self.source, self.cfg.resources.data_cpus)
            _say(f"rendered {len(self.source)} images into the object store in {time.time() - t0:.1f}s")
        return self._cache

    def run(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        ensure_ray(self.cfg.resources.address)
        s1 = self._stage("disentangle", self._disentangle)
        s2 = self._stage("discover", self._discover)
        s3 = self._stage("mtl", self._mtl)
        src = self.source
        dataset = {"name": src.name, "principal": src.principal_name, "n_principal_classes": src.n_principal_classes,
                   "n_train": int((~src.is_test).sum()), "n_test": int(src.is_test.sum()), "image_size": src.image_size}
        report = build_report(self.cfg.to_dict(), dataset, s1, s2, s3, self.stages)
        write_report(self.run_dir, report)
        _say(f"report: {self.run_dir / 'report.md'}")
        return report

    def _stage(self, name: str, fn) -> dict:
        stage_dir = self.run_dir / name
        h = self.cfg.stage_hash(name)
        done = stage_complete(stage_dir, h)
        if done:
            _say(f"stage '{name}' already complete for this config (hash {h}): reusing {stage_dir}")
            self.stages[name] = {"wall_time_s": done["wall_time_s"], "reused": True}
            return done
        _say(f"stage '{name}' starting (config hash {h})")
        t0 = time.time()
        with staging_dir(stage_dir) as tmp:
            info = fn(tmp)
            m = manifest(name, h, time.time() - t0, **info)
            write_json(tmp / "manifest.json", m)
        self.stages[name] = {"wall_time_s": m["wall_time_s"], "reused": False}
        _say(f"stage '{name}' done in {m['wall_time_s']}s -> {stage_dir}")
        return m

    # Stage 1 ----------------------------------------------------------------------------------------------
    def _disentangle(self, out: Path) -> dict:
        rows = self.source.train_rows()
        res = train_disentangle.run(self.cfg, rows, self.source.principal, self.cache,
                                    self.run_dir / "tensorboard" / "disentangle", self.storage,
                                    self.run_dir)
        save_torch(out / "model.pt", res["model"])
        d = self.cfg.disentangle
        return {"model": "model.pt", "epochs": res["epoch"] + 1, "steps": res["steps"], "metrics": res["metrics"],
                "architecture": {"image_size": self.cfg.data.image_size, "k": d.k, "latent_dim": d.latent_dim}}

    # Stage 2 ----------------------------------------------------------------------------------------------
    def _discover(self, out: Path) -> dict:
        cfg, src = self.cfg, self.source
        d, disc = cfg.disentangle, cfg.discover
        state = load_torch(self.run_dir / "disentangle" / "model.pt")
        rows = src.train_rows()
        t0 = time.time()
        s = embed(rows, state, cfg.data.image_size, d.k, d.latent_dim, self.cache, cfg.resources.data_cpus,
                  cfg.resources.use_gpu, cfg.resources.amp)
        _say(f"embedded {len(rows)} images on {d.k} subspaces in {time.time() - t0:.1f}s")
        principal = src.principal[rows]
        scores = subspace_scores(s, principal, d.principal_subspace, d.margin, d.oracle_prob, cfg.seed)
        j = choose_subspace(scores, disc.criterion, d.principal_subspace, disc.dead_subspace_frac)
        _say(f"auxiliary subspace: {j} (criterion {disc.criterion}); clustering {len(rows)} points with {disc.clusterer}")
        t0 = time.time()
        result = cluster(s[:, j], disc, cfg.seed)
        _say(f"{result.method} found {result.n_clusters} clusters{' + noise' if result.has_noise_label else ''} "
             f"in {time.time() - t0:.1f}s")
        diag = diagnostics(result.labels, principal, {f: v[rows] for f, v in src.factors.items()})
        pq.write_table(pa.table({"row": rows, "id": src.ids[rows] if src.ids is not None else rows,
                                 "principal": principal, "auxiliary": result.labels}), out / "labels.parquet")
        emb = s[:, j].astype(np.float32)
        pq.write_table(pa.table({"row": rows, "embedding": pa.FixedSizeListArray.from_arrays(emb.reshape(-1), emb.shape[1])}),
                       out / "embeddings.parquet")
        info = {"chosen_subspace": j, "criterion": disc.criterion, "clusterer": result.method,
                "clusterer_params": result.params, "has_noise_label": result.has_noise_label,
                "subspace_scores": {k: v.tolist() for k, v in scores.items()}, "diagnostics": diag}
        write_json(out / "diagnostics.json", info)
        return info

    # Stage 3 ----------------------------------------------------------------------------------------------
    def _mtl(self, out: Path) -> dict:
        src = self.source
        labels = pq.read_table(self.run_dir / "discover" / "labels.parquet")
        aux = labels.column("auxiliary").to_numpy()
        train = pa.table({"row": labels.column("row"), "principal": labels.column("principal"), "auxiliary": labels.column("auxiliary")})
        test_rows = src.test_rows()
        test = pa.table({"row": test_rows, "principal": src.principal[test_rows], "auxiliary": np.zeros(len(test_rows), np.int64)})
        n_classes = {"principal": src.n_principal_classes, "auxiliary": int(aux.max()) + 1}
        tb, ckpt = self.run_dir / "tensorboard" / "mtl", self.storage
        results = {}
        for key, kind in (("stl", "stl"), ("mtl", self.cfg.mtl.model)):
            _say(f"training {kind.upper()} for {self.cfg.mtl.epochs} epochs")
            results[key] = train_mtl.run(self.cfg, kind, train, test, n_classes, self.cache, tb, ckpt, self.run_dir)
            _say(f"{kind.upper()}: principal test accuracy {results[key]['test_principal_accuracy']:.4f}")
        write_json(out / "results.json", results)
        return {"results": results, "n_classes": n_classes}
