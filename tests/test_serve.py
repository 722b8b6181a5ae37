"""The HTTP predict service, run for real (``python -m astroscale_fl.serve``) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from astroscale_fl.data.tasks import get_task
from astroscale_fl.export.predict import Predictor
from astroscale_fl.serve import InputSchema, Invalid, MicroBatcher
from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow
MAX_BODY = 64 * 1024
MAX_BATCH = 50
CORS_ORIGIN = "https://viewer.example.org"
JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def exported(exported_model, absmag_frame):
    """The session's exported MLP (tests/conftest.py) and rows it has not seen."""
    path = exported_model[0]
    return path, absmag_frame.iloc[3000:3100].reset_index(drop=True)


def start(model, *extra):
    return subprocess.Popen([sys.executable, "-m", "astroscale_fl.serve", "--model", str(model), "--port", "0",
                             "--max-body-bytes", str(MAX_BODY), "--max-batch", str(MAX_BATCH), "--log-level", "warning", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=cli_env())


def wait_ready(proc) -> str:
    line = proc.stdout.readline()  # "serving ... on http://127.0.0.1:PORT (...)"
    assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    url = line.split(" on ", 1)[1].split()[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("service did not become healthy")


def stop(procs) -> None:
    """Terminate server processes (kill those that do not stop within 10 s)."""
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="module")
def servers(exported):
    """The plain service and one with micro-batching and CORS for one origin, started together."""
    procs = [start(exported[0]), start(exported[0], "--micro-batch", "--batch-window-ms", "2", "--cors-origins", CORS_ORIGIN)]
    try:
        yield [wait_ready(p) for p in procs]
    finally:
        stop(procs)


@pytest.fixture(scope="module")
def url(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def star(rows, predictor, i=0):
    return {n: float(rows[n].iloc[i]) for n in predictor.inputs}


def run_script(capsys, *args) -> str:
    """scripts/predict.py's entry (``export.predict.main``) in this process: its stdout. The script as a
    real process: tests/test_export_predict.py; a fresh interpreter here cost seconds per call."""
    from astroscale_fl.export.predict import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_single_star_equals_predict_script_and_predictor(exported, client, capsys):
    path, rows = exported
    predictor = Predictor(path)
    body = star(rows, predictor)
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    script = json.loads(run_script(capsys, "--model", path, *[repr(body[n]) for n in predictor.inputs]))
    assert answer.json() == script  # same key, bit-identical float
    for i in range(1, 6):
        values = star(rows, predictor, i)
        assert client.post("/predict", json=values).json() == {"predicted_M_Hp": predictor.predict_one(list(values.values()))}


def test_batch_equals_predict_script_table_mode(exported, client, tmp_path, capsys):
    path, rows = exported
    predictor = Predictor(path)
    table = rows[predictor.inputs].iloc[:MAX_BATCH]
    table.to_parquet(tmp_path / "in.parquet", index=False)
    run_script(capsys, "--model", path, "--input", tmp_path / "in.parquet", "--output", tmp_path / "out.parquet")
    expected = pd.read_parquet(tmp_path / "out.parquet")["predicted_M_Hp"].tolist()
    answer = client.post("/predict/batch", json=table.to_dict(orient="records"))
    assert answer.status_code == 200
    assert answer.json() == {"predicted_M_Hp": expected}
    assert expected == predictor.predict_frame(table).tolist()


def good(rows):
    return {n: float(rows[n].iloc[0]) for n in get_task("hipparcos_absmag").input_names}


def with_(rows, **changes):
    body = good(rows)
    body.update(changes)
    return body


def without(rows, name):
    body = good(rows)
    del body[name]
    return body


BAD_SINGLE = {  # id: (body builder -> raw bytes, loc, type, message fragment)
    "missing": (lambda r: json.dumps(without(r, "Hpmag")), ["body", "Hpmag"], "missing", "required"),
    "string": (lambda r: json.dumps(with_(r, pmRA="12.5")), ["body", "pmRA"], "float_type", "string"),
    "bool": (lambda r: json.dumps(with_(r, pmRA=True)), ["body", "pmRA"], "float_type", "boolean"),
    "null": (lambda r: json.dumps(with_(r, pmRA=None)), ["body", "pmRA"], "float_type", "null"),
    "nan": (lambda r: json.dumps(with_(r, sHp=math.nan)), ["body", "sHp"], "finite_number", "finite"),
    "infinity": (lambda r: json.dumps(with_(r, sHp=-math.inf)), ["body", "sHp"], "finite_number", "finite"),
    "overflow": (lambda r: json.dumps(with_(r, sHp=0.5)).replace('"sHp": 0.5', '"sHp": 1e999'), ["body", "sHp"], "finite_number", "finite"),
    "below range": (lambda r: json.dumps(with_(r, e_Hpmag=-0.1)), ["body", "e_Hpmag"], "greater_than_equal", "[0, 2]"),
    "above range": (lambda r: json.dumps(with_(r, DErad=2.0)), ["body", "DErad"], "less_than_equal", "[-1.57079632679, 1.57079632679]"),
    "unknown field": (lambda r: json.dumps(with_(r, colour=1.0)), ["body", "colour"], "extra_forbidden", "colour"),
    "not an object": (lambda r: "[1, 2]", ["body"], "model_attributes_type", "/predict/batch"),
    "malformed": (lambda r: '{"RArad": 1.0,', ["body", 14], "json_invalid", "JSON"),
    "empty body": (lambda r: "", ["body"], "json_invalid", "empty"),
    "too deep": (lambda r: "[" * 20_000, ["body"], "json_invalid", "recursion"),
}


@pytest.mark.parametrize("case", list(BAD_SINGLE), ids=list(BAD_SINGLE))
def test_single_star_422_names_field_and_reason(exported, client, case):
    rows = exported[1]
    build, loc, kind, fragment = BAD_SINGLE[case]
    answer = client.post("/predict", content=build(rows), headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    errors = answer.json()["detail"]
    assert any(e["loc"] == loc and e["type"] == kind and fragment in e["msg"] for e in errors), errors
    assert client.post("/predict", json=good(rows)).status_code == 200  # still serving


def test_422_lists_every_problem(exported, client):
    body = with_(exported[1], pmRA="x", sHp=-1.0, extra=True)
    del body["Hpmag"]
    errors = client.post("/predict", json=body).json()["detail"]
    assert sorted(tuple(e["loc"]) for e in errors) == sorted([("body", "pmRA"), ("body", "sHp"), ("body", "Hpmag"), ("body", "extra")])


@pytest.mark.parametrize("body, loc, kind", [
    ("[]", ["body"], "too_short"),
    ('{"rows": []}', ["body"], "list_type"),
    ("[1.0]", ["body", 0], "model_attributes_type"),
    ("[{", ["body", 2], "json_invalid"),
], ids=["empty", "not a list", "row not an object", "malformed"])
def test_batch_422(exported, client, body, loc, kind):
    answer = client.post("/predict/batch", content=body, headers=JSON_HEADERS)
    assert answer.status_code == 422
    assert [(e["loc"], e["type"]) for e in answer.json()["detail"]][:1] == [(loc, kind)]


def test_batch_422_names_row_and_field(exported, client):
    rows = [good(exported[1]) for _ in range(5)]
    rows[3]["Hpmag"] = 99.0
    rows[4]["B-V"] = "red"
    errors = client.post("/predict/batch", json=rows).json()["detail"]
    assert [(e["loc"], e["type"]) for e in errors] == [(["body", 3, "Hpmag"], "less_than_equal"), (["body", 4, "B-V"], "float_type")]


def test_413_for_large_bodies_and_batches(exported, client):
    rows = exported[1]
    big = json.dumps([good(rows)] * 600)  # ~94 KB > 64 KiB
    assert len(big) > MAX_BODY
    answer = client.post("/predict/batch", content=big, headers=JSON_HEADERS)
    assert answer.status_code == 413 and "--max-body-bytes" in answer.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(40):
            yield b" " * 4096

    answer = client.post("/predict", content=chunks(), headers=JSON_HEADERS)
    assert answer.status_code == 413
    answer = client.post("/predict/batch", json=[good(rows)] * (MAX_BATCH + 1))
    assert answer.status_code == 413 and "--max-batch" in answer.json()["detail"]
    assert client.post("/predict", json=good(rows)).status_code == 200


def test_cors_only_for_the_origins_given(exported, servers):
    plain, with_cors = servers
    origin = CORS_ORIGIN
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    pre = httpx.options(f"{with_cors}/predict", headers=preflight)
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"]
    post = httpx.post(f"{with_cors}/predict", json=good(exported[1]), headers={"Origin": origin})
    assert post.headers["access-control-allow-origin"] == origin
    bad = httpx.post(f"{with_cors}/predict", json={}, headers={"Origin": origin})
    assert bad.status_code == 422 and bad.headers["access-control-allow-origin"] == origin
    other = httpx.post(f"{with_cors}/predict", json=good(exported[1]), headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # without --cors-origins: no CORS headers at all, preflight not answered
    assert "access-control-allow-origin" not in httpx.options(f"{plain}/predict", headers=preflight).headers
    assert "access-control-allow-origin" not in httpx.post(f"{plain}/predict", json=good(exported[1]), headers={"Origin": origin}).headers


def counter(text, endpoint, status):
    for line in text.splitlines():
        if line.startswith(f'astroscale_fl_serve_requests_total{{endpoint="{endpoint}",status="{status}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_requests_and_latency(exported, client):
    before = client.get("/metrics").text
    for _ in range(3):
        client.post("/predict", json=good(exported[1]))
    client.post("/predict", json={})
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    assert counter(after.text, "/predict", 200) == counter(before, "/predict", 200) + 3
    assert counter(after.text, "/predict", 422) == counter(before, "/predict", 422) + 1
    assert 'astroscale_fl_serve_request_duration_seconds_bucket{endpoint="/predict",le="0.00025"}' in after.text
    assert "astroscale_fl_serve_predictions_total" in after.text
    assert client.get("/nope").status_code == 404 and client.get("/predict").status_code == 405
    assert 'endpoint="other",status="404"' in client.get("/metrics").text


def test_healthz_describes_the_model_without_paths(exported, client):
    answer = client.get("/healthz")
    health = answer.json()
    assert health["status"] == "ok" and health["output"] == "predicted_M_Hp" and health["task"] == "hipparcos_absmag"
    assert [i["name"] for i in health["inputs"]] == get_task("hipparcos_absmag").input_names
    card = json.loads((exported[0] / "model_card.json").read_text())
    assert health["model"] == {"task": "hipparcos_absmag", "version": card["created"],
                               "weights_sha256": card["files"]["weights.pt"]["sha256"]}
    assert health["weights_sha256"] == card["files"]["weights.pt"]["sha256"]
    assert str(exported[0].parent) not in answer.text and str(ROOT) not in answer.text


def test_micro_batching_gives_each_caller_its_own_answer(exported, servers):
    path, rows = exported
    predictor = Predictor(path)
    bodies = [star(rows, predictor, i) for i in range(len(rows))]
    expected = predictor.predict_frame(rows[predictor.inputs])

    async def fire():
        async with httpx.AsyncClient(base_url=servers[1], timeout=30, limits=httpx.Limits(max_connections=100)) as c:
            return await asyncio.gather(*[c.post("/predict", json=b) for b in bodies])

    answers = asyncio.run(fire())
    got = np.array([a.json()["predicted_M_Hp"] for a in answers])
    assert len(set(np.round(expected, 4))) > 50  # distinct rows: a mix-up would show
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # float32 rounding differs by batch shape
    metrics = httpx.get(f"{servers[1]}/metrics").text
    count = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("astroscale_fl_serve_micro_batch_rows_count"))
    total = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("astroscale_fl_serve_micro_batch_rows_sum"))
    assert total >= len(bodies) and count < total  # some requests shared a forward pass
    bad = httpx.post(f"{servers[1]}/predict", json={"RArad": 1})
    assert bad.status_code == 422


def test_micro_batcher_failure_reaches_every_caller():
    def boom(rows):
        raise RuntimeError("model exploded")

    async def go():
        batcher = MicroBatcher(boom, window_s=0.0)
        futures = [batcher.submit([1.0]) for _ in range(3)]
        return await asyncio.gather(*futures, return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(go()))


def test_schema_open_ranges_and_null_bounds():
    schema = InputSchema([{"name": "snr", "valid_range": [0.0, math.inf]}, {"name": "z", "valid_range": [None, 5]}])
    assert schema.row({"snr": 1e300, "z": -1e300}) == [1e300, -1e300]
    with pytest.raises(Invalid) as exc:
        schema.row({"snr": -1, "z": 6})
    assert [e["type"] for e in exc.value.detail] == ["greater_than_equal", "less_than_equal"]
    assert "[0, inf]" in exc.value.detail[0]["msg"]
    ra = InputSchema([{"name": "ra", "valid_range": [0.0, 359.999999999]}])
    with pytest.raises(Invalid) as exc:
        ra.row({"ra": 360})
    assert "359.999999999" in exc.value.detail[0]["msg"] and ra.row({"ra": 0}) == [0.0]


def serve_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "astroscale_fl.serve", *args], capture_output=True, text=True,
                          cwd=cwd, env=cli_env(), timeout=120)


def test_cli_without_model_says_how_to_make_one(tmp_path, capsys):
    out = serve_cli(cwd=tmp_path)
    assert out.returncode == 2 and "models/survey_redshift/latest" in out.stderr
    assert "astroscale-fl train task=survey_redshift" in out.stderr and out.stderr.count("\n") == 1
    from astroscale_fl.serve import main as serve_main  # the same entry, in this process

    with pytest.raises(SystemExit) as exit_:
        serve_main(["--model", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "model directory not found" in err and err.count("\n") == 1


def test_cli_port_in_use_is_a_one_line_error(exported, url):
    port = url.rsplit(":", 1)[1]
    out = serve_cli("--model", str(exported[0]), "--port", port)
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr


class DataFrameOnlyPredictor:
    """A stand-in whose pipeline takes DataFrames only (as before the numpy-dict pipeline)."""

    model_dir = "fake"
    inputs = ["a", "b"]
    output_name = "predicted_y"
    card = {"task": "fake", "inputs": [{"name": "a", "valid_range": [0, 1]}, {"name": "b", "valid_range": [0, 1]}]}

    def predict_frame(self, frame):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError("expected a DataFrame")
        return (frame["a"] + 2 * frame["b"]).to_numpy()


def test_service_falls_back_to_dataframes():
    from astroscale_fl.serve import Service

    service = Service(DataFrameOnlyPredictor())
    assert not service.columns_as_mapping
    assert json.loads(service.predict_single_body(b'{"a": 0.5, "b": 0.25}')) == {"predicted_y": 1.0}
    assert json.loads(service.predict_batch_body(b'[{"a": 0, "b": 1}, {"b": 0, "a": 1}]')) == {"predicted_y": [2.0, 1.0]}


def test_service_refuses_a_model_that_cannot_predict():
    from astroscale_fl.errors import DataError
    from astroscale_fl.serve import Service

    class Broken(DataFrameOnlyPredictor):
        def predict_frame(self, frame):
            raise AttributeError("'Scaler' object has no attribute 'clip'")

    with pytest.raises(DataError, match="cannot predict.*clip"):
        Service(Broken())
