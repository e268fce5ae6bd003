import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException

from memsweep.cell import gpt_config
from memsweep.config import ConfigError, cell_config, load_cell_config, save_cell_config
from memsweep.model import GPT, paper_param_count
from tests.conftest import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_default_config_composes_and_validates():
    cell = cell_config(compose_config())
    assert (cell.model.n_layer, cell.model.d_model) == (1, 32)
    assert (cell.data.vocab_size, cell.data.seq_len) == (2048, 64)
    assert cell.precision == "fp32" and cell.logger.name == "csv"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_model_preset_states_its_true_param_count(preset):
    text = (CONF / "model" / f"{preset}.yaml").read_text()
    vocab = int(re.search(r"V ?= ?([\d,]+)", text).group(1).replace(",", ""))  # the vocabulary P is stated at
    cell = cell_config(compose_config([f"model={preset}", f"data.vocab_size={vocab}"]))
    stated = int(re.search(r"P = ([\d,]+)", text).group(1).replace(",", ""))
    m, d = cell.model, cell.data
    assert paper_param_count(d.vocab_size, d.seq_len, m.n_layer, m.d_model) == stated
    if stated < 10_000_000:  # larger rungs take GBs to build; test_model ties the formula to GPT
        assert GPT(gpt_config(cell, torch.device("cpu"))).n_params == stated


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    cell_config(cfg)  # raises ConfigError if a preset is broken
    assert cfg.sweep_name == experiment  # its cells go to runs/sweeps/<experiment>, not the default


@pytest.mark.parametrize("override,key", [
    ("model.n_head=5", "model.d_model"),
    ("data.n_samples=0", "data.n_samples"),
    ("precision=fp16", "precision"),
    ("trainer.lr=-1", "trainer.lr"),
    ("trainer.schedule=linear", "trainer.schedule"),
    ("+model.d_modl=64", "model.d_modl"),
    ("model.n_layer=two", "model.n_layer"),
    ("+trainer.saturation.windw=3", "trainer.saturation.windw"),
    ("trainer.lr=inf", "trainer.lr"),
    ("trainer.lr=nan", "trainer.lr"),
    ("trainer.saturation.tolerance=inf", "trainer.saturation.tolerance"),
    ("seed=-1", "seed"),
    ("data.seed=4294967296", "data.seed"),
    ("trainer.lease_seconds=1", "trainer.lease_seconds"),
    ("data.capacity_ratio=0", "data.capacity_ratio"),
    ("data.capacity_ratio=nan", "data.capacity_ratio"),
    ("data.capacity_alpha=-3", "data.capacity_alpha"),
    ("trainer.lr_reference_width=0", "trainer.lr_reference_width"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as err:
        cell_config(compose_config([override]))
    assert str(err.value).startswith(key)


def test_misspelled_key_and_unknown_option_are_refused_by_hydra():
    with pytest.raises(ConfigCompositionException, match="d_modl"):
        compose_config(["model.d_modl=64"])  # memsweep-train answers this before Hydra (below)
    with pytest.raises(MissingConfigException, match="model/paper-3L-d32"):
        compose_config(["model=paper-3L-d32"])


def test_a_misspelled_preset_fails_naming_the_choices(tmp_path):
    with pytest.raises(MissingConfigException, match="experiment/reproduce-smal"):
        compose_config(["experiment=reproduce-smal"])  # it was `optional`: silently the default cell
    out = subprocess.run([sys.executable, "-m", "memsweep.train", f"hydra.run.dir={tmp_path / 'cell'}",
                          "experiment=does-not-exist"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "does-not-exist" in out.stderr and "reproduce-small" in out.stderr
    assert not (tmp_path / "cell").exists()


def test_a_typo_is_refused_with_a_did_you_mean_before_hydra_or_torch(tmp_path):
    for typo in ("model.d_modle=3", "+model.d_modle=3"):  # the second is what Hydra's hint suggests
        out = subprocess.run([sys.executable, "-m", "memsweep.train", typo], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "memsweep: config error: model.d_modle: unknown key; did you mean model.d_model?" in out.stderr
        assert list(tmp_path.iterdir()) == []  # no run dir, no train.log
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('heavy:', sorted(m for m in ('torch', 'lightning') if m in sys.modules)))\n"
             "from memsweep.train import check_overrides, main\n"
             "for args in (['model.d_model=64'], ['-m', 'seed=0,1']): check_overrides(args)\n"
             "sys.argv = ['memsweep-train', '--help']\n"
             "main()")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and "Configuration groups" in out.stdout, out.stderr[-2000:]
    assert out.stdout.strip().endswith("heavy: []")  # --help and the checks answer without torch


def test_checkpoints_by_steps_bound_lost_work_by_default():
    cell = cell_config(compose_config())
    assert cell.trainer.checkpoint_every_steps is None
    assert cell.trainer.checkpoint_interval == cell.trainer.max_steps // 50
    assert cell_config(compose_config(["trainer.max_steps=60"])).trainer.checkpoint_interval == 2
    assert cell_config(compose_config(["trainer.checkpoint_every_steps=0"])).trainer.checkpoint_interval == 0


def test_cell_id_ignores_logging_and_devices_but_not_science():
    base = cell_config(compose_config())
    assert cell_config(compose_config(["logger=wandb", "trainer.eval_batch_size=7"])).cell_id == base.cell_id
    assert cell_config(compose_config(["precision=bf16"])).cell_id != base.cell_id
    assert cell_config(compose_config(["data.seed=1"])).cell_id != base.cell_id


def test_cli_config_error_exits_before_training(tmp_path):
    run_dir = tmp_path / "cell"
    out = subprocess.run([sys.executable, "-m", "memsweep.train", f"hydra.run.dir={run_dir}", "model.n_head=3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "model.d_model" in out.stderr and "model.n_head=3" in out.stderr
    assert not (run_dir / "result.json").exists()


def test_cli_runs_a_cell_into_the_given_run_dir(tmp_path):
    run_dir = tmp_path / "my-cell"
    out = subprocess.run([sys.executable, "-m", "memsweep.train", f"hydra.run.dir={run_dir}", "logger=none",
                          "data.n_samples=4", "trainer.max_steps=4", "trainer.eval_interval=2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "memorized" in out.stdout and "bits/param" in out.stdout
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "done" and record["steps"] == 4


def test_cli_refuses_a_run_dir_that_holds_another_cell(tmp_path):
    args = [sys.executable, "-m", "memsweep.train", f"hydra.run.dir={tmp_path}", "logger=none",
            "data.n_samples=4", "trainer.max_steps=2", "trainer.eval_interval=1"]
    assert subprocess.run(args, capture_output=True, text=True, timeout=300).returncode == 0
    before = (tmp_path / "result.json").read_text()
    other = subprocess.run([*args, "seed=1"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "holds another cell" in other.stderr
    assert (tmp_path / "result.json").read_text() == before


def test_capacity_ratio_places_n_at_the_models_own_capacity():
    # 1L d32 at V = 2048, S = 64: P = 80,352, so ratio 1 at 3.64 bits/param is
    # 3.64 * 80,352 / 704 = 415.46 sequences (the "about 415"); 2L d128 (P = 667,136): 3,449.
    small = cell_config(compose_config(["data.capacity_ratio=1"]))
    assert small.data.n_samples == 415
    assert cell_config(compose_config(["model=paper-2L-d128", "data.capacity_ratio=1"])).data.n_samples == 3449
    assert cell_config(compose_config(["data.capacity_ratio=2", "data.capacity_alpha=3.0"])).data.n_samples == round(
        2 * 3.0 * 80_352 / 704)
    assert cell_config(compose_config(["data.capacity_ratio=1e-9"])).data.n_samples == 1  # never 0 sequences
    # The id is that of the resolved N: the same cell whichever way N was given.
    assert small.cell_id == cell_config(compose_config(["data.n_samples=415"])).cell_id


def test_capacity_ratio_is_refused_for_text_whose_bits_are_unknown_before_training():
    with pytest.raises(ConfigError, match=r"^data.capacity_ratio: places N by the bits of uniform sequences"):
        cell_config({"data": {"kind": "text", "vocab_size": None, "capacity_ratio": 1.0}})


def test_lr_reference_width_scales_the_rate_by_width_and_is_resolved_into_lr(tmp_path):
    wide = cell_config(compose_config(["model=paper-2L-d128", "trainer.lr=1e-2", "trainer.lr_reference_width=32"]))
    assert wide.trainer.lr == pytest.approx(2.5e-3) and wide.trainer.lr_reference_width is None
    same = cell_config(compose_config(["model=paper-2L-d128", "trainer.lr=2.5e-3"]))
    assert wide.cell_id == same.cell_id
    # Resolved once: the saved config reloads to the same rate (not scaled a second time).
    save_cell_config(wide, tmp_path / "config.yaml")
    assert load_cell_config(tmp_path / "config.yaml").trainer.lr == wide.trainer.lr


def test_an_unknown_preset_selector_is_a_config_error_naming_the_key_not_a_traceback():
    with pytest.raises(ConfigError, match=r"^trainer.max_steps: Interpolation key 'variants.nope.max_steps' not found"):
        cell_config(compose_config(["experiment=recipe-study", "variant=nope"]))
