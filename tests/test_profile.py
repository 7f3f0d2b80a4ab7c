"""The machine profile as a record (llama_ckpt.results.profile): its JSON round trip, an older run's profile with
keys missing, its fields documented, and the disk's rates defined once for the bounds and the share-of-disk
columns."""

import dataclasses
import json

import pytest

from llama_ckpt.results import MachineProfile, Rate, disk_rates, measurement_row
from llama_ckpt.results import bounds
from llama_ckpt.results.profile import field_docs

REF = {"reference_kind": "disk", "reference_bytes": 1e9, "reference_write_s": 1.25, "reference_read_s": 1.0,
       "reference_write_way": "one stream", "reference_read_way": "8 threads",
       "reference_write_Bps": 800e6, "reference_read_Bps": 1000e6,
       "reference_samples": [{"write_stream_s": 1.25, "read_stream_s": 1.1, "read_parallel_s": 1.0, "read_cold": True},
                             {"write_stream_s": 1.3, "read_stream_s": 0.9, "read_parallel_s": 0.8, "read_cold": True},
                             {"write_stream_s": 1.2, "read_stream_s": 0.1, "read_parallel_s": 0.1,
                              "read_cold": False}]}  # from the page cache: never the disk's rate


def _rate(x: float) -> dict:
    return {"median": x, "spread_pct": 10.0, "samples": [x * 0.95, x, x * 1.05]}


def _profile_dict() -> dict:
    """A profile's JSON as bench.machine.profile writes it, every key."""
    return {"cores": 4, "memory_bytes": 16 << 30, "page_bytes": 4096, "fs_type": "ext4", "fs_device": "/dev/sda1",
            "mount_options": "rw,relatime", "thp": "madvise", "bytes": 1 << 30, "samples": 3,
            "memory_sample_bytes": 256 << 20, "small_files": 500, "codec_sample_bytes": 8 << 20,
            "durable_fresh_Bps": _rate(700e6), "durable_freed_Bps": _rate(900e6),
            "durable_sequence_Bps": [690e6, 700e6, 710e6, 720e6, 880e6, 900e6, 920e6], "reference": REF,
            "pagecache_bytes": 1 << 30, "buffered_write_Bps": _rate(2e9), "direct_write_Bps": _rate(650e6),
            "direct_read_Bps": _rate(950e6), "memory_copy_1_Bps": _rate(5e9), "memory_copy_all_Bps": _rate(20e9),
            "fresh_memory_Bps": _rate(3e9), "fresh_memory_huge_Bps": None, "small_files_per_s": _rate(800.0),
            "file_creates_per_s": _rate(20000.0), "fsyncs_per_s": _rate(900.0),
            "codecs_Bps": {"gzip": _rate(50e6), "zstd": _rate(400e6)}, "host_memory": None, "not_measured": None,
            "profile_s": 31.5}


def test_the_record_reads_and_writes_the_profiles_json_keys_unchanged():
    d = _profile_dict()
    prof = MachineProfile.from_dict(d)
    assert prof.to_dict() == d and json.loads(json.dumps(prof.to_dict())) == d
    assert list(prof.to_dict()) == [f.name for f in dataclasses.fields(MachineProfile)] == list(d)
    assert prof.small_files_per_s == Rate(800.0, 10.0, (760.0, 800.0, 840.0))
    assert prof.codecs_Bps["zstd"].median == 400e6 and prof.fresh_memory_huge_Bps is None
    assert MachineProfile.from_dict(prof.to_dict()) == prof
    with pytest.raises(dataclasses.FrozenInstanceError):
        prof.cores = 8  # type: ignore[misc]


def test_an_older_runs_profile_reads_with_its_missing_keys_as_none():
    d = _profile_dict()
    for key in ("codecs_Bps", "durable_freed_Bps", "durable_sequence_Bps", "fresh_memory_huge_Bps", "profile_s"):
        del d[key]
    prof = MachineProfile.from_dict({**d, "a_key_from_elsewhere": 1})
    assert prof.codecs_Bps is None and prof.durable_freed_Bps is None and prof.profile_s is None
    assert prof.codec_Bps("zstd") is None and prof.write_source() == "disk reference"  # 800 MB/s beats 700 fresh
    assert set(prof.to_dict()) == {f.name for f in dataclasses.fields(MachineProfile)}  # today's keys, None
    assert MachineProfile.of_env({"machine": d}) == prof
    assert MachineProfile.of_env({"reference_write_Bps": 1.0}) is None and MachineProfile.of_env(None) is None


def test_every_field_says_its_unit_and_what_it_is():
    docs = field_docs()
    assert [d[0] for d in docs] == [f.name for f in dataclasses.fields(MachineProfile)]
    assert all(unit and what for _name, _type, unit, what in docs)
    assert dict((d[0], d[2]) for d in docs)["small_files_per_s"] == "files/s"


def test_the_disk_rates_are_one_definition_for_the_bounds_and_the_share_of_disk():
    from llama_ckpt.report import tables

    prof = MachineProfile.from_dict(_profile_dict())
    # write: the best median durable write (freed space, 900 MB/s, beats fresh 700 and the reference's 800);
    # read: the fastest confirmed-cold sample (0.8 s for 1 GB), not the reference's median (1000 MB/s)
    assert (prof.write_Bps(), prof.write_source()) == (900e6, "durable write to freed space")
    assert prof.read_Bps() == pytest.approx(1.25e9)
    env = {**REF, "machine": prof.to_dict()}
    assert disk_rates(env) == (prof.write_Bps(), prof.read_Bps())
    work = dict(user_s=0.0, sys_s=0.0, write_bytes=0, minor_faults=0, storage_write_bytes=1e9,
                storage_read_bytes=1e9)
    row = {"cpu_io_save": work, "cpu_io_load": work}
    assert bounds.limits(row, "save", prof)["disk write"] == pytest.approx(1e9 / prof.write_Bps())
    assert bounds.limits(row, "load", prof)["disk read"] == pytest.approx(1e9 / prof.read_Bps())
    # an approach that saves at 450 MB/s and loads at 1.125 GB/s: half the disk's write, 90% of its read (not
    # 112% of the reference's median read)
    rows = [measurement_row(approach="a", repeat=i, verified=True, save_s=2.0, load_s=0.8, bytes_apparent=9e8,
                            bytes_on_disk=9e8, n_files=1, stored_dtype="float32", max_abs_err=0.0)
            for i in (1, 2, 3)]
    share = tables.disk_share(rows, env)
    assert share.loc["a", "save_share_of_disk"] == pytest.approx(0.5)
    assert share.loc["a", "load_share_of_disk"] == pytest.approx(0.9)
    # with no profile (S3): the storage reference's rates, by the same rules
    assert disk_rates(REF) == (800e6, pytest.approx(1.25e9))
    assert disk_rates(None) == (None, None)


def test_the_record_is_read_from_the_runs_file_or_not_at_all(tmp_path):
    path = tmp_path / "machine-profile.json"
    assert MachineProfile.read(path) is None
    path.write_text(json.dumps(_profile_dict()))
    assert MachineProfile.read(path) == MachineProfile.from_dict(_profile_dict())


def test_the_reports_read_the_record():
    from llama_ckpt.report import machine, training

    prof = MachineProfile.from_dict(_profile_dict())
    t = machine.machine_table(prof)
    assert "memory copy, every core" in t.index and t.loc["memory copy, every core", "median"] == 20e3
    assert t.loc["disk reference, cold read (8 threads)", "median"] == 1000
    line = machine.machine_line(prof)
    assert "4 cores" in line and "write 900 MB/s (durable write to freed space), read 1,250 MB/s" in line, line
    assert machine.machine_line(prof.to_dict()) == line  # the JSON dict still reads
    assert "host" not in line  # no page reporting recorded: nothing said about it
    held = dataclasses.replace(prof, host_memory={"order": 11, "reported_kib": 5, "held": True})
    assert "Free memory kept from the VM's host while it measured" in machine.machine_line(held)
    left = dataclasses.replace(prof, host_memory={"order": 9, "reported_kib": 5, "held": False})
    assert "reported to the VM's host as it came" in machine.machine_line(left)
    assert training._memory_copy_Bps(prof) == 20e9 and training._memory_copy_Bps(None) is None
    assert machine.machine_table(None).empty
