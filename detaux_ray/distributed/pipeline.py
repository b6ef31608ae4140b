"""The pieces of the Detaux pipeline on Ray that a recipe (`jobs/full_pipeline.py`) puts together: Ray start-up, a
stage runner (config hash, reuse, staging) and the stages' bodies (stage 1 and 3 on Ray Train, stage 2's embedding
on Ray Data, the rest in the core). Each stage reads the previous stage's artifacts from the run directory."""

from __future__ import annotations

import copy
import dataclasses
import errno
import functools
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import ray
import torch
import yaml

from ..artifacts import (RunLock, check_writable_dir, check_writable_storage, clean_stale_temporaries, copy_file,
                         load_torch, manifest, read_manifest, save_torch, staging_dir, verify_stage, write_json,
                         write_text, write_with)
from ..config import CONSTANT_LATENT_REMEDY, Config, apply_overrides, uses_constant_latent_remedy
from ..data import ImageSource, build_source
from ..discover.auxiliary import auxiliary_tasks, cluster_and_diagnose, discover
from ..mtl import tables
from ..disentangle.objective import latent_traversal, traversal_figure
from ..errors import ConfigError, ConstantLatentError, DataError, RunDirError
from ..disentangle.models import DisentangleAE
from ..tensors import to_float_images
from ..mtl.models import UNLABELLED
from ..report import write_report
from ..results import (STAGE_RESULTS, Ablation, DatasetInfo, DisentangleResult, DiscoverResult, FitResult, Report,
                       StageRun)
from . import train_disentangle, train_mtl
from .embed import embed, remote_clusterer
from .logs import filter_forwarded_logs, quiet_env, silence_worker_logs
from .streams import ImageCache, SourceImages, images_for
from .trainer import fits_held, run_concurrently


def ensure_ray(address: str = "", **init_kwargs) -> None:
    """Connect to `address` / RAY_ADDRESS (a cluster, `ray job submit`, or "auto" for the latest `ray start`),
    else start a private local Ray instance, never an unasked-for join of another instance on this machine."""
    if ray.is_initialized():
        return
    filter_forwarded_logs()  # before ray.init: the local instance's first notices pass through it too
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        train_env_defaults(local=False)  # start_local_ray sets the local ones
        env = quiet_env()
        if env and "runtime_env" not in init_kwargs:  # other nodes' workers do not inherit our environment
            init_kwargs["runtime_env"] = {"env_vars": env}
        ray.init(address=address, logging_level=logging.WARNING, **init_kwargs)
        _say(f"connected to the Ray cluster at {address}")
    else:
        gcs = start_local_ray(**init_kwargs)
        _say(f"started a local Ray instance (GCS {gcs}); to use a running cluster set resources.address or RAY_ADDRESS")
    ray.data.DataContext.get_current().enable_progress_bars = False


def train_env_defaults(local: bool) -> None:
    """Ray Train settings for this driver's fits, where the user has not set them (Train passes them from the
    driver's environment to its controller and workers).

    The controller polls its workers every 0.5 s instead of 2 s: a fit's end (and a failure) is noticed up to 1.5 s
    sooner, and a run makes dozens of fits. On a private local instance the preemption watcher is off: a node of
    one's own machine is never preempted, and the watcher is one more actor process per fit. Measured together on
    a 2-core box: a trivial 2-worker fit 14.2 -> 11.2 s."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if local:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def start_local_ray(**init_kwargs) -> str:
    """A new local Ray instance whose address every one of its processes knows (RAY_ADDRESS in their
    environment), so nothing inside Ray (Train's cleaner actors, the state API) searches the machine for "the"
    instance and fails when another one runs there ("Found multiple active Ray instances"). Returns the GCS
    address. The GCS port is chosen up front for that, as `ray start --port` would."""
    import socket

    filter_forwarded_logs()
    train_env_defaults(local=True)
    with socket.socket() as sock:  # a free port now; the GCS binds it a moment later
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    gcs = f"{ray.util.get_node_ip_address()}:{port}"
    os.environ["RAY_ADDRESS"] = gcs  # inherited by the raylet and every worker; ignored by address="local"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(address="local", **{"logging_level": logging.WARNING, **init_kwargs})
    except BaseException:
        os.environ.pop("RAY_ADDRESS", None)
        raise
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)
    return gcs


# Models that learn from labelled images only: STL, and the peers whose label generators work per principal class.
LABELLED_ONLY = ("stl", "maxl", "auxilearn")


def _with_restart(cfg: Config, r: int) -> Config:
    return dataclasses.replace(cfg, disentangle=dataclasses.replace(cfg.disentangle, restart=r))


def _say(msg: str) -> None:
    print(f"[pipeline] {msg}", flush=True)


class Pipeline:
    """The run directory, the data and the stages of one pipeline run; `jobs/full_pipeline.py` is the recipe.

    Each stage's artifacts go to `run_dir/<stage>`, or, with a `stage_store`, to `stage_store/<stage>/<hash>`, a
    store that several runs share (tuning trials): a stage whose config hash is already there is reused.
    `mtl_callbacks` are handed to the Ray Train trainer of the fit marked `tune_reports` (Tune reporting).
    """

    def __init__(self, cfg: Config, run_dir: Path, stage_store: Path | None = None, mtl_callbacks: list | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir).resolve()
        self.stage_store = Path(stage_store).resolve() if stage_store else None
        self.mtl_callbacks = mtl_callbacks
        self.source: ImageSource = build_source(cfg.data, cfg.seed)  # bad data config fails before Ray starts
        if len(self.source.test_rows()) == 0:
            raise DataError("the held-out split is empty: with data.heldout_hues, no image has both floor and wall "
                            "hue held out; raise data.n_images or change data.heldout_hues")
        d, world = cfg.disentangle, cfg.resources.num_workers
        n_pairs = d.pairs_per_epoch or len(self.source.train_rows())
        if n_pairs // world < d.batch_size:
            raise ConfigError(f"{n_pairs} pairs per epoch over {world} worker(s) is less than one batch of "
                              f"{d.batch_size}: raise disentangle.pairs_per_epoch or data.n_images, or lower the batch size")
        # Shared with every restart's view (`for_restart`), whose stage 1s may train at once: the images, built
        # once under the lock, the stage table and the stage running now (an interrupted run says which).
        self._shared = {"cache": None, "lock": threading.Lock(), "stage": ""}
        self.stages: dict[str, StageRun] = {}
        self.storage = cfg.resources.storage_path or str(self.run_dir / "checkpoints")
        self.fingerprint = self.source.fingerprint  # of the dataset's files: a changed dataset reruns every stage
        self._lock = RunLock(self.run_dir)
        # Where the stages write: `root` (run_dir, or run_dir/fallback after fall_back) holds stage 3; stages 1-2 go
        # to `stage_root`, root itself or, with disentangle.restarts > 1, root/restarts/<r> (`restart`).
        self.root, self.tb_root = self.run_dir, self.run_dir / "tensorboard"
        self.stage_root, self.tensorboard = self.root, self.tb_root
        self.fallback: dict | None = None  # set by fall_back(): why stage 1 ran again, and with what
        self.restarts: list[dict] | None = None  # set by keep(): each restart's stage 1 and discovery, one kept

    @property
    def current_stage(self) -> str:
        return self._shared["stage"]

    @current_stage.setter
    def current_stage(self, name: str) -> None:
        self._shared["stage"] = name

    @property
    def cache(self) -> ImageCache | SourceImages:
        with self._shared["lock"]:
            if self._shared["cache"] is None:
                t0 = time.time()
                cache = images_for(self.source, self.cfg.data.cache, self.cfg.resources.data_cpus)
                if isinstance(cache, ImageCache):
                    _say(f"{'rendered' if getattr(self.source.reader, 'renders', False) else 'read'} {len(self.source)} "
                         f"images into the object store in {time.time() - t0:.1f}s")
                else:
                    _say(f"streaming {len(self.source)} images from {self.cfg.data.path or 'the renderer'} (read per batch)")
                self._shared["cache"] = cache
            return self._shared["cache"]

    # The stage runner ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the run directory (and store), remove leftovers of killed runs, connect to / start Ray."""
        check_writable_dir(self.run_dir)
        self._lock.acquire()  # a second run on this run dir exits 6 naming the holder
        if self.stage_store is not None:
            check_writable_dir(self.stage_store, "stage store")
        if "://" in self.storage:  # Ray Train's checkpoints in a bucket: fail now, not at the first upload
            check_writable_storage(self.storage)
        elif self.cfg.resources.storage_path:
            check_writable_dir(Path(self.storage), "resources.storage_path")
        for folder in [self.run_dir] + ([self.stage_store / s for s in ("disentangle", "discover", "mtl")] if self.stage_store else []):
            removed = clean_stale_temporaries(folder) if folder.is_dir() else []
            if removed:
                _say(f"removed {len(removed)} leftover(s) of an interrupted run in {folder}: {', '.join(removed)}")
        ensure_ray(self.cfg.resources.address)

    def close(self) -> None:
        """Release the run directory (the lock also goes when the process ends)."""
        self._lock.release()

    def hash(self, stage: str) -> str:
        return self.cfg.stage_hash(stage, self.fingerprint)

    def stopped(self) -> str:
        """What an interrupted run says (Ctrl-C): where it stopped and how to resume; Ray's workers go quiet."""
        silence_worker_logs()
        where = f"during stage '{self.current_stage}'" if self.current_stage else "before any stage ran"
        return (f"stopped {where}. Finished stages and the newest checkpoint are kept in {self.run_dir}; run the same "
                f"command again to resume.")

    def stage_dir(self, name: str) -> Path:
        if self.stage_store is not None:
            return self.stage_store / name / self.hash(name)
        return (self.root if name == "mtl" else self.stage_root) / name

    def fall_back(self, exc: ConstantLatentError) -> None:
        """Discovery found every nuisance subspace constant: from here on the run uses stage 1's remedy formulation
        (config.CONSTANT_LATENT_REMEDY), its stages in run_dir/fallback/ and TensorBoard's tensorboard/fallback/,
        so the first stage 1 stays reusable and a rerun retraces the same path without training either again.
        Raises `exc` when the config already is the remedy: nothing is left to try."""
        measured = str(exc).split("; rerun with")[0]
        if uses_constant_latent_remedy(self.cfg):
            raise ConstantLatentError(f"{measured}; this run already used the remedy formulation "
                                      f"({', '.join(CONSTANT_LATENT_REMEDY)}): nothing else to try by itself; the "
                                      "earlier remedy (--set disentangle.confusion_after_warmup=true --set "
                                      "disentangle.spread_floor=0.5) or a lower disentangle.w_adversary (at 0 the "
                                      "nuisance subspaces of `digits` lived, holding the principal: "
                                      "docs/studies/2026-12-05-nuisance-collapse.md)") from None
        _say(f"stage 'discover': {exc}. Falling back: stage 1 again with {', '.join(CONSTANT_LATENT_REMEDY)}")
        first = self.stage_dir("disentangle")
        self.fallback = {"reason": measured, "overrides": list(CONSTANT_LATENT_REMEDY),
                         "first_stage_1": str(first.relative_to(self.run_dir) if first.is_relative_to(self.run_dir) else first)}
        self.cfg = apply_overrides(self.cfg, list(CONSTANT_LATENT_REMEDY))
        self.root, self.tb_root = self.run_dir / "fallback", self.run_dir / "tensorboard" / "fallback"
        self.stage_root, self.tensorboard = self.root, self.tb_root

    def restart(self, r: int) -> None:
        """Make stage 1 and discovery the r-th restart's (disentangle.restart = r: its own training seed, its own
        config hash); with disentangle.restarts > 1 their folders are <root>/restarts/<r>/ and stage 1's TensorBoard
        tensorboard/[fallback/]restart_<r>/."""
        self.cfg = _with_restart(self.cfg, r)
        if self.cfg.disentangle.restarts > 1:
            self.stage_root, self.tensorboard = self.root / "restarts" / str(r), self.tb_root / f"restart_{r}"

    def for_restart(self, r: int) -> Pipeline:
        """A view of this pipeline as restart r (`restart`): its own config and folders; the data, the stage table
        and the run directory shared, so that the restarts' stage 1s can train at once (`disentangle_side_by_side`)."""
        view = copy.copy(self)
        view.restart(r)
        return view

    def disentangle_side_by_side(self, views: list[Pipeline]) -> list[DisentangleResult]:
        """Stage 1 of each restart's view (`for_restart`), as many at once as the cluster holds
        (resources.concurrent_fits, or 0: `fits_held`); their results in order."""
        n = len(views)
        at_once = self.fits_at_once(n)
        # The fits of the last wave share the nodes among fewer (three restarts, two at once: the third trains alone)
        share = [min(at_once, n - i // at_once * at_once) for i in range(n)]
        return self._at_once([functools.partial(q.stage, "disentangle", functools.partial(q.disentangle, fits_at_once=k))
                              for q, k in zip(views, share)], at_once, "stage-1 restarts")

    def keep(self, found: list[tuple[DisentangleResult, DiscoverResult | ConstantLatentError]]) -> tuple[DisentangleResult, DiscoverResult]:
        """Of each restart's (stage 1, discovery) (`found[r]`), the one whose discovered classes score highest
        (`DiscoverResult.score`; the first on a tie); a restart whose nuisance latent was constant comes last. Makes
        it the run's stages 1-2 from here on. Raises the last restart's ConstantLatentError when every one was."""
        ok = [r for r, (_, s2) in enumerate(found) if isinstance(s2, DiscoverResult)]
        if not ok:
            self.restart(len(found) - 1)  # the fallback names the last restart's stage 1 as the first stage 1
            raise found[-1][1]
        if len(found) == 1:
            return found[0]
        best = max(ok, key=lambda r: (found[r][1].score, -r))
        self.restarts = []
        for r, (s1, s2) in enumerate(found):
            row = {"restart": r, "seed": _with_restart(self.cfg, r).stage1_seed, "kept": r == best,
                   "folder": str(self.root.relative_to(self.run_dir) / "restarts" / str(r)) if self.stage_store is None else None}
            if isinstance(s2, DiscoverResult):
                sep = (s2.scorecard or {}).get("principal_separation", {})
                row |= {"score": s2.score, "n_classes": s2.first.diagnostics.n_aux_classes,
                        "nmi_principal_aux": s2.first.diagnostics.nmi_principal_aux,
                        "principal_in_alpha": sep.get("in_alpha"), "principal_best_other": sep.get("best_other")}
            else:
                row["stopped"] = str(s2).split("; rerun with")[0]
            self.restarts.append(row)
        _say(f"kept restart {best} of {len(found)}: discovery's score " + ", ".join(
            f"{row['score']:.3f}" if row.get("score") is not None else "constant latent" for row in self.restarts))
        for name in ("disentangle", "discover"):  # the kept restart's stages under their plain names
            self.stages[name] = self.stages.pop(f"{name} (restart {best})")
        self.restart(best)
        self.tensorboard = self.tb_root
        return found[best]

    def stage(self, name: str, body):
        """Run `body(folder)` as stage `name`, unless its artifacts are complete for this config already; the
        folder is a staging copy renamed into place when the body returns. Returns the stage's typed result
        (`results.STAGE_RESULTS[name]`), the body's or the one its manifest holds."""
        stage_dir = self.stage_dir(name)
        h = self.hash(name)
        self.current_stage = name
        done, why_not = verify_stage(stage_dir, h, self.fingerprint)
        if why_not:
            _say(f"stage '{name}': not reusing {stage_dir}: {why_not}; running it again")
        if done:
            _say(f"stage '{name}' already complete for this config (hash {h}): reusing {stage_dir}")
            self.stages[self._stage_key(name)] = StageRun(done["wall_time_s"], True, h)
            return STAGE_RESULTS[name].from_dict(done)
        _say(f"stage '{name}' starting (config hash {h})")
        t0 = time.time()
        # In a shared store a concurrent run may finish the same stage first: keep its copy (same config), unless
        # what is there failed verification.
        with staging_dir(stage_dir, replace=self.stage_store is None or bool(why_not)) as tmp:
            try:
                result = body(tmp)
            except OSError as exc:  # a full disk under a library's own writer (TensorBoard, Parquet): exit 6
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise RunDirError(f"no space left while stage '{name}' wrote into {stage_dir.parent}: free some space "
                                  f"and rerun (the unfinished stage was not kept)") from None
            m = manifest(name, h, time.time() - t0, tmp, data_fingerprint=self.fingerprint, **result.to_dict())
            write_json(tmp / "manifest.json", m)
        self.stages[self._stage_key(name)] = StageRun(m["wall_time_s"], False, h)
        _say(f"stage '{name}' done in {m['wall_time_s']}s -> {stage_dir}")
        return STAGE_RESULTS[name].from_dict(read_manifest(stage_dir) or m)  # a concurrent run's copy, if it won

    def _stage_key(self, name: str) -> str:
        """The stage's name in the report's stage table: stages 1-2 of each restart apart (`keep` names the kept
        restart's plainly)."""
        d = self.cfg.disentangle
        return f"{name} (restart {d.restart})" if d.restarts > 1 and name != "mtl" else name

    def finish(self, s1: DisentangleResult, s2: DiscoverResult, s3) -> Report:
        """report.md / report.json / scorecard.png and the resolved config.yaml into the run directory."""
        src = self.source
        dataset = DatasetInfo(src.name, src.principal_name, src.n_principal_classes, len(src.train_rows()),
                              len(src.val_rows()), len(src.test_rows()), src.image_size, len(src.labelled_train_rows()))
        report = Report(dataset, s1, s2, s3, dict(self.stages), self.cfg.to_dict(), fallback=self.fallback,
                        restarts=self.restarts)
        png = self.stage_dir("discover") / "scorecard.png"
        if png.is_file():  # beside report.md, which shows it
            copy_file(png, self.run_dir / "scorecard.png")
            report.scorecard_png = "scorecard.png"
        trav = self.stage_dir("disentangle") / "traversals.png"
        if trav.is_file():
            copy_file(trav, self.run_dir / "traversals.png")
            report.traversal_png = "traversals.png"
        # The resolved config is written with the report (never before the stages), so the two always describe
        # the same run: a rerun that fails leaves the previous run's pair untouched.
        write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        write_report(self.run_dir, report)
        self.current_stage = ""
        _say(f"report: {self.run_dir / 'report.md'}")
        return report

    # Stage 1 ----------------------------------------------------------------------------------------------
    def disentangle(self, out: Path, fits_at_once: int = 1) -> DisentangleResult:
        """The product-manifold autoencoder with the principal oracle (Ray Train); model.pt. Its pairs come from
        the labelled training rows (the oracle needs both images' principal labels); the unlabelled ones are
        reconstructed beside them, so the autoencoder learns from every training image. `fits_at_once`: how many
        restarts' stage 1s train now."""
        src, d = self.source, self.cfg.disentangle
        res = train_disentangle.run(self.cfg, src.labelled_train_rows(), src.principal, self.cache,
                                    self.tensorboard / "disentangle", self.storage, probe=self._probe(),
                                    data_fingerprint=self.fingerprint, unlabelled_rows=src.unlabelled_train_rows(),
                                    fits_at_once=fits_at_once, label=f"restart {d.restart}" if d.restarts > 1 else "")
        save_torch(out / "model.pt", res["model"])
        self._traversals(res["model"], out / "traversals.png")
        return DisentangleResult("model.pt", res["epoch"] + 1, res["steps"], res["metrics"],
                                 {"image_size": self.cfg.data.image_size, "arch": d.arch, "k": d.k, "latent_dim": d.latent_dim},
                                 nodes=res["placement"]["nodes"], restarts=res["placement"]["restarts"])

    def _traversals(self, state: dict, path: Path) -> None:
        """Figure 3 of the paper as a PNG for the report: every subspace traversed between two training images of
        different principal classes."""
        src, d = self.source, self.cfg.disentangle
        rows = src.train_rows()
        other = np.flatnonzero(src.principal[rows] != src.principal[rows[0]])
        pair = rows[[0, other[0] if len(other) else min(1, len(rows) - 1)]]
        model = DisentangleAE.from_state(state, src.image_size, d.k, d.latent_dim, d.arch).eval()
        with torch.no_grad():
            x = to_float_images(torch.from_numpy(src.images(pair)))
            grid = latent_traversal(model, x[0], x[1], steps=8)
        write_with(path, lambda p: traversal_figure(grid, d.k, model.alpha, p))

    def _probe(self) -> dict:
        """A seeded sample of labelled training images for the TensorBoard scorecard (at most ~256 MB of pixels)."""
        src, d = self.source, self.cfg.disentangle
        rows = src.labelled_train_rows()
        cap = max(64, (256 << 20) // (3 * src.image_size ** 2))
        n = min(len(rows), d.scorecard_images, cap)
        pick = np.sort(np.random.default_rng([self.cfg.seed, 19]).choice(rows, n, replace=False))
        return {"rows": pick, "principal_name": src.principal_name, "principal": src.principal[pick],
                "factors": {f: v[pick] for f, v in src.factors.items()}}

    # Stage 2 ----------------------------------------------------------------------------------------------
    def discover(self, out: Path) -> DiscoverResult:
        """Embed every training image, labelled or not, with stage 1's encoder (Ray Data), then the core's
        `discovery.discover`: every training image gets an auxiliary label."""
        src, rows = self.source, self.source.train_rows()
        s = self._embed(self._stage1_model())
        return discover(s, rows, src.native_ids(rows), src.principal_name, src.principal[rows], self._factors(rows),
                        self.cfg, out, title=f"{src.name}: probe score per subspace (0 = chance, 1 = perfect)", say=_say,
                        labelled=src.is_labelled()[rows], clusterer=remote_clusterer(self.cfg.resources))

    def _stage1_model(self) -> dict:
        """Stage 1's model.pt, only from a stage folder complete for this config and dataset (its checksum too)."""
        folder = self.stage_dir("disentangle")
        done, why_not = verify_stage(folder, self.hash("disentangle"), self.fingerprint)
        if not done:
            raise RunDirError(f"{folder} is not stage 1 of this config ({why_not or 'not complete'}): it changed "
                              f"during this run; rerun (another run may be writing this folder)")
        return load_torch(folder / "model.pt")

    def _factors(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {f: v[rows] for f, v in self.source.factors.items()}

    def _embed(self, state: dict) -> np.ndarray:
        cfg, d, rows = self.cfg, self.cfg.disentangle, self.source.train_rows()
        t0 = time.time()
        res = cfg.resources  # as many embedding actors as training workers, each with a training worker's share
        s = embed(rows, state, cfg.data.image_size, d.k, d.latent_dim, self.cache, res.cpus_per_worker, res.use_gpu,
                  res.amp, n_actors=res.num_workers, arch=d.arch)
        _say(f"embedded {len(rows)} images on {d.k} subspaces in {time.time() - t0:.1f}s "
             f"({res.num_workers} actor{'s' if res.num_workers > 1 else ''} at most)")
        return s

    # Stage 3 ----------------------------------------------------------------------------------------------
    def labels(self) -> tuple[pa.Table, dict[str, int]]:
        """Stage 2's labels as the multi-task training table (row, principal, auxiliary...) and each task's classes."""
        labels = pq.read_table(self.stage_dir("discover") / "labels.parquet")
        rows = labels.column("row").to_numpy()
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.source)):
            raise RunDirError(f"{self.stage_dir('discover') / 'labels.parquet'} has rows outside 0..{len(self.source) - 1}: "
                              "it was not written for this dataset; delete the stage folder and rerun")
        tasks = auxiliary_tasks(self.cfg.discover.n_auxiliary)
        n_classes = {"principal": self.source.n_principal_classes,
                     **{t: int(labels.column(t).to_numpy().max()) + 1 for t in tasks}}
        # An unlabelled image (principal -1 in labels.parquet) trains the auxiliary heads only: its principal loss is masked.
        return labels.select(["row", "principal"] + tasks), n_classes

    def _eval_tables(self, tasks: list[str]) -> tuple[pa.Table, pa.Table | None]:
        src = self.source

        def principal_only(rows: np.ndarray) -> pa.Table:  # evaluation tables: the auxiliary columns are unused
            return pa.table({"row": rows, "principal": src.principal[rows],
                             **{t: np.zeros(len(rows), np.int64) for t in tasks}})

        return principal_only(src.test_rows()), principal_only(src.val_rows()) if len(src.val_rows()) else None

    def fit(self, kind: str, train: pa.Table, n_classes: dict[str, int], seed: int | None = None,
            tune_reports: bool = False, tb: str = "", tag: str = "", fits_at_once: int = 1) -> FitResult:
        """Train model `kind` (stl, hps, nddr, mti, maxl, auxilearn) on Ray Train; its held-out accuracy, size and
        time. `seed` replaces cfg.seed (init and data order); `tune_reports` hands it the Tune callbacks; `tag` keeps
        the checkpoints of runs on other labels (the ablation) apart; `fits_at_once`: how many fits run now."""
        cfg = self.cfg if seed is None else dataclasses.replace(self.cfg, seed=seed)
        # One TensorBoard run per model (tensorboard/mtl/<run>) with the same tag names, so the models' curves overlay.
        tb = tb or (kind if seed is None else f"{kind}_seed{seed}")
        more = f"{'/' + tag if tag else ''}{'' if seed is None else f' seed {seed}'}"  # tells apart the fits' lines
        label, name = kind + more, kind.upper() + more
        test, val = self._eval_tables([t for t in n_classes if t != "principal"])
        # With unlabelled images, every model gets as many steps, and the principal head as many labelled images per
        # step, as STL (mtl/tables.py): the multi-task model's extra is the auxiliary task on every image.
        n_images, n_lab = train.num_rows, tables.n_labelled(train)
        if kind in LABELLED_ONLY or set(n_classes) == {"principal"}:  # as a user without Detaux would train it
            train = tables.labelled_only(train)
            _say(f"training {name} for {cfg.mtl.epochs} epochs (seed {cfg.seed}) on {n_lab} images"
                 + (f", repeated to {train.num_rows} per epoch" if n_lab < train.num_rows else ""))
        elif 0 < n_lab < n_images:
            train = tables.labelled_beside_every_image(train)
            cfg = dataclasses.replace(cfg, mtl=dataclasses.replace(cfg.mtl, batch_size=2 * cfg.mtl.batch_size))
            _say(f"training {name} for {cfg.mtl.epochs} epochs (seed {cfg.seed}) on {n_images} images, {n_lab} with their "
                 f"principal label: each step {cfg.mtl.batch_size // 2} labelled images (repeated as STL's) beside "
                 f"{cfg.mtl.batch_size // 2} of all {n_images} for the auxiliary task")
        else:
            _say(f"training {name} for {cfg.mtl.epochs} epochs (seed {cfg.seed}) on {n_images} images")
        res = train_mtl.run(cfg, kind, train, test, n_classes, self.cache, self.tensorboard / "mtl" / tb, self.storage,
                            val_table=val, callbacks=self.mtl_callbacks if tune_reports else None, tag=tag,
                            fits_at_once=fits_at_once, label=label, data_fingerprint=self.fingerprint)
        _say(f"{name}: principal test accuracy {res.test_principal_accuracy:.4f}")
        return res

    def fit_many(self, fits: list[dict], train: pa.Table, n_classes: dict[str, int]) -> list[FitResult]:
        """Several `fit`s (each a dict of its keyword arguments: kind, seed, tune_reports, n_classes, ...), their
        results in order. They run `fits_at_once` at a time, each on a thread of this driver, sharing the cluster."""
        fits = [{"n_classes": n_classes, **f} for f in fits]  # a fit may name its own tasks (a control: principal only)
        at_once = self.fits_at_once(len(fits))
        return self._at_once([functools.partial(self.fit, train=train, fits_at_once=at_once, **f) for f in fits],
                             at_once, "fits")

    def _at_once(self, calls: list, at_once: int, what: str) -> list:
        """The calls (each a training fit), `at_once` at a time, each on a thread of this driver sharing the
        cluster; their results in order."""
        if at_once == 1:
            return [c() for c in calls]
        _say(f"{len(calls)} {what}, {at_once} at a time (resources.concurrent_fits)")
        _ = self.cache  # built once, here, not by the first threads at the same time
        return run_concurrently(calls, at_once)

    def fits_at_once(self, n_fits: int) -> int:
        """resources.concurrent_fits, or (0) as many as the cluster holds (`trainer.fits_held`); 1 inside a tuning
        trial, whose resources are sized for one fit at a time."""
        res = self.cfg.resources
        if self.mtl_callbacks is not None or n_fits <= 1:
            return 1
        return min(n_fits, res.concurrent_fits or fits_held(res))

    def entangled_ablation(self, out: Path, n_classes: dict[str, int]) -> Ablation:
        """Paper Sec. 5.3: the same autoencoder trained on L_rec alone (warm-up for every epoch: no oracle, no
        disentangling terms); its latent sum_i s_i (the decoder's input) is clustered and mtl.model trained on it."""
        cfg, src = self.cfg, self.source
        ae_cfg = dataclasses.replace(cfg, disentangle=dataclasses.replace(cfg.disentangle, warmup_frac=1.0, w_principal=0.0))
        _say("entangled ablation: training a plain autoencoder (L_rec only)")
        res = train_disentangle.run(ae_cfg, src.labelled_train_rows(), src.principal, self.cache,
                                    self.tensorboard / "entangled_ae", self.storage,
                                    data_fingerprint=self.fingerprint, unlabelled_rows=src.unlabelled_train_rows())
        z = self._embed(res["model"]).sum(axis=1)
        rows, known = src.train_rows(), src.is_labelled()[src.train_rows()]
        result, diag = cluster_and_diagnose(z, cfg.discover, cfg.seed, src.principal[rows], self._factors(rows),
                                            "entangled ablation: the plain autoencoder's latent", _say, known,
                                            remote_clusterer(cfg.resources))
        train = pa.table({"row": rows, "principal": np.where(known, src.principal[rows], UNLABELLED),
                          "auxiliary": result.labels})
        write_with(out / "entangled_labels.parquet", lambda p: pq.write_table(train, p))
        n = {"principal": n_classes["principal"], "auxiliary": int(result.labels.max()) + 1}
        fit = self.fit(cfg.mtl.model, train, n, tb=f"{cfg.mtl.model}_entangled", tag="entangled")
        fit.labels = "entangled autoencoder"
        return Ablation(fit, diag, result.method, res["steps"])
