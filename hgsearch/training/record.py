"""One trial's record: the configuration a trial carries (as Optuna user attrs, CSV rows, retries),
its results' attribute names, the saved-weights file format, and the weights cache of each family's front."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from hgsearch.errors import StorageError
from hgsearch.model.families import ArchSpec
from hgsearch.store.atomic import atomic_write
from hgsearch.text import first_line
from hgsearch.training import checkpoint
from hgsearch.training.loop import TrainResult


@dataclass(frozen=True)
class TrialRecord:
    """Everything needed to rebuild and retrain a trial's model from the storage alone.

    Written as user attrs before training starts, copied to a retry, and a frontier/trials CSV row
    holds every field. Results (psnr_val, psnr_test, train_loss, seconds) stay in training.loop.TrainResult.
    """

    family: str
    d_in: int
    d_out: int
    width: int
    bottleneck: int
    depth: int
    fixed_win: bool
    params: int  # closed-form total (the search's first objective)
    trainable_params: int  # the total minus W_in when W_in is fixed
    lr: float
    seed: int
    epochs: int

    @classmethod
    def of(cls, spec: ArchSpec, *, lr: float, seed: int, epochs: int) -> TrialRecord:
        return cls(**spec.to_dict(), params=spec.params, trainable_params=spec.trainable_params,
                   lr=lr, seed=seed, epochs=epochs)

    @property
    def spec(self) -> ArchSpec:
        return ArchSpec(self.family, self.d_in, self.d_out, self.width, self.bottleneck, self.depth, self.fixed_win)

    def to_attrs(self) -> dict[str, Any]:
        """The trial's user attrs (JSON values), one per field."""
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TrialRecord:
        """From a trial's user attrs (other attrs, e.g. results or retry_of, are ignored)."""
        return cls(**{k: attrs[k] for k in CONFIG_ATTRS})

    @classmethod
    def from_row(cls, row: Any) -> TrialRecord:
        """From a frontier.csv/trials.csv row (a pandas Series or dict): numpy values become Python's."""
        return cls(str(row["family"]), int(row["d_in"]), int(row["d_out"]), int(row["width"]),
                   int(row["bottleneck"]), int(row["depth"]), bool(row["fixed_win"]), int(row["params"]),
                   int(row["trainable_params"]), float(row["lr"]), int(row["seed"]), int(row["epochs"]))


# The attributes that define a trial's configuration, in TrialRecord's order: a retry copies them.
CONFIG_ATTRS: tuple[str, ...] = tuple(f.name for f in fields(TrialRecord))


# The attributes a finished trial adds (TrainResult's fields that are stored).
RESULT_ATTRS: tuple[str, ...] = ("psnr_val", "psnr_test", "train_loss", "seconds")


def result_attrs(res: TrainResult) -> dict[str, float]:
    return {k: getattr(res, k) for k in RESULT_ATTRS}


def weights_path(study_dir: str | Path, family: str, trial: int) -> Path:
    """Where a frontier point's trained weights are cached (kept by the search when the trial completes
    on its family's front, see keep_front_weights; else written by confirm.frontier_model)."""
    return Path(study_dir) / "weights" / f"{family}-{int(trial)}.pt"


def save_weights(path: str | Path, rec: TrialRecord, model: torch.nn.Module | dict[str, torch.Tensor],
                 res: TrainResult) -> None:
    """The one saved-weights format (`train --save` and the weights cache), written atomically.

    {"spec": ArchSpec fields, "state_dict", "lr", "epochs", "seed", "psnr_val", "psnr_test"}: data
    only, so load_weights can read it with weights_only=True. model may be the module or its
    state_dict (a checkpoint's "model": no module is built, so the global RNG is left alone).
    """
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    payload = {"spec": rec.spec.to_dict(), "state_dict": state, "lr": rec.lr, "epochs": rec.epochs,
               "seed": rec.seed, "psnr_val": res.psnr_val, "psnr_test": res.psnr_test}
    atomic_write(Path(path), lambda p: torch.save(payload, p))


def load_weights(path: str | Path, device: torch.device) -> dict[str, Any]:
    """A save_weights payload, tensors on `device`; weights_only: a planted file cannot run code."""
    return torch.load(path, map_location=device, weights_only=True)


def dominates(a: tuple[float, float], b: tuple[float, float], margin: float = 0.0) -> bool:
    """a = (params, psnr) dominates b: no larger, and better by more than margin dB (strictly, if 0)."""
    return a[0] <= b[0] and (a[1] > b[1] + margin if margin > 0 else
                             (a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])))


def keep_front_weights(study_dir: str | Path, trial: int, rec: TrialRecord, res: TrainResult,
                       others: dict[int, tuple[float, float]], checkpoint_path: Path,
                       meta: dict[str, Any]) -> str | None:
    """Keep a trial just told COMPLETE in the weights cache when it is on its family's front, and drop
    the cached weights of the family's trials it dominates; return why its weights were not kept
    (None when kept, or off the front).

    others: the family's other COMPLETE trials, {number: (params, psnr_val)}. The front is the
    non-dominated set of the family's COMPLETE trials by (params, psnr_val), this one included (ties
    all stay). The weights are the model of the trial's last checkpoint (every executor writes one
    after the final epoch, and evaluation changes nothing after it), saved in save_weights's format
    with the trial's own results, so confirm.frontier_model finds them "cached" and the report
    retrains nothing. Being dominated is permanent (trials are only added), so every point of the
    final front kept its weights when it completed, and the cache stays the size of the front.
    Workers (or hosts) finishing at once may miss each other's trial: a dominated trial's file can
    then stay behind, which costs disk only (a file always holds its own trial's weights). A missing
    file (killed between the tell and this save, a failed write, a trial trained on another host,
    whose file is in that host's results directory) costs frontier_model a retrain, its fallback. A
    failed read or write is the returned reason, never the trial's failure: it is COMPLETE.
    """
    me = (float(rec.params), res.psnr_val)  # the values it was told with
    if any(dominates(p, me) for p in others.values()):
        return None
    path = weights_path(study_dir, rec.family, trial)
    try:
        state, why = checkpoint.load(checkpoint_path, meta)
        if state is None:
            return f"weights not kept ({why or 'no checkpoint'}); report will retrain it"
        save_weights(path, rec, state["model"], res)
        for number, p in others.items():
            if dominates(me, p):
                weights_path(study_dir, rec.family, number).unlink(missing_ok=True)
    except (OSError, StorageError) as e:  # StorageError: atomic_write's full disk
        return f"cannot keep its weights in {path.parent} ({first_line(e)}); report will retrain it"
    return None
