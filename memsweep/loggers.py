"""The optional experiment logger: Lightning's CSV logger, real W&B, or none.

W&B never hangs and never prompts: without an API key it runs offline (sync later with
`wandb sync <run dir>/wandb/offline-run-*`), and with a key it first checks that the server
answers. The W&B run id is the cell id, so a re-run of the same cell continues the same run.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from memsweep.config import CellConfig


def _wandb_api_key() -> str | None:
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        import netrc

        auth = netrc.netrc().authenticators(urlparse(_wandb_url()).hostname or "")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return None
    return auth[2] if auth else None


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(requested: str) -> str:
    """`online` only when asked for (or `auto`) and a key exists and the server answers."""
    if requested == "offline" or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return os.environ.get("WANDB_MODE", "offline")
    if _wandb_api_key() is None:
        if requested == "online":
            raise RuntimeError("logger.mode=online but no W&B API key is set (WANDB_API_KEY or ~/.netrc)")
        return "offline"
    if not _reachable(_wandb_url()):
        if requested == "online":
            raise RuntimeError(f"logger.mode=online but {_wandb_url()} cannot be reached")
        return "offline"
    return "online"


def build_logger(cfg: CellConfig, run_dir: Path, alongside_others: bool = False) -> Logger | bool:
    """The cell's logger. `alongside_others`: its W&B run is started now as a run of its own
    (wandb's reinit="create_new"), so that several cells of one process (a pack) log at once;
    otherwise WandbLogger starts it on first use, reusing a run already active in the process."""
    if cfg.logger.name == "none":
        return False
    if cfg.logger.name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="logs", version="")
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        id=cfg.cell_id,
        name=f"{cfg.model.n_layer}L-d{cfg.model.d_model}-N{cfg.data.n_samples}-{cfg.precision}-s{cfg.seed}",
        save_dir=str(run_dir),
        mode=wandb_mode(cfg.logger.mode),
        resume="allow",
        config=cfg.result_relevant(),
    )
    if alongside_others:
        import wandb

        run = wandb.init(**logger._wandb_init, reinit="create_new")  # the same arguments WandbLogger would pass
        run.define_metric("trainer/global_step")  # WandbLogger.experiment's default x-axis
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        logger._experiment = run
    return logger


def log_eval_row(logger: Logger | bool, row: dict, branch: bool = False) -> None:
    """A metrics row as MemorizationMonitor._record logs it: `eval/<key>` (`decay/<key>` for a
    decay branch's row) at the row's step."""
    if logger:
        prefix = "decay" if branch else "eval"
        logger.log_metrics({f"{prefix}/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])


LOG_EVERY_N_STEPS = 50
"""memsweep.cell._trainer's log_every_n_steps: Lightning logs `train/batch_loss` after every 50th step."""


def log_batch_loss(logger: Logger | bool, step: int, loss: float) -> None:
    """What Lightning logs of MemorizationModule.training_step's `train/batch_loss` after optimizer
    step `step` (1-based): every LOG_EVERY_N_STEPS steps, at step - 1 (its batch index), with the
    epoch (0: the training stream has no end)."""
    if logger and step % LOG_EVERY_N_STEPS == 0:
        logger.log_metrics({"train/batch_loss": float(loss), "epoch": 0}, step=step - 1)


def close_logger(logger: Logger | bool, record: dict | None) -> None:
    """Close the W&B run (so the next cell in this process gets its own), first putting the cell's
    final numbers into its summary when there are any (none after a preemption)."""
    if isinstance(logger, Logger):
        logger.finalize("success")  # as Lightning's fit ends (the CSV logger writes its rows)
    if not isinstance(logger, WandbLogger) or logger._experiment is None:  # None: its run never started
        return
    if record is not None:
        logger.experiment.summary.update(_scalars(record))
    logger.experiment.finish()  # this cell's own run (wandb.run for an unpacked cell), not a pack-mate's


def _scalars(record: dict, prefix: str = "") -> dict:
    """A record's numbers and words for a W&B summary, nested ones (a text cell's `extraction`
    rates per prefix, its corpus) flattened to `extraction/8/train`; the nested config is skipped:
    the run's config has it."""
    out = {}
    for key, value in record.items():
        if key in ("config", "versions", "traceback"):
            continue
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[prefix + key] = value
    return out
