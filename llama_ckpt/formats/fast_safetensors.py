"""fastsafetensors (IBM) reading a safetensors checkpoint, on the CPU."""

from __future__ import annotations

from dataclasses import dataclass

from .safetensors import SafeTensors


class FastSafeTensors(SafeTensors):
    """Saved as safetensors (``save_file``, fsynced: the same bytes as the
    ``safetensors`` approach); loaded with fastsafetensors in its CPU mode
    (``SafeTensorsFileLoader(..., "cpu", nogds=True)``: no GPUDirect
    Storage): ``max_threads`` threads read the whole file into one buffer
    with large reads, then each tensor is copied out of it (the tensors the
    library returns are views of its buffer, which ``close()`` frees).

    Caveats: the buffer and the copies coexist until the last tensor is
    copied (about twice the model at the peak); local files only.
    """

    MECHANISM = "FastSafeTensors"
    s3_unsupported = "fastsafetensors reads local files only"
    PEAK_FACTOR = 2.1  # its buffer of the whole file beside the copies taken out of it

    @dataclass(frozen=True)
    class Knobs:
        dtype: str = "float32"
        max_threads: int = 16
        bbuf_size_kb: int = 16 * 1024  # its bounce buffer

    def read(self, loc, manifest, progress):
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup

        loader = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True, max_threads=self.k.max_threads,
                                       bbuf_size_kb=self.k.bbuf_size_kb)
        try:
            loader.add_filenames({0: [str(loc.local_file(self.FILE))]})
            files = loader.copy_files_to_device()
            try:
                out = {}
                for t in manifest["tensors"]:
                    out[t["name"]] = files.get_tensor(t["name"]).clone()
                    progress(1)
            finally:
                files.close()
        finally:
            loader.close()
        return out

    def iter_tensors(self, loc, manifest):  # verify reads the file the way safetensors does
        yield from SafeTensors.iter_tensors(self, loc, manifest)
