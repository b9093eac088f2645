"""Lightning pieces of extraction: the model wrapper, the image data module and the feature writer."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from torch.utils.data import DataLoader, Dataset

from ris.embed.cache import copy_rows
from ris.images import ImageReadError, open_image
from ris.progress import Progress, on_terminal

log = logging.getLogger(__name__)


class EmbeddingModule(pl.LightningModule):
    """A frozen backbone whose ``predict_step`` returns (optionally L2-normalised) pooled embeddings.

    With ``mean`` and ``std``, batches arrive as uint8 (:func:`ris.embed.preprocess.eval_transform`) and are scaled to [0, 1] and
    normalised here, with the same float32 operations in the same order as timm's ToTensor + Normalize, so the
    embeddings are bit for bit those of per-image preprocessing. With ``channels_last``, weights and batches are
    laid out NHWC: convolutions then skip the layout conversions oneDNN (CPU) and cuDNN (tensor cores) would
    otherwise make on every layer.
    """

    def __init__(self, backbone: torch.nn.Module, normalize: bool = True, channels_last: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 compile: bool = False) -> None:
        super().__init__()
        self.backbone = backbone.to(memory_format=torch.channels_last) if channels_last else backbone
        self.normalize = normalize
        self.channels_last = channels_last
        # With compile, predict_step compiles the module on its first batch (compile_frozen) and pads every smaller
        # batch to that size, so the last batch does not compile again.
        self.compile_model = compile
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.compiled_batch = 0
        self.compile_tried = False
        self.scales_input = mean is not None
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (uint8 input) or neither (normalised float input)")
        self.register_buffer("mean", torch.tensor(mean or (0.0,) * 3, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0,) * 3, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.scales_input:
            images = images.to(torch.float32).div_(255).sub_(self.mean).div_(self.std)
        features = self.backbone(images)
        return torch.nn.functional.normalize(features, dim=1) if self.normalize else features

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        images, rows = batch
        return {"rows": rows, "features": self.embed(images).float()}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The forward pass, compiled when ``compile`` was asked and compiling worked (else eager)."""
        if self.compile_model and not self.compile_tried:
            self.compile_tried = True
            compiled, failure = compile_frozen(self, images)
            # Kept out of the module tree (object.__setattr__): as a submodule it would wrap this module in itself.
            object.__setattr__(self, "compiled", compiled)
            self.compiled_batch = len(images)
            if failure:
                log.warning("embedding with the eager model: %s", failure)
        if self.compiled is None or len(images) > self.compiled_batch:
            return self(images)
        missing = self.compiled_batch - len(images)
        if not missing:
            return self.compiled(images)
        # Images are embedded independently (eval mode), so zero padding changes no row's embedding.
        padded = torch.cat([images, images.new_zeros(missing, *images.shape[1:])])
        return self.compiled(padded)[:len(images)]


def compile_frozen(module: torch.nn.Module, sample: torch.Tensor
                   ) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str | None]:
    """``module`` under ``torch.compile`` (Inductor, frozen weights: BatchNorm folds into the convolutions and no
    Python runs per layer) for inputs shaped like ``sample``, checked against the eager module on ``sample``.

    Returns (the compiled module, None), or (None, why not): any failure (no C++ compiler, an operation Inductor
    cannot compile, outputs that differ) leaves the caller on the eager module. Call it under inference mode, as
    the compiled module will run: otherwise it compiles for the wrong guards and compiles again on first use.
    """
    import torch._inductor.config as inductor_config

    # Process-wide settings. Freezing as a torch.compile option instead gave 63 images/s, not 114 (one image, one
    # thread). In a forked child (extraction's ranks) Inductor's pool of compile workers hung: compile in-process.
    inductor_config.freezing = True
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        inductor_config.compile_threads = 1
    try:
        compiled = torch.compile(module, dynamic=False)
        expected, got = module(sample), compiled(sample)
    except Exception as error:  # noqa: BLE001 (torch.compile fails in many ways; eager always works)
        return None, f"torch.compile failed ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
    if not torch.allclose(got.float(), expected.float(), atol=1e-4):
        return None, f"the compiled model's output differs from the eager model's by {(got - expected).abs().max():.2e}"
    return compiled, None


class ImageFileDataset(Dataset):
    """Images decoded as people see them (:func:`ris.images.open_image`, as queries are), with their row number.

    With ``sha256`` (the catalogue's hash of each file), every file read is checked against it: the embedding is
    stored under that hash, so a file changed since it was catalogued (a folder catalogued in place, edited) stops
    extraction instead of being embedded under another image's identity.
    """

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor],
                 sha256: Sequence[str] | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.sha256 = None if sha256 is None else list(sha256)
        if self.sha256 is not None and len(self.sha256) != len(self.paths):
            raise ValueError(f"{len(self.sha256)} hashes for {len(self.paths)} image paths")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        path = self.paths[row]
        if self.sha256 is None:
            return self.transform(open_image(path)), row
        try:
            data = path.read_bytes()
        except OSError:
            return self.transform(open_image(path)), row  # open_image raises the one-line reason
        if hashlib.sha256(data).hexdigest() != self.sha256[row]:
            raise ImageReadError(f"{path}: its content changed since the collection was catalogued (sha256 differs): "
                                 "catalogue it again with `dvc repro -f download`")
        return self.transform(open_image(data, name=str(path))), row


class ImageDataModule(pl.LightningDataModule):
    """Serves a fixed list of image files, in order, for ``Trainer.predict``."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor], batch_size: int = 32,
                 num_workers: int = 2, sha256: Sequence[str] | None = None) -> None:
        super().__init__()
        self.dataset = ImageFileDataset(paths, transform, sha256)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=False)


SHARD_FILE = "shard-{rank}.npy"  # one per rank: the whole matrix's shape, written only at that rank's rows
SHARD_ROWS_FILE = "shard-{rank}-rows.npy"  # the rows that rank wrote, saved when its prediction has finished


class ShardWriter(BasePredictionWriter):
    """Each rank writes its batches' outputs into its own memory-mapped ``.npy`` in ``folder``, at their rows.

    A shard has the whole matrix's shape (its file is sparse: only the pages of rows written take disk) and, once
    the rank's prediction has finished, a list of the rows it wrote; :func:`merge_shards` assembles them in dataset
    order. One process (``devices=1``) writes one shard that is the matrix itself. The matrix's shape after the rows
    is the model's output: a width, or the channels x height x width of activation maps.
    """

    def __init__(self, folder: Path, rows: int, dtype: type = np.float32) -> None:
        super().__init__(write_interval="batch")
        self.folder = folder
        self.rows = rows
        self.dtype = dtype
        self.matrix: np.memmap | None = None
        self.written: list[np.ndarray] = []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: dict[str, Any],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        features = prediction["features"].cpu().numpy()
        rows = prediction["rows"].cpu().numpy()
        if self.matrix is None:
            self.matrix = np.lib.format.open_memmap(self.folder / SHARD_FILE.format(rank=trainer.global_rank),
                                                    mode="w+", dtype=self.dtype, shape=(self.rows, *features.shape[1:]))
        self.matrix[rows] = features
        self.written.append(rows)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs in every rank's own process: flush its shard, then say which rows it holds.
        if self.matrix is not None:
            self.matrix.flush()
            self.matrix = None
        rows = np.concatenate(self.written) if self.written else np.zeros(0, np.int64)
        np.save(self.folder / SHARD_ROWS_FILE.format(rank=trainer.global_rank), rows)


def merge_shards(folder: Path, rows: int, into: Path) -> np.memmap:
    """The matrix of every rank's shard in ``folder``, in dataset order, written to ``into`` and memory-mapped.

    Raises:
        RuntimeError: a row no rank wrote (a rank failed or was killed), or a shard unlike the others.
    """
    ranks = sorted(int(path.name.split("-")[1]) for path in folder.glob(SHARD_ROWS_FILE.format(rank="*")))
    written = {rank: np.load(folder / SHARD_ROWS_FILE.format(rank=rank)) for rank in ranks}
    covered = np.zeros(rows, bool)
    for rank_rows in written.values():
        covered[rank_rows] = True
    if not covered.all():
        raise RuntimeError(f"the prediction wrote {int(covered.sum())} of {rows} rows "
                           f"({len(ranks)} shards in {folder}): a rank failed or was stopped")
    shards = {rank: np.load(folder / SHARD_FILE.format(rank=rank), mmap_mode="r") for rank in ranks
              if len(written[rank])}
    if len(shards) == 1:  # one process wrote everything: its shard is the matrix
        (rank, shard), = shards.items()
        if len(shard) != rows:
            raise RuntimeError(f"the shard in {folder} holds {len(shard)} rows, not {rows}")
        del shard
        shutil.move(folder / SHARD_FILE.format(rank=rank), into)
        return np.load(into, mmap_mode="r")
    first = next(iter(shards.values()))
    if any(shard.shape != first.shape or shard.dtype != first.dtype or len(shard) != rows
           for shard in shards.values()):
        raise RuntimeError(f"the shards in {folder} differ in shape or type, or do not hold {rows} rows")
    matrix = np.lib.format.open_memmap(into, mode="w+", dtype=first.dtype, shape=first.shape)
    for rank, shard in shards.items():
        copy_rows(shard, written[rank], matrix, written[rank])
    matrix.flush()
    del matrix, shards, first
    return np.load(into, mmap_mode="r")


@dataclass(frozen=True)
class ClusterLaunch:
    """Ranks started by torchrun or SLURM's ``srun``, every one running the stage itself (on one machine or many):
    how many there are, which one this process is, how many run on each machine, and the launch's id (the same on
    every rank)."""

    rank: int
    world_size: int
    per_node: int
    run_id: str

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // self.per_node)


def cluster_launch() -> ClusterLaunch | None:
    """The launch this process is one rank of, when torchrun or ``srun`` started several; None when ris starts its
    own ranks (or runs alone)."""
    if TorchElasticEnvironment.detect():
        launch = ClusterLaunch(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                               int(os.environ["LOCAL_WORLD_SIZE"]), os.environ.get("TORCHELASTIC_RUN_ID", "torchrun"))
    elif SLURMEnvironment.detect():
        tasks, nodes = int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_NNODES", "1"))
        launch = ClusterLaunch(int(os.environ["SLURM_PROCID"]), tasks, max(1, tasks // nodes),
                               f"{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}")
    else:
        return None
    return launch if launch.world_size > 1 else None


@contextmanager
def scratch_folder(prefix: str, beside: Path | None = None) -> Iterator[Path]:
    """A scratch folder, removed at the end. Alone: a private temporary folder (beside ``beside``, or in the
    system's). Under a cluster launch: the one folder every rank shares, named by the launch's id beside ``beside``
    (which must be on storage all machines see), made by each rank and removed by rank 0, the one that merges."""
    launch = cluster_launch()
    if launch is None:
        with tempfile.TemporaryDirectory(prefix=prefix, dir=beside) as folder:
            yield Path(folder)
        return
    if beside is None:
        raise ValueError("under torchrun or srun, ranks share a scratch folder beside their output: give one")
    folder = beside / f".{prefix}{launch.run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        if launch.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)


def resolve_devices(devices: int | str, accelerator: str) -> int:
    """How many processes extraction runs: ``devices``, or for ``auto`` every GPU, or one per CPU core; under a
    cluster launch, the launcher's processes on this machine."""
    launch = cluster_launch()
    if launch is not None:
        return launch.per_node
    if devices != "auto":
        return int(devices)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return max(1, torch.cuda.device_count()) if on_gpu else max(1, len(os.sched_getaffinity(0)))


def predict_matrix(module: pl.LightningModule, data: ImageDataModule, into: Path, *, accelerator: str,
                   devices: int | str, strategy: str, precision: str, progress: bool, dtype: type = np.float32,
                   what: str = "embedding") -> str:
    """Run ``Trainer.predict`` of ``module`` over ``data`` on ``devices`` processes (``strategy``, when more than
    one) and write the outputs, in dataset order, to ``into`` (``.npy``); return the device's name.

    The ranks' shards go to a scratch folder beside ``into``, so a killed run leaves nothing at ``into``. Lightning
    gives each of N processes on a CPU cores/N threads: the caller's thread settings are restored afterwards.
    With ``progress``, a terminal shows Lightning's bar and a log file gets a line with rate and ETA every 30 s,
    headed ``what``.

    Under torchrun or ``srun`` (:func:`cluster_launch`) the launcher's ranks are the processes, on every machine of
    the launch: each writes its shard into the folder they share beside ``into``, and after all have finished,
    rank 0 merges them and goes on; every other rank's work is done, and it exits (status 0) here.
    """
    rows = len(data.dataset)
    launch = cluster_launch()
    # Never more ranks than images: a rank with none fails Lightning's sampler (one image added to a collection,
    # with a process per core). A launcher's ranks are what they are.
    devices = resolve_devices(devices, accelerator) if launch else min(resolve_devices(devices, accelerator),
                                                                        max(rows, 1))
    distributed = launch is not None or devices > 1
    threads, omp_threads = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    with scratch_folder("ris-shards-", beside=into.parent) as scratch:
        writer = ShardWriter(scratch, rows, dtype)
        trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=launch.num_nodes if launch else 1,
                             strategy=("ddp" if launch else strategy) if distributed else "auto",
                             precision=precision, callbacks=[writer, *([LightningProgress(what)] if progress else [])],
                             logger=False, enable_progress_bar=progress and on_terminal(),
                             enable_checkpointing=False, enable_model_summary=False)
        try:
            trainer.predict(module, datamodule=data, return_predictions=False)
        finally:
            torch.set_num_threads(threads)
            if omp_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = omp_threads
        if launch is not None:
            trainer.strategy.barrier("shards written")  # every rank's shard and row list are on disk
            if launch.rank != 0:
                log.info("rank %d of %d: %s shard written; rank 0 merges and writes the result", launch.rank,
                         launch.world_size, what)
                raise SystemExit(0)
        merge_shards(scratch, rows, into)
    on_gpu = isinstance(trainer.accelerator, CUDAAccelerator)
    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    if launch is not None:
        return f"{launch.num_nodes} machine(s) x {devices} x {name}"
    return name if devices == 1 else f"{devices} x {name}"


class LightningProgress(pl.Callback):
    """``Trainer.predict`` and ``Trainer.fit`` progress as log lines when stderr is not a terminal (on one,
    Lightning's own bar is shown instead). Counted on rank 0: predict batches times the number of ranks."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.counter: Progress | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            total = sum(len(loader.dataset) for loader in _loaders(trainer.predict_dataloaders))
            self.counter = Progress(self.what, total, "images", bar=False)

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                             batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.counter is not None:
            images = len(batch[0]) if isinstance(batch, (list, tuple)) else 1
            self.counter.update(min(images * trainer.world_size, self.counter.total - self.counter.done))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.counter = Progress(self.what, int(trainer.num_training_batches) * int(trainer.max_epochs),
                                    "steps", bar=False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        if self.counter is not None:
            self.counter.update()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.counter is not None and not trainer.sanity_checking and not on_terminal():
            shown = ", ".join(f"{name} {float(value):.4f}" for name, value in trainer.callback_metrics.items()
                              if name.startswith("val"))
            log.info("%s: epoch %d of at most %d done%s", self.what, trainer.current_epoch + 1, trainer.max_epochs,
                     f" ({shown})" if shown else "")


def _loaders(loaders: object) -> list:
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
