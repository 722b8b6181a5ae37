"""``astroscale-fl train``: a Hydra application that runs one federated simulation.

Hydra composes ``conf/`` with the command-line overrides (``-m`` sweeps them as a multirun).
Each job validates its config, simulates ``federation.num_nodes`` SuperNodes running our
ClientApp against our ServerApp, and writes ``history.csv``, ``metrics.json`` and ``model/``
into the job's Hydra output directory. A job returns its selected pooled validation score
(``federation.select_metric`` of the exported round, never a test metric): the objective of a
Hydra sweeper such as Optuna's (``-m hydra/sweeper=survey_redshift``, the ``[sweep]`` extra).
"""

from __future__ import annotations

import logging
import sys
from itertools import product
from pathlib import Path

from omegaconf import DictConfig

from astroscale_fl import config, run_config
from astroscale_fl.atomic import check_writable_folder
from astroscale_fl.errors import USER_ERROR_EXIT, AstroScaleError, ConfigError, one_line, report_user_errors

_HYDRA_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}


def run_job(cfg: DictConfig) -> float:
    """One training job from a composed config (called by Hydra for every job); its selected validation score."""
    from hydra.core.hydra_config import HydraConfig

    from clients.app import app as client_app
    from server.app import make_server_app

    log_once_through_hydra()
    try:
        typed = preflight(run_config.validate(cfg))
        out_dir = HydraConfig.get().runtime.output_dir
        write_quarantine(typed, out_dir)
        if typed.mode == "centralized":
            from astroscale_fl.centralized import run_centralized

            run_centralized(typed, out_dir)
        else:
            simulate(make_server_app(typed, out_dir), client_app, typed)
    except AstroScaleError as exc:
        # Hydra would print a traceback; a user mistake gets one line and exit code 2.
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT) from None
    print(f"outputs: {out_dir}")
    return selected_score(out_dir)


def selected_score(out_dir: str) -> float:
    """A finished run's ``selected_val_score`` (metrics.json), NaN when no round had a validation score."""
    import json
    from pathlib import Path

    score = json.loads((Path(out_dir) / "metrics.json").read_text()).get("selected_val_score")
    return float("nan") if score is None else float(score)


def log_once_through_hydra() -> None:
    """Flower's log lines once, through Hydra's job logging (console and ``train.log``), in every job.

    Importing flwr gives its logger a console handler of its own (each line printed twice: Flower's
    style on stderr, Hydra's on stdout) and level DEBUG; Hydra then sets each later job of a
    multirun back to the level in ``conf/`` (``hydra.job_logging``), so both are set here, per job.
    """
    from flwr.common.logger import console_handler

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.removeHandler(console_handler)
    flwr_logger.setLevel(logging.INFO)


def write_quarantine(cfg: DictConfig, out_dir: str) -> None:
    """``<run dir>/quarantine.csv``: task rows left out for values that are not numbers, with the reason."""
    from astroscale_fl.data.nodes import task_quarantine
    from astroscale_fl.data.tables import write_table

    rejected = task_quarantine(cfg)
    if rejected is not None and len(rejected):
        write_table(rejected, Path(out_dir) / "quarantine.csv")
        print(f"{len(rejected)} bad value(s) in the task table -> {Path(out_dir) / 'quarantine.csv'}", file=sys.stderr)


def simulate(server_app, client_app, cfg: DictConfig) -> None:
    """Run the federation on the simulation engine named in ``federation.backend``."""
    if cfg.federation.backend == "ray":
        from astroscale_fl.federation.ray_backend import run_simulation

        run_simulation(server_app, client_app, cfg)
    else:
        from astroscale_fl.federation.engine import run_inprocess

        run_inprocess(server_app, client_app, cfg)


def preflight(cfg: DictConfig) -> DictConfig:
    """Check what the nodes would fail on (data, partitions, device) before starting them;
    return the config with ``federation.num_nodes`` resolved."""
    from astroscale_fl.config_checks import check_run, node_training_rows
    from astroscale_fl.data.nodes import resolve_num_nodes, task_split
    from astroscale_fl.data.split import assign_nodes
    from astroscale_fl.data.tasks import get_task
    from astroscale_fl.learning.device import resolve_device

    resolve_device(cfg.device)
    train, _ = task_split(cfg)
    if cfg.preprocess.reference:
        from astroscale_fl.preprocessing.reference import fit_reference

        fit_reference(get_task(cfg.task), cfg, cfg.preprocess.reference)
    elif cfg.mode == "federated":
        from astroscale_fl.preprocessing import Pipeline
        from astroscale_fl.privacy.dp_statistics import check_statistics_round

        check_statistics_round(cfg, get_task(cfg.task), Pipeline.from_config(get_task(cfg.task), cfg))
    cfg = resolve_num_nodes(cfg)
    if cfg.mode == "federated":
        num_nodes = int(cfg.federation.num_nodes)
        nodes = assign_nodes(train, cfg.partition, num_nodes, int(cfg.seed), get_task(cfg.task).partition_columns)
        check_run(cfg, node_training_rows(train, nodes, num_nodes, int(cfg.seed)))
    return cfg


def user_overrides(argv: list[str]) -> list[str]:
    """The config overrides among Hydra's arguments (flags and their values dropped)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and "=" in arg and not arg.lstrip("+~").startswith("hydra"):
            out.append(arg)
    return out


def check_overrides(overrides: list[str]) -> None:
    """Compose, validate and preflight every combination of sweep values before Hydra starts.

    Errors come out as one line naming the override, instead of Hydra's multi-line report
    (or a failure in the middle of a multirun), and before Hydra creates any output directory.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # Hydra's grammar errors
        raise ConfigError(f"cannot parse overrides {overrides}: {str(exc).splitlines()[0]}") from None
    choices = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    for combination in product(*choices):
        preflight(run_config.validate(config.compose(list(combination))))


def check_output_dirs(argv: list[str]) -> None:
    """``hydra.run.dir`` / ``hydra.sweep.dir`` (the part before any ``${...}``) can be written:
    one line instead of Hydra's traceback when it cannot."""
    dirs = {"hydra.run.dir": "outputs", "hydra.sweep.dir": "multirun"}  # conf/config.yaml's defaults
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") in dirs:
            dirs[key.lstrip("+")] = value
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    check_writable_folder(dirs[key].split("${")[0] or ".", key)


@report_user_errors
def main(argv: list[str]) -> int:
    """Entry for ``astroscale-fl train [overrides]``."""
    import hydra

    argv = config.noise_overrides_target(list(argv))
    if not any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c") for a in argv):
        check_overrides(user_overrides(argv))
        check_output_dirs(argv)
    conf = str(config.conf_dir())
    sys.argv = ["astroscale-fl train", *argv]
    hydra.main(config_path=conf, config_name="config", version_base="1.3")(run_job)()
    return 0
