"""Run one of the book's entry points with its epochs capped, in the book's interpreter (``python THIS_FILE``).

Used by ``provision book --smoke``. The book's training epochs have fixed lengths (its balanced
datasets report 50,000 to 300,000 samples), so this caps ``len()`` of every dataset a DataLoader is
built on at ``--samples``, in this process only: the book's files are not touched. The cap is set on
the dataset's class (not a wrapper around the instance), so worker processes, which unpickle the
dataset by reference, and the book's own ``dl.dataset.something`` calls see the book's objects.

Kept free of imports from the package so any interpreter (a venv's too) can run it by path, like
``gpu_probe.py``. The last line it prints is a JSON object the parent reads: the device it used.
"""

import argparse
import json
import random
import runpy
import sys
from typing import Any


def cap_epochs(samples: int) -> None:
    """Make every dataset handed to a DataLoader report at most ``samples`` items (first ones kept)."""
    from torch.utils.data import DataLoader

    original_init = DataLoader.__init__

    def init(self: Any, dataset: Any, *args: Any, **kwargs: Any) -> None:
        cls = type(dataset)
        if "_smoke_capped" not in cls.__dict__ and hasattr(cls, "__len__"):
            full_len = cls.__len__

            def capped(ds: Any) -> int:
                return min(full_len(ds), samples)

            cls.__len__ = capped
            cls._smoke_capped = True
        original_init(self, dataset, *args, **kwargs)

    DataLoader.__init__ = init  # the point: every DataLoader the book builds


def sample(target: str) -> None:
    """Build a dataset class with its defaults and read its first item (chapter 10 has no app)."""
    module, _, name = target.rpartition(".")
    dataset = getattr(__import__(module, fromlist=[name]), name)()
    item = dataset[0]
    shapes = [tuple(x.shape) for x in item if hasattr(x, "shape")]
    print(f"{target}: {len(dataset)} samples; the first has tensors of shapes {shapes}")


def run_notebook(path: str) -> None:
    """Run a notebook's code cells in order in one namespace, as a kernel would (IPython's shell where it is installed,
    for magics; without it, magic lines are left out: under the Agg backend ``%matplotlib inline`` changes nothing)."""
    import json as _json

    with open(path) as fh:
        cells = ["".join(c["source"]) for c in _json.load(fh)["cells"] if c.get("cell_type") == "code"]
    try:
        from IPython.core.interactiveshell import InteractiveShell
    except ImportError:
        namespace = {"__name__": "__main__"}
        for number, source in enumerate(cells, 1):
            code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            exec(compile(code, f"{path} cell {number}", "exec"), namespace)  # noqa: S102 - the book's own notebook
    else:
        shell = InteractiveShell.instance()
        for number, source in enumerate(cells, 1):
            result = shell.run_cell(source, silent=True)
            if not result.success:
                error = result.error_in_exec or result.error_before_exec
                raise RuntimeError(f"{path} cell {number}: {type(error).__name__}: {error}")
    print(f"{path}: {len(cells)} code cells ran")


def main(argv: list) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--module", help="run this module as __main__ (python -m)")
    parser.add_argument("--sample", help="a dataset class to build and read one item of")
    parser.add_argument("--notebook", help="a notebook whose code cells to run in order")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    import numpy as np
    import torch

    random.seed(opts.seed)
    np.random.seed(opts.seed)
    torch.manual_seed(opts.seed)
    cap_epochs(opts.samples)
    sys.path.insert(0, "")  # the book's packages, as `python -m` from its folder would see them
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.sample:
        sample(opts.sample)
    elif opts.notebook:
        run_notebook(opts.notebook)
    else:
        args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
        sys.argv = [opts.module, *args]
        runpy.run_module(opts.module, run_name="__main__", alter_sys=True)
    print(json.dumps({"device": device, "gpus": torch.cuda.device_count() if device == "cuda" else 0}))


if __name__ == "__main__":
    main(sys.argv[1:])
