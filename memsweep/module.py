"""The LightningModule: a GPT, its next-token loss, AdamW (memsweep/optim.py) and the
learning-rate schedule."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from memsweep.config import TrainerConfig
from memsweep.model import GPT, GPTConfig
from memsweep.optim import build_adamw
from memsweep.schedule import LRSchedule


class MemorizationModule(L.LightningModule):
    def __init__(self, gpt_config: GPTConfig, trainer_config: TrainerConfig):
        super().__init__()
        self.model = GPT(gpt_config)
        self.trainer_config = trainer_config
        self.lr_schedule = LRSchedule(trainer_config)
        self.rounding_seed = torch.initial_seed()
        """Seeds trainer.bf16_optimizer=stochastic-rounding: cell.py seeds torch with the cell's seed
        just before it builds this module, so every run of the cell, and every rank, rounds alike."""
        self._first_nonfinite: torch.Tensor | None = None
        """The first step whose loss was not finite (-1: none yet), kept on the device so that
        checking costs no synchronisation per step; read at evaluations and checkpoints."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of a batch, taken in float32 also for bf16 logits."""
        return F.cross_entropy(self.model(batch).float().flatten(0, 1), batch.flatten())

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        if self._first_nonfinite is None:
            self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self._first_nonfinite < 0)
        self._first_nonfinite = torch.where(bad, self.global_step + 1, self._first_nonfinite)
        self.log("train/batch_loss", loss, on_step=True, on_epoch=False)
        return loss

    def first_nonfinite_step(self) -> int | None:
        """The first training step (1-based, as checkpoints count) with a non-finite loss."""
        if self._first_nonfinite is None:
            return None
        step = int(self._first_nonfinite.item())
        return step if step >= 0 else None

    def configure_optimizers(self):
        cfg = self.trainer_config
        matrices = [p for p in self.parameters() if p.dim() >= 2]
        vectors = [p for p in self.parameters() if p.dim() < 2]
        optimizer = build_adamw(
            [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), bf16_optimizer=cfg.bf16_optimizer, seed=self.rounding_seed)
        # A lambda, not the schedule object: LambdaLR would pickle a callable object's __dict__ into
        # checkpoints; the schedule's state travels through on_save_checkpoint instead.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_schedule(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lr_schedule"] = self.lr_schedule.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.lr_schedule.load_state_dict(checkpoint["lr_schedule"])
