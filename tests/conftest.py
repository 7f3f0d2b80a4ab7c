import atexit
import os
import shutil
import tempfile

# Before llama_ckpt is imported, here and in every process the tests start (notebook kernels, ranks): the suite
# drops the kernel's caches before each save where it may; the tests point that at a file of their own, so that
# running them never drops the caches of a benchmark beside them.
_fd, _knob = tempfile.mkstemp(prefix="llama_ckpt-drop_caches-")
os.close(_fd)
os.environ["LLAMA_CKPT_DROP_CACHES"] = _knob
# no fstrim before each of the tests' saves (0.1 s each, and the disk's state is not what they check); one test
# trims on purpose
os.environ["LLAMA_CKPT_FSTRIM"] = "off"
# the machine lock and the disk cap's state: a directory of this test process's own (each xdist worker one), so
# that the tests never wait for, stop, or restore the cap of a benchmark running beside them
_machine = tempfile.mkdtemp(prefix="llama_ckpt-machine-")
os.environ["LLAMA_CKPT_MACHINE_DIR"] = _machine
# the kernel's free page reporting to a VM's host: none here, so that a test's run never changes the machine's
# (tests/test_hostmem.py gives it a directory of its own)
os.environ["LLAMA_CKPT_PAGE_REPORTING"] = os.path.join(_machine, "no-page-reporting")
atexit.register(lambda: os.path.exists(_knob) and os.remove(_knob))
atexit.register(lambda: shutil.rmtree(_machine, ignore_errors=True))

import pytest
import torch

from llama_ckpt.store import server as s3_server
from llama_ckpt.model import get_model


@pytest.fixture(scope="session")
def tiny():
    return get_model("tiny")


@pytest.fixture(scope="session")
def tiny_sd(tiny):
    return tiny.materialize()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One SeaweedFS server on loopback for the whole test session."""
    srv = s3_server.start_server(tmp_path_factory.mktemp("s3") / "s3")
    yield srv
    srv.stop()


def clone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sd.items()}
