"""benchmarks/common.py: the environment record, where results go, the atomic write, the timer, the parser."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from benchmarks import common


def test_environment_names_versions_machine_and_commit_without_hostname():
    env = common.environment()
    for key in ("python", "torch", "cuda", "triton", "cpu", "cpu_count", "gpu", "commit", "dirty"):
        assert key in env, key
    head = subprocess.run(["git", "-C", str(common.REPO), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    assert env["commit"] == head and isinstance(env["dirty"], bool)
    assert socket.gethostname() not in json.dumps(env)


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert common.git_commit(tmp_path) == {"commit": None, "dirty": None}


def test_result_path_takes_a_folder_or_a_json_path(tmp_path, monkeypatch):
    assert common.result_path("scan_gpu", tmp_path) == tmp_path / "scan_gpu.json"
    assert common.result_path("scan_gpu", tmp_path / "x.json") == tmp_path / "x.json"
    monkeypatch.setenv("OUT", str(tmp_path))
    assert common.result_path("decode") == tmp_path / "decode.json"
    monkeypatch.delenv("OUT")
    assert common.result_path("decode") == common.RESULTS / "decode.json"


def test_write_result_embeds_environment_and_command_and_leaves_no_temporary(tmp_path):
    path = common.write_result("bench", {"rows": [1, 2]}, tmp_path / "sub")
    record = json.loads(path.read_text())
    assert path == tmp_path / "sub" / "bench.json"
    assert record["benchmark"] == "bench" and record["rows"] == [1, 2]
    assert record["environment"]["torch"] and record["command"].startswith("python3 ")
    common.write_result("bench", {"rows": [3]}, tmp_path / "sub")  # rewritten after every section
    assert json.loads(path.read_text())["rows"] == [3]
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]


def test_write_result_keeps_the_previous_file_when_the_payload_fails(tmp_path):
    path = common.write_result("bench", {"rows": [1]}, tmp_path)

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        common.write_result("bench", {"rows": Unserialisable()}, tmp_path)
    assert json.loads(path.read_text())["rows"] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_timing_median_and_spread():
    t = common.Timing.of([3.0, 1.0, 2.0, 10.0, 4.0])
    assert (t.median_s, t.min_s, t.max_s, t.repeats) == (3.0, 1.0, 10.0, 5)
    assert t.q25_s <= t.median_s <= t.q75_s
    single = common.Timing.of([0.5])
    assert single.median_s == single.q25_s == single.q75_s == 0.5
    with pytest.raises(ValueError, match="no samples"):
        common.Timing.of([])


def test_time_call_runs_warmup_then_repeats():
    calls = []
    t = common.time_call(lambda: calls.append(1), "cpu", repeats=4, warmup=2)
    assert len(calls) == 6 and t.repeats == 4 and 0 <= t.min_s <= t.median_s <= t.max_s
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        common.time_call(lambda: None, repeats=0)


def test_rotation_puts_each_item_first_once_per_round():
    items = ["a", "b", "c"]
    orders = [common.rotation(items, step) for step in range(6)]
    assert orders[:3] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]] and orders[3:] == orders[:3]
    assert common.rotation([], 5) == []


def test_time_interleaved_rotates_the_calls_every_round():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    timings = common.time_interleaved(fns, "cpu", repeats=3, warmup=1)
    assert order == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {name: t.repeats for name, t in timings.items()} == {"a": 3, "b": 3, "c": 3}
    with pytest.raises(ValueError, match="time_interleaved: repeats must be >= 1"):
        common.time_interleaved(fns, repeats=0)


def test_base_parser_adds_only_the_asked_flags():
    plain = common.base_parser("x").parse_args([])
    assert vars(plain) == {"out": None}
    full = common.base_parser("x", device="cpu", dtype="float32", repeats=3, warmup=1)
    args = full.parse_args(["--out", "o", "--dtype", "bfloat16", "--repeats", "5"])
    assert (args.out, args.device, args.dtype, args.repeats, args.warmup) == ("o", "cpu", "bfloat16", 5, 1)
    with pytest.raises(SystemExit):
        full.parse_args(["--dtype", "float64"])


def _fake_official_build(root, conv: str | None):
    """anchors/build_official.sh's layout under root; conv: None (not started), "started" or "built"."""
    (root / "mamba_ssm-2.3.2.post1").mkdir(parents=True)
    (root / "bss").mkdir()
    (root / "bss" / "selective_scan_cuda.so").touch()
    if conv is not None:
        (root / "causal_conv1d-1.7.0").mkdir()
        (root / "bcc").mkdir()
    if conv == "built":
        (root / "bcc" / "causal_conv1d_cuda.so").touch()


@pytest.mark.parametrize("conv, extra", [(None, []), ("started", []),
                                         ("built", ["causal_conv1d-1.7.0", "bcc"])])
def test_add_official_to_path_adds_the_build_and_its_conv_when_built(tmp_path, monkeypatch, conv, extra):
    monkeypatch.setattr(sys, "path", ["elsewhere"])
    _fake_official_build(tmp_path, conv)
    assert common.add_official_to_path(tmp_path, wait_s=0)
    assert sys.path == [str(tmp_path / p) for p in ["mamba_ssm-2.3.2.post1", "bss", *extra]] + ["elsewhere"]


def test_add_official_to_path_is_false_without_the_selective_scan(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", ["elsewhere"])
    (tmp_path / "mamba_ssm-2.3.2.post1").mkdir()
    assert not common.add_official_to_path(tmp_path, wait_s=0)
    assert sys.path == ["elsewhere"]
