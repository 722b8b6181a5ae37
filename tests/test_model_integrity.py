"""Exported models prove they are intact: every broken model directory is one line and exit 2.

Each case copies a real exported model, breaks it one way and runs the real entry points in
process: ``predict.main`` (what ``scripts/predict.py`` runs), ``serve.main`` (up to the point
where uvicorn would start) and, for the file digests, ``python -m astroscale_fl.export.verify_card``.
Cases marked ``resign`` also rewrite the card's SHA-256 of the changed file, so the break gets
past the digest check and reaches the deeper one (a consistent but wrong export).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from astroscale_fl.export import predict as predict_module
from tests.conftest import ROOT, cli_env

CARD, WEIGHTS, PIPELINE = "model_card.json", "weights.pt", "preprocessing.json"


@pytest.fixture(scope="module")
def exported(exported_model, absmag_frame):
    path = exported_model[0]
    return path, absmag_frame.iloc[3000:3020].reset_index(drop=True)


# --- breaking a model directory -----------------------------------------------------------------


def card(d: Path) -> dict:
    return json.loads((d / CARD).read_text())


def write_card(d: Path, value) -> None:
    (d / CARD).write_text(json.dumps(value) if not isinstance(value, str) else value)


def edit_card(**changes):
    def apply(d):
        c = card(d)
        for key, value in changes.items():
            c[key] = value
        write_card(d, c)
    return apply


def edit_input(i: int, **changes):
    def apply(d):
        c = card(d)
        c["inputs"][i].update(changes)
        write_card(d, c)
    return apply


def edit_model(**changes):
    def apply(d):
        c = card(d)
        c["model"].update(changes)
        write_card(d, c)
    return apply


def drop_card_key(key):
    def apply(d):
        c = card(d)
        del c[key]
        write_card(d, c)
    return apply


def edit_pipeline(change):
    def apply(d):
        state = json.loads((d / PIPELINE).read_text())
        change(state)
        (d / PIPELINE).write_text(json.dumps(state))
    return apply


def edit_weights(change):
    def apply(d):
        state = torch.load(d / WEIGHTS, weights_only=True)
        state = change(state)
        torch.save(state, d / WEIGHTS)
    return apply


def truncate(name, keep=0.5):
    def apply(d):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])
    return apply


def flip_byte(name):
    def apply(d):
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / name).write_bytes(bytes(data))
    return apply


def remove(name):
    return lambda d: (d / name).unlink()


def write_bytes(name, data: bytes):
    return lambda d: (d / name).write_bytes(data)


class Planted:
    """An object whose unpickling would run a command (what a malicious weights.pt carries)."""

    def __reduce__(self):
        return (os.system, ("echo planted > /dev/null",))


def pickled_payload() -> bytes:
    buf = io.BytesIO()
    torch.save({"0.weight": Planted()}, buf)
    return buf.getvalue()


def resign(d: Path) -> None:
    """Record the current files' digests in the card (as an export would have)."""
    from astroscale_fl.ingest.cache import file_sha256

    c = card(d)
    c["files"] = {n: {"sha256": file_sha256(d / n), "bytes": (d / n).stat().st_size} for n in (WEIGHTS, PIPELINE) if (d / n).exists()}
    write_card(d, c)


def set_layers(state):
    """Finite weights whose output overflows float32: 16 activations of 1 times 3e38."""
    state["2.weight"] = torch.zeros_like(state["2.weight"])
    state["2.bias"] = torch.ones_like(state["2.bias"])
    state["4.weight"] = torch.full_like(state["4.weight"], 3e38)
    return state


def unknown_step(state):
    state["steps"][1]["kind"] = "fourier_magic"


def scaler_without_center(state):
    del state["steps"][-1]["state"]["center"]


def rename_first_input(state):
    state["inputs"][0] = "RA_deg"


# id: (break, resign after breaking, fragment of the error line)
BROKEN = {
    "directory missing": (lambda d: shutil.rmtree(d), False, "model directory"),
    "card missing": (remove(CARD), False, "model_card.json"),
    "card bad JSON": (lambda d: write_card(d, '{"task": "x",'), False, "invalid JSON"),
    "card not UTF-8": (write_bytes(CARD, b'{"task": "\xff\xfe"}'), False, "invalid JSON"),
    "card nested too deep": (lambda d: write_card(d, "[" * 100_000), False, "invalid JSON"),
    "card is a list": (lambda d: write_card(d, "[]"), False, "expected a JSON object"),
    "card without target": (drop_card_key("target"), False, "target"),
    "card target without name": (edit_card(target={"unit": "mag"}), False, "target"),
    "card without inputs": (drop_card_key("inputs"), False, "inputs"),
    "valid_range null": (edit_input(4, valid_range=None), False, "valid_range"),
    "valid_range one number": (edit_input(4, valid_range=[0]), False, "valid_range"),
    "valid_range strings": (edit_input(4, valid_range=["a", 1]), False, "valid_range"),
    "valid_range reversed": (edit_input(4, valid_range=[2, 1]), False, "valid_range"),
    "input without name": (edit_input(0, name=None), False, "inputs[0]"),
    "absurd widths": (edit_model(widths=[10**9, 10**9]), False, "model.widths"),
    "negative width": (edit_model(widths=[-1]), False, "model.widths"),
    "widths a string": (edit_model(widths="32,16"), False, "model.widths"),
    "unknown model": (edit_model(name="transformer"), False, "model"),
    "unknown activation": (edit_model(activation="swish"), False, "activation"),
    "card without digests": (drop_card_key("files"), False, "SHA-256"),
    "digest entry malformed": (edit_card(files={WEIGHTS: "abc", PIPELINE: "def"}), False, "files.weights.pt"),
    "weights truncated": (truncate(WEIGHTS), False, "truncated"),
    "weights one byte changed": (flip_byte(WEIGHTS), False, "SHA-256"),
    "weights missing": (remove(WEIGHTS), False, "missing"),
    "pipeline edited": (edit_pipeline(scaler_without_center), False, "preprocessing.json"),
    "pipeline one byte changed": (flip_byte(PIPELINE), False, "SHA-256"),
    "pipeline truncated": (truncate(PIPELINE), False, "truncated"),
    "pipeline missing": (remove(PIPELINE), False, "missing"),
    "pipeline bad JSON": (write_bytes(PIPELINE, b'{"inputs": [1,'), True, "invalid JSON"),
    "pipeline unknown step": (edit_pipeline(unknown_step), True, "preprocessing.json"),
    "pipeline step field missing": (edit_pipeline(scaler_without_center), True, ""),
    "pipeline inputs differ from card": (edit_pipeline(rename_first_input), True, "preprocessing.json"),
    "weights garbage": (write_bytes(WEIGHTS, os.urandom(4096)), True, "weights.pt"),
    "weights empty": (write_bytes(WEIGHTS, b""), True, "weights.pt"),
    "weights pickled object": (write_bytes(WEIGHTS, pickled_payload()), True, "refused"),
    "weights plain pickle": (write_bytes(WEIGHTS, pickle.dumps({"a": 1})), True, "weights.pt"),
    "weights a list": (edit_weights(lambda s: list(s.values())), True, "state dict"),
    "weights shape mismatch": (edit_weights(lambda s: {**s, "0.weight": torch.zeros(64, 9)}), True, "0.weight"),
    "weights key missing": (edit_weights(lambda s: {k: v for k, v in s.items() if k != "4.bias"}), True, "4.bias"),
    "weights extra key": (edit_weights(lambda s: {**s, "9.weight": torch.zeros(1)}), True, "9.weight"),
    "weights float64": (edit_weights(lambda s: {k: v.double() for k, v in s.items()}), True, "float64"),
    "weights NaN": (edit_weights(lambda s: {**s, "0.weight": torch.full_like(s["0.weight"], math.nan)}), True, "non-finite"),
}


@pytest.fixture
def broken(exported, tmp_path, request):
    """A copy of the exported model, broken by the case's function."""
    copy = tmp_path / "model"
    shutil.copytree(exported[0], copy)
    breaker, resign_after, fragment = BROKEN[request.param]
    breaker(copy)
    if resign_after:
        resign(copy)
    return copy, fragment


def assert_one_line_exit_2(run, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("broken", list(BROKEN), ids=list(BROKEN), indirect=True)
def test_predict_refuses_a_broken_model_in_one_line(broken, exported, capsys):
    path, fragment = broken
    values = [repr(float(exported[1][n].iloc[0])) for n in predict_module_inputs(exported[0])]
    err = assert_one_line_exit_2(lambda: predict_module.main(["--model", str(path), *values]), capsys)
    assert fragment in err and len(err) < 400, err


@pytest.mark.parametrize("broken", list(BROKEN), ids=list(BROKEN), indirect=True)
def test_serve_refuses_a_broken_model_in_one_line(broken, capsys, monkeypatch):
    import uvicorn

    from astroscale_fl.serve import main as serve_main

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: started.append(True))
    path, fragment = broken
    err = assert_one_line_exit_2(lambda: serve_main(["--model", str(path), "--port", "0"]), capsys)
    assert fragment in err and not started, err


def predict_module_inputs(path: Path) -> list[str]:
    return [f["name"] for f in card(path)["inputs"]]


# --- integrity end to end, through the real processes ----------------------------------------


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=cli_env(), timeout=120)


def test_card_records_digests_and_every_checker_accepts_an_intact_directory(exported):
    from astroscale_fl.ingest.cache import file_sha256

    path = exported[0]
    files = card(path)["files"]
    assert set(files) == {WEIGHTS, PIPELINE}
    for name, entry in files.items():
        assert entry == {"sha256": file_sha256(path / name), "bytes": (path / name).stat().st_size}
    out = run("-m", "astroscale_fl.export.verify_card", path)
    assert out.returncode == 0, out.stderr
    from astroscale_fl.export import (
        verify_card as card_checker,  # the card file itself: the same entry, in this process
    )

    assert card_checker.main([str(path / CARD)]) == 0


@pytest.mark.parametrize("command", [
    ["scripts/predict.py", "--model", "{m}", "--list-inputs"],
    ["-m", "astroscale_fl.serve", "--model", "{m}", "--port", "0"],
    ["-m", "astroscale_fl.export.verify_card", "{m}/model_card.json"],
], ids=["predict", "serve", "verify_card"])
def test_processes_refuse_a_tampered_directory_in_one_line(exported, tmp_path, command):
    copy = tmp_path / "model"
    shutil.copytree(exported[0], copy)
    flip_byte(WEIGHTS)(copy)
    out = run(*[c.replace("{m}", str(copy)) for c in command])
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.count("\n") == 1 and "weights.pt: SHA-256" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_pickle_planted_in_weights_is_refused_and_never_run(exported, tmp_path, capsys):
    copy = tmp_path / "model"
    shutil.copytree(exported[0], copy)
    marker = tmp_path / "ran"

    class Marker:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save({"0.weight": Marker()}, buf)
    (copy / WEIGHTS).write_bytes(buf.getvalue())
    resign(copy)
    from astroscale_fl.export.predict import main as predict_main

    # in this process, where an unpickled payload would run (the real processes: the tamper test above)
    err = assert_one_line_exit_2(lambda: predict_main(["--model", str(copy), "--list-inputs"]), capsys)
    assert "refused" in err and not marker.exists()


# --- non-finite predictions -------------------------------------------------------------------


@pytest.fixture
def overflowing(exported, tmp_path):
    """Finite weights whose every prediction overflows to inf."""
    copy = tmp_path / "model"
    shutil.copytree(exported[0], copy)
    edit_weights(set_layers)(copy)
    resign(copy)
    return copy


def test_predict_never_prints_nan(overflowing, exported, capsys, tmp_path):
    rows = exported[1]
    names = predict_module_inputs(overflowing)
    err = assert_one_line_exit_2(lambda: predict_module.main(["--model", str(overflowing), *[repr(float(rows[n].iloc[0])) for n in names]]), capsys)
    assert "not a finite number" in err
    assert capsys.readouterr().out == ""
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    rows[names].to_csv(src, index=False)
    assert predict_module.main(["--model", str(overflowing), "--input", str(src), "--output", str(dst)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["predicted"] == 0 and summary["quarantined"] == len(rows)
    assert pd.read_csv(dst)["predicted_M_Hp"].isna().all()
    quarantine = pd.read_csv(f"{dst}.quarantine.csv")
    assert quarantine["reason"].str.contains("not a finite number").all()


def test_serve_refuses_to_start_on_non_finite_probe(overflowing, capsys, monkeypatch):
    import uvicorn

    from astroscale_fl.serve import main as serve_main

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: pytest.fail("started"))
    err = assert_one_line_exit_2(lambda: serve_main(["--model", str(overflowing), "--port", "0"]), capsys)
    assert "non-finite" in err


def test_old_style_bounds_null_is_an_open_end(exported, tmp_path):
    """``[null, high]`` (an open end) still loads; only ``valid_range: null`` itself is refused."""
    copy = tmp_path / "model"
    shutil.copytree(exported[0], copy)
    edit_input(4, valid_range=[None, 30])(copy)
    predictor = predict_module.Predictor(copy)
    assert predictor.ranges[predictor.inputs[4]] == (-math.inf, 30.0)
    assert np.isfinite(predictor.predict_frame(exported[1])).all()


def test_card_examples_are_the_test_rows_nearest_the_target_quantiles():
    import pandas as pd

    from astroscale_fl.export.model_dir import EXAMPLE_QUANTILES, example_positions

    test = pd.DataFrame({"id": ["a", "b", "c", "d", "e", "f"], "y": [9.0, -3.0, 1.0, float("nan"), 0.5, 2.0]})
    assert test["id"].iloc[example_positions(test, "y", (0.5,))[0]] == "c"  # the median of the finite targets is 1.0
    assert [test["id"].iloc[i] for i in example_positions(test, "y")] == ["b", "e", "c", "f", "a"]
    assert EXAMPLE_QUANTILES[len(EXAMPLE_QUANTILES) // 2] == 0.5  # the middle example is the median one


@pytest.mark.parametrize("value, written", [(70761, "70761"), (np.int64(70761), "70761"), (70761.0, "70761"),
                                            (np.float64(12.0), "12"), (12.5, "12.5"), ("2M0001+002", "2M0001+002")])
def test_card_ids_are_written_as_the_catalogue_writes_them(value, written):
    from astroscale_fl.export.model_dir import catalog_id

    assert catalog_id(value) == written
