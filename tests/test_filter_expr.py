"""Issue 23: ``task.filter`` is a closed expression language, never code.

The exploit strings of the issue run through ``astroscale-fl train`` and through a node's
handler fed a hostile run config: no file appears and the error is one clean line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from astroscale_fl import config, run_config
from astroscale_fl.cli import main as cli_main
from astroscale_fl.data.filter_expr import parse_filter
from astroscale_fl.errors import MAX_LINE_CHARS, USER_ERROR_EXIT, AstroScaleError, ConfigError, DataError
from astroscale_fl.federation import client, engine, protocol
from astroscale_fl.federation.messages import RUN_CONFIG_KEY, round_config
from tests.conftest import ROOT

FRAME = pd.DataFrame({"a": [1.0, 2.0, np.nan, 4.0], "s": ["x", "y", "z", None], "B-V": [0.1, 0.6, 0.9, 1.0]})

ALLOWED = {
    # expression: indices of the rows it keeps
    "a > 1": [1, 3],
    "a >= 1 and s in ['y', 'z']": [1],
    "0 < a <= 2": [0, 1],
    "not isnull(a)": [0, 1, 3],
    "notnull(s) and a != 2": [0, 2],  # NaN != 2, as in pandas,
    "`B-V` > 0.5": [1, 2, 3],
    "abs(a - 3) < 1.5": [1, 3],
    "s == 'x' or a * 2 > 7": [0, 3],
    "-a < -1": [1, 3],
    "s not in ['x']": [1, 2, 3],
    "a in [1, -4.0, 4]": [0, 3],
    "(a + 1) / 2 >= 1.5 or a % 2 == 1": [0, 1, 3],
    "a ** 2 // 3 == 5": [3],
    "True": [0, 1, 2, 3],
}


@pytest.mark.parametrize("expression", sorted(ALLOWED))
def test_a_filter_in_the_language_selects_the_rows_pandas_would(expression):
    assert parse_filter(expression).apply(FRAME).index.tolist() == ALLOWED[expression]


EXPLOITS = [
    "@pd.io.common.os.system('touch pwned') == 0",
    "ra.__class__.__init__.__globals__['sys'].modules['os'].system('touch pwned') == 0",
]

REFUSED = {
    # expression: the offending token the error names
    EXPLOITS[0]: "at '@'",
    EXPLOITS[1]: "'.__class__'",
    "__import__('os').system('touch pwned') == 0": "'__import__'",
    "open('pwned', 'w') == 0": "'open'",
    "a > 1 & a < 3": "'&' (write 'and')",
    "a > 1 | a < 3": "'|' (write 'or')",
    "~(a > 1)": "'~' (write 'not')",
    "a[0] > 1": "indexing 'a[0]'",
    "(lambda: 1)() == 1": "'lambda: 1'",
    "[x for x in a] == 1": "listcomp",
    "a if a else a": "ifexp",
    "a in s": "'s' after 'in'",
    "a is None": "'is'",
    "a > None": "the literal None",
    "abs(a, 2) > 1": "abs() with other than one argument",
    "a >> 3; rm -rf /": "at ';'",
    "a >": "ends too early",
    "-" * 100 + "a > 1": "nested deeper than 64",
    "a > 1" + " " * 3000: "at most 2000",
}


@pytest.mark.parametrize("expression", sorted(REFUSED))
def test_anything_outside_the_language_is_a_one_line_error_naming_the_token(expression):
    with pytest.raises(ConfigError) as err:
        parse_filter(expression)
    message = str(err.value)
    assert REFUSED[expression] in message and "\n" not in message and len(message) <= MAX_LINE_CHARS, message


EVALUATION_ERRORS = {
    "s + 1 > 0": "cannot evaluate 's + 1'",
    "s < 3": "cannot evaluate 's < 3'",
    "nope > 1": "unknown column 'nope'",
    "a + 1": "is not a condition",
    "(a + 1) and a > 1": "cannot evaluate 'a + 1' (not a condition",
}


@pytest.mark.parametrize("expression", sorted(EVALUATION_ERRORS))
def test_values_the_expression_cannot_combine_are_a_one_line_error(expression):
    with pytest.raises(AstroScaleError) as err:
        parse_filter(expression).apply(FRAME)
    assert EVALUATION_ERRORS[expression] in str(err.value), str(err.value)


def test_constants_cannot_blow_up_memory_or_time():
    # integer literals become float64: 10**10**10 is inf at once instead of a billion-digit integer
    assert parse_filter("a < 10 ** 10 ** 10").apply(FRAME).index.tolist() == [0, 1, 3]
    with pytest.raises(DataError, match="cannot evaluate"):
        parse_filter("s == 'x' * 10 ** 9").apply(FRAME)


def _stars(path: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"ra": rng.uniform(0, 360, 300), "b": rng.normal(size=300)})
    frame["y"] = frame.ra / 100 + frame.b
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("exploit", EXPLOITS)
def test_the_issues_exploits_through_train_create_no_file(tmp_path, monkeypatch, capsys, exploit):
    """``astroscale-fl train`` through the command dispatcher, in-process (the filter is refused
    before Hydra starts, so a subprocess would only add its start-up)."""
    monkeypatch.chdir(tmp_path)
    stars = _stars(tmp_path / "cat.csv")
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "task=catalog", f"task.path={stars}", "task.target=y", "task.features=[ra,b]",
                  f"task.filter={json.dumps(exploit)}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == USER_ERROR_EXIT and not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()
    assert len(err.splitlines()) == 1 and err.startswith("error: task.filter") and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("exploit", EXPLOITS)
def test_a_hostile_servers_filter_runs_no_code_on_a_node(tmp_path, monkeypatch, exploit):
    """The server's run config reaches a node as JSON: a filter in it is parsed, never executed."""
    monkeypatch.chdir(tmp_path)
    stars = _stars(tmp_path / "cat.csv")
    cfg = run_config.validate(config.compose(["task=catalog", f"task.path={stars}", "task.target=y", "task.features=[ra,b]",
                                          "federation.num_nodes=2", "partition=iid"]))
    record = round_config(cfg)
    sent = json.loads(str(record[RUN_CONFIG_KEY]))
    sent["task"]["filter"] = exploit  # what a hostile server (or a man in the middle) sends
    hostile = ConfigRecord({RUN_CONFIG_KEY: json.dumps(sent)})
    engine._set_task_identity(engine.RUN_ID)
    msg = Message(RecordDict({protocol.CONFIG_KEY: hostile}), dst_node_id=1001, message_type=MessageType.QUERY)
    with pytest.raises(ConfigError, match=r"^task\.filter") as err:
        client.handle_query(msg, engine.simulation_node_configs(2)[0])
    assert not (tmp_path / "pwned").exists() and "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["${oc.env:HOME}", "x${oc.decode:'[1]'}"])
def test_a_run_config_from_a_server_cannot_make_a_node_resolve_interpolations(tmp_path, value):
    """``${oc.env:...}`` in the server's JSON would read the node's environment into its config
    (and into error replies that go back to the server): refused, naming the key."""
    stars = _stars(tmp_path / "cat.csv")
    cfg = run_config.validate(config.compose(["task=catalog", f"task.path={stars}", "task.target=y", "task.features=[ra,b]"]))
    sent = json.loads(config.to_json(cfg))
    sent["task"]["path"] = value
    with pytest.raises(ConfigError, match=r"^task\.path: .* holds an interpolation"):
        run_config.from_json(json.dumps(sent))
    with pytest.raises(ConfigError, match="run config: not JSON"):
        run_config.from_json("{" * 10)
