"""Lightning training plan of the cross-modal autoencoder."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as lpl
import torch

from ._module import CrossModalModule


class TrainingPlan(lpl.LightningModule):
    """Optimises :class:`CrossModalModule` with AdamW and a linear KL warm-up; keeps a per-epoch history."""

    def __init__(
        self,
        module: CrossModalModule,
        weights: dict[str, float],
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        kl_warmup_epochs: int = 1,
        early_stopping_patience: int | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.weights = dict(weights)
        self.lr = lr
        self.weight_decay = weight_decay
        self.kl_warmup_epochs = max(1, kl_warmup_epochs)
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, dict[str, float]] = {}
        self.patience = early_stopping_patience
        self.best: float = float("inf")
        self.best_epoch: int = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self._wait = 0

    def _weights(self) -> dict[str, float]:
        w = dict(self.weights)
        w["kl_weight"] = w["kl_weight"] * min(1.0, (self.current_epoch + 1) / self.kl_warmup_epochs)
        return w

    def _accumulate(self, stage: str, out: dict[str, torch.Tensor], n: int) -> None:
        sums = self._sums.setdefault(stage, {"n": 0.0})
        sums["n"] += n
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.module.loss(batch, **self._weights())
        self._accumulate("train", out, batch["n_cells"])
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.module.loss(batch, **self._weights())
        self._accumulate("validation", out, batch["n_cells"])

    def on_train_epoch_end(self) -> None:
        row: dict[str, float] = {"epoch": float(self.current_epoch)}
        for stage, sums in self._sums.items():
            n = max(sums.pop("n"), 1.0)
            row.update({f"{stage}_{k}": v / n for k, v in sums.items()})
        self._sums = {}
        self.history.append(row)
        self.log_dict({k: v for k, v in row.items() if k != "epoch"}, on_epoch=True, prog_bar=False)
        # early stopping on the held-out reconstruction (own + cross), not the total: the KL weight warms up
        if self.patience is not None and "validation_reconstruction" in row:
            metric = row["validation_reconstruction"] + row.get("validation_cross_reconstruction", 0.0)
            if metric < self.best - 1e-3 * abs(self.best if self.best < float("inf") else 0.0):
                self.best, self.best_epoch, self._wait = metric, self.current_epoch, 0
                self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            else:
                self._wait += 1
                if self._wait >= self.patience:
                    self.trainer.should_stop = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
