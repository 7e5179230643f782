"""Lightning callbacks of a run, at module level so that a trainer holding them pickles."""

from __future__ import annotations

from typing import Callable

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
