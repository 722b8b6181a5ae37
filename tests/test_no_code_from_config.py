"""Issue 23 (security): no config or message value can become code.

The source is scanned with :mod:`ast` for every call that runs or loads code (``eval``, ``exec``,
``compile``, ``__import__``, pandas ``query``/``eval``, pickle, ``torch.load`` without
``weights_only=True``, ``np.load(allow_pickle=True)``, ``importlib.import_module``, Hydra's
``instantiate``). Each is absent or one of the sites listed here, reviewed: a new one fails this
test until it is reviewed too. (Configs reach nodes as JSON, checked by ``run_config.from_json``;
``task.filter`` is :mod:`astroscale_fl.data.filter_expr`, tested in ``test_filter_expr.py``.)
"""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGES = ("astroscale_fl", "server", "clients", "strategies")
#: (file, called name) -> why it is safe
REVIEWED = {
    ("astroscale_fl/cli.py", "import_module"): "a module from the fixed COMMANDS table, picked by the subcommand's name",
    ("astroscale_fl/deploy/launcher.py", "import_module"): "the constant PREIMPORT list",
    ("astroscale_fl/deploy/app_cache.py", "import_module"): "modules a ClientApp child of this node already imported (its own report)",
    ("clients/app.py", "query"): "Flower's @app.query('secagg') decorator (a message type, not an expression)",
    ("astroscale_fl/ingest/pipeline.py", "query"): "skyserver.query: our HTTP client sending SQL to the archive (runs nothing here)",
}
_BUILTINS = {"eval", "exec", "compile", "__import__"}
_ANYWHERE = {"import_module", "instantiate", "locate", "run_path", "run_module", "read_pickle"}
_PICKLERS = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _receiver(call: ast.Call) -> str:
    func = call.func
    return ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def _runs_code(call: ast.Call) -> bool:
    """Whether a call may turn data into code: eval-like builtins, expression evaluators
    (DataFrame.query / pd.eval with an argument), unpicklers, dynamic imports, Hydra's instantiate."""
    name, receiver = _called_name(call), _receiver(call)
    if isinstance(call.func, ast.Name) and name in _BUILTINS:
        return True
    if name in _ANYWHERE or receiver.split(".")[0] in _PICKLERS:
        return True
    if name in ("query", "eval") and isinstance(call.func, ast.Attribute) and call.args:
        return True  # model.eval() takes no argument; DataFrame.query(expr) and pd.eval(expr) do
    if name == "load" and receiver == "torch":
        return not _keyword_is(call, "weights_only", True)
    if name == "load" and receiver in ("np", "numpy"):
        return any(k.arg == "allow_pickle" for k in call.keywords) and not _keyword_is(call, "allow_pickle", False)
    return False


def _sites() -> list[tuple[str, ast.Call]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            out += [(str(path.relative_to(ROOT)), node) for node in ast.walk(tree) if isinstance(node, ast.Call) and _runs_code(node)]
    return out


def test_no_config_or_message_value_reaches_code_execution():
    sites = _sites()
    unreviewed = [f"{path}:{call.lineno}: {ast.unparse(call)[:120]}" for path, call in sites if (path, _called_name(call)) not in REVIEWED]
    assert not unreviewed, "calls that may run code from data; review them and list them in REVIEWED:\n" + "\n".join(unreviewed)
    assert {(path, _called_name(call)) for path, call in sites} == set(REVIEWED)  # the list holds no stale entry


def test_the_scan_finds_what_it_looks_for():
    """The scan is not vacuous: the old filter (pandas query) and loaders of pickles are found,
    data-only calls are not."""
    sample = ast.parse("table.query(cfg.filter)\npickle.loads(blob)\ntorch.load(p)\nnp.load(p, allow_pickle=True)\neval(s)\n"
                       "model.eval()\ntorch.load(p, weights_only=True)\nnp.load(p)\njson.loads(s)")
    calls = [n for n in ast.walk(sample) if isinstance(n, ast.Call)]
    assert [ast.unparse(c) for c in calls if _runs_code(c)] == ["table.query(cfg.filter)", "pickle.loads(blob)", "torch.load(p)",
                                                                "np.load(p, allow_pickle=True)", "eval(s)"]
