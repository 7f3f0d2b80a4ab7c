"""Running the CLI from the tests: in a subprocess, as a user does, or in
this process (same code path, same output, without the ~5 s start-up of a
fresh interpreter importing torch) for the checks of its one-line errors."""

import contextlib
import io
import subprocess
import sys
from dataclasses import dataclass

from llama_ckpt import cli as cli_module


def cli(*args, env=None, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "llama_ckpt", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_here(*args) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_module.main(list(args))
        except SystemExit as exc:  # argparse's usage errors and --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
