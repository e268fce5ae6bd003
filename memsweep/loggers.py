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


def build_logger(cfg: CellConfig, run_dir: Path) -> Logger | bool:
    if cfg.logger.name == "none":
        return False
    if cfg.logger.name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="logs", version="")
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(
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


def close_logger(logger: Logger | bool, record: dict | None) -> None:
    """Close the W&B run (so the next cell in this process gets its own), first putting the cell's
    final numbers into its summary when there are any (none after a preemption)."""
    if not isinstance(logger, WandbLogger):
        return
    import wandb

    if record is not None:
        logger.experiment.summary.update(_scalars(record))
    wandb.finish()


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
