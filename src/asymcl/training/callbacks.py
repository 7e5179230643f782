"""Lightning callbacks of a run, at module level so that a trainer holding them pickles."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback


class HistoryCallback(Callback):
    """Per-epoch record of train loss and validation metrics, saved inside the checkpoints so
    that a resumed stage keeps the history of the epochs before the interruption."""

    def __init__(self, stage: str, on_record: Callable[[str, list, dict], None]):
        self.stage = stage
        self.on_record = on_record
        self.entries: list[dict] = []
        self.best: dict = {}

    @property
    def state_key(self) -> str:
        return f"HistoryCallback[{self.stage}]"

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        val = pl_module.last_val_metrics
        entry = {
            "epoch": int(trainer.current_epoch),
            "train_loss": pl_module.last_train_loss,
            "val_wa": val["wa"],
            "val_ua": val["ua"],
            "val_macro_f1": val["macro_f1"],
            "val_per_class_recall": val["per_class_recall"],
        }
        self.entries = [e for e in self.entries if e["epoch"] != entry["epoch"]] + [entry]
        if not self.best or entry["val_ua"] > self.best["val_ua"]:
            self.best = {"epoch": entry["epoch"], "val_ua": entry["val_ua"]}
        self.on_record(self.stage, self.entries, self.best)

    def state_dict(self) -> dict:
        return {"entries": self.entries, "best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.entries = list(state_dict["entries"])
        self.best = dict(state_dict["best"])


class EpochLines(Callback):
    """One line per epoch on stderr (stage, epoch/total, train loss, val UA/WA, elapsed time):
    progress where stderr is not a terminal (a log file, CI, ``| tee``), where tqdm's
    carriage-return redraws would fill the log. Printed by the main process only."""

    def __init__(self, stage: str):
        self.stage = stage
        self._start: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        val = pl_module.last_val_metrics
        loss = pl_module.last_train_loss
        elapsed = time.monotonic() - (self._start if self._start is not None else time.monotonic())
        print(
            f"[asymcl] {self.stage} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
            f"  train_loss {'-' if loss is None else f'{loss:.4f}'}"
            f"  val UA {val['ua'] * 100:.2f}%  WA {val['wa'] * 100:.2f}%  {elapsed:.1f}s",
            file=sys.stderr,
            flush=True,
        )
