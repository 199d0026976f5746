"""How to train, and each training stage's whole request, with their defaults and choice lists: the CLI and
`pipeline run` read them here, so a library call trains as the command does. Light: no torch here.

- `TrainConfig`: the loop's options, the same for a head and for fine-tuning (lr "auto": the stage's own).
- `TrainRequest`: `pipeline train`, a head on stored features (20 epochs, batch 512 by default).
- `FinetuneRequest`: `pipeline finetune`, a network on the images (10 epochs, batch 64, 224 px by default).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.data import DATASET, TEST_FRACTION
from pipeline.embed.request import BACKBONE, WEIGHTS, native_size
from pipeline.errors import PipelineError
from pipeline.models.heads import HeadSpec
from pipeline.results import REPORTS_ROOT

SCHEDULES = ("onecycle", "cyclic", "constant")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")  # no fp16: it needs a loss scaler, bf16 does not
HEAD_EPOCHS, HEAD_BATCH = 20, 512
HEAD_LR = {"linear": 1e-2, "mlp": 3e-3}  # lr auto: one-cycle peak LR with standardised inputs, AdamW
FINETUNE_EPOCHS, FINETUNE_BATCH = 10, 64
FINETUNE_LR, FINETUNE_HEAD_LR = 1e-3, 3e-3  # lr auto: fine-tuning blocks; a head alone or from scratch


@dataclass
class TrainConfig:
    """How to train: the same options for a head and for fine-tuning (lr "auto": the caller's default)."""
    epochs: int = HEAD_EPOCHS
    batch_size: int = HEAD_BATCH
    lr: float | str = "auto"
    lr_schedule: str = "onecycle"
    patience: int = 5  # epochs without a better validation accuracy before stopping; 0: never stop early
    val_fraction: float = 0.1
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    max_minutes: float | None = None  # stop at the first epoch boundary that would overrun this
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 where the hardware has it (GPUs; CPUs with AVX-512-bf16 or AMX)

    @classmethod
    def from_options(cls, default_epochs: int, default_batch: int, *, epochs: int | None = None,
                     batch_size: int | None = None, lr: float | str = "auto", **options) -> TrainConfig:
        """The config the command's training options give (`options`: the other fields by name): epochs and
        batch size None take the stage's defaults; `lr` as typed ("auto" or a number)."""
        return cls(epochs=default_epochs if epochs is None else epochs,
                   batch_size=default_batch if batch_size is None else batch_size, lr=parse_lr(lr), **options)

    def check(self) -> None:
        if self.epochs < 1:
            raise PipelineError(f"--epochs {self.epochs}: train for at least 1 epoch")
        if self.batch_size < 2:
            raise PipelineError(f"--batch-size {self.batch_size}: use at least 2 (batch norm needs 2 rows)")
        if self.precision not in TRAIN_PRECISIONS:
            raise PipelineError(f"--precision {self.precision!r}: training takes {', '.join(TRAIN_PRECISIONS)}")
        if self.lr_schedule not in SCHEDULES:
            raise PipelineError(f"--lr-schedule {self.lr_schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.lr != "auto" and not (isinstance(self.lr, float) and 0 < self.lr < 10):
            raise PipelineError(f"--lr {self.lr!r}: use auto or a positive number such as 1e-3")
        if not 0 < self.val_fraction < 1:
            raise PipelineError(f"--val-fraction {self.val_fraction}: use a share between 0 and 1, e.g. 0.1")
        if self.patience < 0:
            raise PipelineError(f"--patience {self.patience}: use 0 (never stop early) or more epochs")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise PipelineError(f"--max-minutes {self.max_minutes}: give a positive number of minutes")


def parse_lr(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise PipelineError(f"--lr {value!r}: use auto or a number such as 1e-3") from None


@dataclass
class TrainRequest:
    """`pipeline train`'s whole call: which head, how to train it, where it goes."""
    head: HeadSpec = field(default_factory=HeadSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: Path = REPORTS_ROOT / DATASET
    overwrite: bool = False
    refit: bool = True  # after early stopping: a fresh head on all training rows for the chosen epochs


AUGMENTS = ("crop", "flip", "rotate")
DEFAULT_AUGMENT = "crop,flip,rotate"


@dataclass
class FinetuneRequest:
    """`pipeline finetune`'s whole call."""
    dataset: str = DATASET
    data_dir: str | None = None
    limit: int | None = None
    test_fraction: float = TEST_FRACTION
    backbone: str = BACKBONE
    weights: str = WEIGHTS
    unfreeze: str = "2"  # "0".."N" or "all"
    augment: str = DEFAULT_AUGMENT  # comma-separated AUGMENTS, or "none"
    image_size: int | None = None  # None: the backbone's native size
    head_dropout: float = 0.2
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=FINETUNE_EPOCHS, batch_size=FINETUNE_BATCH))
    out: Path | None = None
    overwrite: bool = False

    def key(self) -> dict:
        """What makes a run the same run (`pipeline run` skips a fine-tuning whose record has this key)."""
        return {"dataset": self.dataset, "limit": self.limit, "backbone": self.backbone, "weights": self.weights,
                "unfreeze": self.unfreeze, "augment": self.augment, "image_size": self.size,
                "head_dropout": self.head_dropout, **{k: v for k, v in asdict(self.train).items() if k != "device"}}

    @property
    def size(self) -> int:
        """The network's input size: the one asked for, else the backbone's native size."""
        return native_size(self.backbone) if self.image_size is None else self.image_size

    def augments(self) -> tuple[str, ...]:
        if self.augment == "none":
            return ()
        names = tuple(a.strip() for a in self.augment.split(",") if a.strip())
        bad = [a for a in names if a not in AUGMENTS]
        if bad or not names:
            raise PipelineError(f"--augment {self.augment!r}: use none or a comma-separated choice of "
                                f"{', '.join(AUGMENTS)}")
        return names
