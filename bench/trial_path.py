"""One serial trial's path through hgsearch's modules: which modules it visits, and how often it jumps between them.

Runs `run_search` for one trial of one family (serial executor, CPU, 2 epochs) on a tiny IDX dataset,
once untraced (imports, first-call caches) and then, on a new study, traced: every call into an
hgsearch function is recorded with sys.setprofile (main thread only: the heartbeat thread is not
followed; import-time module code is not the path). A jump is a call from an hgsearch frame into an
hgsearch function of another module (consecutive frames: a call that reaches hgsearch through Optuna
or torch, such as Optuna's study calling the retrying storage or nn.Module calling forward, is not
one); a module's visits are the jumps into it. Three counts per module:

- path: the jumps into it counted once per call site (caller function -> callee function), as a
  reader follows the code: loops do not repeat them, and property getters and dunder protocol methods
  (len, post-init), which read as attribute access, are not jumps. Issue 20's "each module at most
  twice" is read on this count;
- every call: each jump as it happens, accessors included, so loops repeat (each progress callback,
  each epoch end);
- from modules: the number of other modules that jump into it.

Runs on any layout of the package: the run_search import path is tried from --run-search (default:
the subpackage layout, then the old flat one), and the dataset comes from the same tree's
tests/conftest.py. To measure the old flat layout:

    git worktree add --detach /tmp/old abbc588
    PYTHONPATH=/tmp/old .venv/bin/python bench/trial_path.py
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

CANDIDATES = ("hgsearch.search.run:run_search", "hgsearch.search:run_search")


def _run_search(path: str | None) -> Any:
    errors = []
    for candidate in [path] if path else CANDIDATES:
        module, _, name = candidate.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            errors.append(f"{candidate}: {e}")
    raise SystemExit("cannot import run_search: " + "; ".join(errors))


def _make_idx(root: Path) -> Path:
    """tests/conftest.py's make_idx_dataset, from the same tree as the hgsearch imported."""
    import hgsearch

    conftest = Path(hgsearch.__file__).resolve().parents[1] / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("trial_path_conftest", conftest)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_idx_dataset(root, n_train=200, n_test=60)


class Tracer:
    """Records each call into an hgsearch function with its caller: (module, function), None when the
    calling frame is not hgsearch code (Optuna, torch, this script)."""

    def __init__(self, package_dir: Path) -> None:
        self.root = str(package_dir) + "/"
        self.stack: list[tuple[str, str] | None] = []  # (module, function) per frame; None: not hgsearch
        self.calls: list[tuple[tuple[str, str] | None, tuple[str, str]]] = []  # (caller if hgsearch, callee)

    def module(self, frame: FrameType) -> str | None:
        name = frame.f_code.co_filename
        if not name.startswith(self.root) or frame.f_code.co_name == "<module>":  # import-time code: not the path
            return None
        rel = name[len(self.root):].removesuffix(".py").removesuffix("/__init__")
        return "hgsearch." + rel.replace("/", ".")

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            mod = self.module(frame)
            me = (mod, frame.f_code.co_qualname) if mod else None
            if me is not None:
                self.calls.append((self.stack[-1] if self.stack else None, me))
            self.stack.append(me)
        elif event == "return" and self.stack:
            self.stack.pop()


def accessor(module: str, qualname: str) -> bool:
    """A property getter or a dunder protocol method (len, post-init): reads as attribute access, not a call."""
    *owner, name = qualname.split(".")
    if not owner or "<locals>" in owner:
        return False
    if name.startswith("__") and name.endswith("__"):
        return name not in ("__init__", "__call__")
    obj: Any = sys.modules.get(module)
    for part in owner:
        obj = getattr(obj, part, None)
    return isinstance(inspect.getattr_static(obj, name, None), property | functools.cached_property)


def report(calls: list[tuple[tuple[str, str] | None, tuple[str, str]]]) -> dict[str, Any]:
    modules = sorted({callee[0] for _, callee in calls})
    every = Counter(callee[0] for caller, callee in calls if caller is not None and caller[0] != callee[0])
    sites = {(caller, callee) for caller, callee in calls
             if caller is not None and caller[0] != callee[0] and not accessor(*callee)}
    path = Counter(callee[0] for _, callee in sites)
    pairs = Counter(callee for _, callee in {(caller[0], callee[0]) for caller, callee in sites})
    return {"modules": modules, "every": every, "sites": sites, "path": path, "pairs": pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-search", help="module:function of run_search (default: tries "
                    f"{' then '.join(CANDIDATES)})")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--edges", action="store_true", help="also list every jump (caller -> callee) on the path")
    args = ap.parse_args()

    logging.disable(logging.INFO)  # as the CLI does: no Optuna INFO lines
    run_search = _run_search(args.run_search)
    import hgsearch
    from hgsearch.config import RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        data = _make_idx(Path(tmp) / "idx")
        cfg = RunConfig(budget=100_000, dataset="idx", data_dir=str(data), family="hourglass", trials=1,
                        epochs=args.epochs, results_dir=str(Path(tmp) / "results"), study="path", device="cpu",
                        pack_size=1)
        run_search(cfg)  # once untraced: lazy imports and first-call caches are not the path
        cfg = dataclasses.replace(cfg, study="traced")  # a new study: the traced run claims and trains one trial
        tracer = Tracer(Path(hgsearch.__file__).resolve().parent)
        sys.setprofile(tracer)
        try:
            studies = run_search(cfg)
        finally:
            sys.setprofile(None)
        states = {f: [t.state.name for t in s.get_trials()] for f, s in studies.items()}

    r = report(tracer.calls)
    print(f"hgsearch from {Path(hgsearch.__file__).resolve().parent}; run_search: {run_search.__module__}; "
          f"trial states: {states}")
    print(f"modules visited: {len(r['modules'])}")
    print(f"jumps between modules: {len(r['sites'])} on the path (call sites), {sum(r['every'].values())} "
          "counting every call")
    over = sorted(m for m, v in r["path"].items() if v > 2)
    print(f"modules visited more than twice on the path: {len(over)} ({', '.join(over) or 'none'})")
    print(f"{'module':<36} {'path':>5} {'every call':>11} {'from modules':>13}")
    for mod in sorted(r["modules"], key=lambda m: (-r["path"][m], m)):
        print(f"{mod:<36} {r['path'][mod]:>5} {r['every'][mod]:>11} {r['pairs'][mod]:>13}")
    if args.edges:
        for (caller, callee) in sorted(r["sites"], key=lambda e: (e[1][0], e[0][0], e[0][1], e[1][1])):
            print(f"  {caller[0]}.{caller[1]} -> {callee[0]}.{callee[1]}")


if __name__ == "__main__":
    main()
