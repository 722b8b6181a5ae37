"""Redo a task's results page: centralized and each strategy at the shipped defaults, per seed.

    python scripts/results.py survey_redshift --seeds 0 1
    python scripts/results.py hipparcos_absmag --name hipparcos_absmag-depth --seeds 0 1 -- partition=depth federation.num_nodes=10

Runs ``astroscale-fl train`` for ``mode=centralized`` and every strategy (one run per seed, into
``--runs``; a run that already has its metrics.json is not run again), then writes
``docs/results/<name>.md`` (test R² of the exported round and of the last round, the exported round,
where early stopping ended the run, the gap to centralized, RMSE / bias per survey or node) and
``docs/results/<name>.png`` (the curves of ``astroscale-fl compare``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from astroscale_fl.atomic import write_text  # noqa: E402
from astroscale_fl.learning.compare import (  # noqa: E402
    GROUP_COLUMNS,
    group_rows,
    groups_markdown,
    natural_unit,
    plot_curves,
    summarise,
)

STRATEGIES = ("fedavg", "fedprox", "fedadam", "scaffold")


def run(task: str, job: Path, overrides: list[str]) -> None:
    """One ``astroscale-fl train`` run into ``job`` (skipped when it already finished)."""
    if (job / "metrics.json").is_file():
        return
    cmd = [sys.executable, "-m", "astroscale_fl.cli", "train", f"task={task}", *overrides, "federation.metrics_port=0",
           "output.publish=false", f"hydra.run.dir={job}"]
    print("$ astroscale-fl", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def page(name: str, command: str, table: pd.DataFrame, groups: pd.DataFrame) -> str:
    """The results page: per strategy, mean and per-seed test R² (exported vs last round), and per group."""
    unit, factor = natural_unit(table["task"].iloc[0])
    central = table.loc[table["mode"] == "centralized", "test_r2"].mean()
    lines = [f"# Results: {name}", "", "Produced by", "", f"    {command}", "",
             "Each row: the shipped defaults of the task (`conf/`), one run per seed; the exported model is the "
             "round with the best pooled node-validation R² (`federation.select=best`).", "",
             f"| run | test R² exported (mean) | per seed | last round's R² (mean) | exported round / rounds run | "
             f"gap to centralized | test RMSE{f' ({unit})' if unit else ''} |",
             "|---|---|---|---|---|---|---|"]
    for strategy, rows in table.groupby("strategy", sort=False):
        rounds = ", ".join(f"{int(r.selected_round)}/{int(r.rounds)}" for r in rows.itertuples())
        lines.append(f"| {strategy} | {rows['test_r2'].mean():.4f} | " + ", ".join(f"{v:.4f}" for v in rows["test_r2"]) +
                     f" | {rows['last_round_test_r2'].mean():.4f} | {rounds} | {central - rows['test_r2'].mean():+.4f} | "
                     f"{rows['test_rmse'].mean() * factor:.4g} |")
    return "\n".join(lines) + "\n\n" + groups_markdown(groups, table["task"].iloc[0]) + f"\n![curves]({name}.png)\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--name", help="page name (default: the task)")
    parser.add_argument("--runs", type=Path, help="run directories (default: outputs/results/<name>)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    overrides = argv[cut + 1:]  # extra Hydra overrides for every run
    name = args.name or args.task
    runs = args.runs or ROOT / "outputs" / "results" / name
    for seed in args.seeds:
        run(args.task, runs / f"centralized-s{seed}", ["mode=centralized", f"seed={seed}", *overrides])
        for strategy in args.strategies:
            run(args.task, runs / f"{strategy}-s{seed}", [f"strategy={strategy}", f"seed={seed}", *overrides])
    table, histories = summarise(runs, 0.9, [])
    groups = pd.DataFrame([g for r in table.to_dict("records") for g in group_rows(Path(r["job"]), r)], columns=GROUP_COLUMNS)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python scripts/results.py " + " ".join(argv)
    write_text(args.out / f"{name}.md", page(name, command, table, groups))
    plot_curves(table, histories, args.out / f"{name}.png")
    print(f"wrote {args.out / f'{name}.md'} and {args.out / f'{name}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
