"""``astroscale-fl compare DIR``: summarise a multirun of strategies x partitions.

Reads every job directory under DIR that holds ``metrics.json`` and ``history.csv`` (Hydra
multirun job directories, and any ``mode=centralized`` run placed there or given with
``--reference``) and writes into DIR:

- ``summary.csv`` / ``summary.md``: per strategy x partition, the exported model's test RMSE
  and R² (with the round it comes from and the last round's R²: ``federation.select``),
  rounds to reach ``--target-r2``, wall seconds, bytes up and down; centralized runs as
  reference rows, with each row's gap to the centralized R²;
- ``groups.csv`` (and a second table in ``summary.md``): each run's test rows, RMSE, R² and
  bias per node and per survey (``test_by_node``, ``test_by_<column>`` of metrics.json);
- ``curves.png``: test R² (top) and test RMSE in the task's display unit (bottom,
  km/s for survey_redshift) per round, one column per partition, one line per strategy (the
  centralized baseline, trained on the pooled data, dashed; the simulator's R² ceiling dotted
  when the runs report one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from astroscale_fl.atomic import atomic_path, write_text
from astroscale_fl.data.tasks import display_unit
from astroscale_fl.errors import DataError, UserArgumentParser, report_user_errors

#: The dashed reference line: one model trained on all nodes' data pooled (``mode=centralized``).
BASELINE_LABEL = "centralized baseline (pooled data)"
SUMMARY_COLUMNS = ["mode", "task", "strategy", "partition", "seed", "test_rmse", "test_r2", "r2_ceiling", "gap_to_centralized_r2",
                   "selected_round", "last_round_test_r2", "stopped_early_at", "rounds_to_target", "rounds", "wall_seconds",
                   "bytes_up", "bytes_down", "job"]
GROUP_COLUMNS = ["strategy", "partition", "seed", "grouping", "group", "rows", "test_rmse", "test_r2", "bias", "job"]


def find_jobs(root: Path) -> list[Path]:
    """Job directories below ``root`` (any depth) with a metrics.json and a history.csv."""
    return sorted(p.parent for p in root.rglob("metrics.json") if (p.parent / "history.csv").is_file())


def load_job(job: Path, target_r2: float) -> tuple[dict, pd.DataFrame]:
    """One summary row and the per-round history of a job directory."""
    try:
        metrics = json.loads((job / "metrics.json").read_text())
        history = pd.read_csv(job / "history.csv")
    except (OSError, json.JSONDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{job}: unreadable run outputs ({exc})") from None
    cfg = metrics.get("config", {})
    mode = metrics.get("mode", cfg.get("mode", "federated"))
    reached = history.loc[history["test_r2"] >= target_r2, "round"]
    row = {
        "mode": mode,
        "task": cfg.get("task", {}).get("name", "?"),
        "strategy": "centralized" if mode == "centralized" else cfg.get("strategy", {}).get("name", "?"),
        "partition": "-" if mode == "centralized" else cfg.get("partition", {}).get("name", "?"),
        "seed": cfg.get("seed"),
        "test_rmse": metrics["test_rmse"],
        "test_r2": metrics["test_r2"],
        "r2_ceiling": metrics.get("r2_ceiling"),
        "rounds_to_target": int(reached.iloc[0]) if len(reached) else None,
        "selected_round": metrics.get("selected_round", int(metrics.get("rounds", len(history)))),
        "last_round_test_r2": metrics.get("last_round_test_r2", metrics["test_r2"]),
        "stopped_early_at": metrics.get("stopped_early_at"),
        "rounds": int(metrics.get("rounds", len(history))),
        "wall_seconds": metrics.get("wall_seconds"),
        "bytes_up": int(metrics.get("bytes_up", 0)),
        "bytes_down": int(metrics.get("bytes_down", 0)),
        "job": str(job),
    }
    return row, history


def group_rows(job: Path, summary_row: dict) -> list[dict]:
    """One row per node and per group of a job's ``test_by_*`` metrics (none for runs without them)."""
    metrics = json.loads((job / "metrics.json").read_text())
    return [{"strategy": summary_row["strategy"], "partition": summary_row["partition"], "seed": summary_row["seed"],
             "grouping": key.removeprefix("test_by_"), "group": name, "rows": g["rows"], "test_rmse": g["rmse"],
             "test_r2": g["r2"], "bias": g["bias"], "job": str(job)}
            for key, groups in metrics.items() if key.startswith("test_by_") for name, g in groups.items()]


def groups_markdown(groups: pd.DataFrame, task: str) -> str:
    """Per-group test RMSE and bias, one row per strategy x partition (mean over seeds), one column per group."""
    if groups.empty:
        return ""
    unit, factor = display_unit(task)
    grouping = "survey" if (groups["grouping"] == "survey").any() else "node"
    part = groups[groups["grouping"] == grouping]
    mean = part.groupby(["partition", "strategy", "group"], sort=True)[["test_rmse", "bias", "test_r2"]].mean().reset_index()
    names = sorted(mean["group"].unique())
    lines = [f"test RMSE{f' ({unit})' if unit else ''} / bias / R² per {grouping}:", "",
             "| strategy | partition | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for (partition, strategy), rows in mean.groupby(["partition", "strategy"], sort=True):
        cells = {r.group: f"{r.test_rmse * factor:.4g} / {r.bias * factor:+.3g} / {r.test_r2:.3f}" for r in rows.itertuples()}
        lines.append(f"| {strategy} | {partition} | " + " | ".join(cells.get(n, "") for n in names) + " |")
    return "\n".join(lines) + "\n"


def summarise(root: Path, target_r2: float, references: list[Path]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Summary table (rows sorted by partition, strategy) and histories by job path."""
    jobs = find_jobs(root) + [r for ref in references for r in find_jobs(ref)]
    if not jobs:
        raise DataError(f"{root}: no run outputs found (expected job directories with metrics.json and history.csv)")
    rows, histories = [], {}
    for job in dict.fromkeys(jobs):
        row, history = load_job(job, target_r2)
        rows.append(row)
        histories[str(job)] = history
    table = pd.DataFrame(rows)
    central = table.loc[table["mode"] == "centralized", "test_r2"]
    table["gap_to_centralized_r2"] = (central.max() - table["test_r2"]) if len(central) else np.nan
    table = table.sort_values(["mode", "partition", "strategy", "seed"], ascending=[False, True, True, True], kind="stable")
    return table[SUMMARY_COLUMNS].reset_index(drop=True), histories


def to_markdown(table: pd.DataFrame, target_r2: float) -> str:
    """The summary as a Markdown table with readable numbers."""
    def fmt(value, spec):
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    unit, factor = display_unit(table["task"].iloc[0]) if table["task"].nunique() == 1 else ("", 1.0)
    head = ["strategy", "partition", f"test RMSE ({unit})" if unit else "test RMSE", "test R²", "R² ceiling",
            "gap to centralized R²", "round exported", "last round's R²", f"rounds to R² ≥ {target_r2}", "wall s", "MB up", "MB down"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.itertuples():
        lines.append("| " + " | ".join([
            r.strategy, r.partition, fmt(r.test_rmse * factor, ".4g"), fmt(r.test_r2, ".4f"), fmt(r.r2_ceiling, ".4f"),
            fmt(r.gap_to_centralized_r2, "+.4f"), f"{fmt(r.selected_round, '.0f')} of {fmt(r.rounds, '.0f')}",
            fmt(r.last_round_test_r2, ".4f"),
            "—" if r.rounds_to_target is None or (isinstance(r.rounds_to_target, float) and math.isnan(r.rounds_to_target)) else str(int(r.rounds_to_target)),
            fmt(r.wall_seconds, ".1f"), fmt(r.bytes_up / 1e6, ".2f"), fmt(r.bytes_down / 1e6, ".2f"),
        ]) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(table: pd.DataFrame, histories: dict[str, pd.DataFrame], path: Path) -> None:
    """Test R² (top) and RMSE (bottom) per round: one column per partition, one line per strategy (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    federated = table[table["mode"] != "centralized"]
    central = table[table["mode"] == "centralized"]
    partitions = sorted(federated["partition"].unique()) or ["-"]
    unit, factor = display_unit(table["task"].iloc[0]) if table["task"].nunique() == 1 else ("", 1.0)
    ceiling = pd.to_numeric(table["r2_ceiling"], errors="coerce").dropna()
    fig, axes = plt.subplots(2, len(partitions), figsize=(5.5 * len(partitions), 7.5), squeeze=False, sharex="col", sharey="row")
    drawn_r2 = [pd.concat([table["test_r2"], ceiling])]
    for col, partition in enumerate(partitions):
        top, bottom = axes[0][col], axes[1][col]
        for strategy, group in federated[federated["partition"] == partition].groupby("strategy"):
            for ax, metric, scale in ((top, "test_r2", 1.0), (bottom, "test_rmse", factor)):
                mean = pd.concat([histories[j].set_index("round")[metric] for j in group["job"]], axis=1).mean(axis=1)
                ax.plot(mean.index, mean.to_numpy() * scale, marker=".", label=strategy)
                if metric == "test_r2":
                    drawn_r2.append(mean)
        for i, reference in enumerate(central.itertuples()):  # the exported (selected) epoch's model
            label = BASELINE_LABEL if i == 0 else None
            top.axhline(reference.test_r2, color="k", ls="--", lw=1, label=label)
            bottom.axhline(reference.test_rmse * factor, color="k", ls="--", lw=1, label=label)
        if len(ceiling):
            top.axhline(ceiling.mean(), color="0.4", ls=":", lw=1.5, label=f"R² ceiling ({ceiling.mean():.3f})")
        top.set_title(f"partition = {partition}")
        bottom.set_xlabel("round")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        top.legend(loc="best", fontsize="small", framealpha=0.85)
    r2 = pd.to_numeric(pd.concat(drawn_r2, ignore_index=True), errors="coerce").dropna()
    if len(r2):  # a dip below 0 stays visible, down to -1 (the rows share their y axis)
        axes[0][0].set_ylim(max(-1.0, min(0.0, r2.min() - 0.05)), min(1.0, r2.max() + 0.02))
    axes[0][0].set_ylabel("test R² (held-out test set)")
    axes[1][0].set_ylabel(f"test RMSE ({unit})" if unit else "test RMSE")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """Entry for ``astroscale-fl compare DIR``."""
    parser = UserArgumentParser(prog="astroscale-fl compare", description=__doc__.split("\n\n")[0] + ".")
    parser.add_argument("dir", type=Path, help="a multirun directory (e.g. multirun/2026-11-23/13-00-00)")
    parser.add_argument("--target-r2", type=float, default=0.9, help="R² for the rounds-to-target column (default 0.9)")
    parser.add_argument("--reference", type=Path, action="append", default=[],
                        help="a centralized run directory to show as the reference (repeatable)")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        raise DataError(f"not a directory: {args.dir}")
    table, histories = summarise(args.dir, args.target_r2, args.reference)
    groups = pd.DataFrame([g for r in table.to_dict("records") for g in group_rows(Path(r["job"]), r)], columns=GROUP_COLUMNS)
    with atomic_path(args.dir / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(args.dir / "groups.csv") as tmp:
        groups.to_csv(tmp, index=False)
    text = to_markdown(table, args.target_r2)
    per_group = groups_markdown(groups, table["task"].iloc[0]) if table["task"].nunique() == 1 else ""
    text += f"\n{per_group}" if per_group else ""
    write_text(args.dir / "summary.md", text)
    plot_curves(table, histories, args.dir / "curves.png")
    print(text)
    print(f"wrote {args.dir / 'summary.csv'}, {args.dir / 'groups.csv'}, {args.dir / 'summary.md'}, {args.dir / 'curves.png'}")
    return 0
