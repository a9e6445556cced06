"""A .pt2 never runs code when edgecli reads it: every part of the archive torch would unpickle or
execute (pickled weights and constants, sample inputs, symbolic expressions, guards, node targets,
AOTInductor code) is refused, naming the part, unless the user passes --trust-pickle; a tampered
archive is one line, exit 3. Archives are crafted for real from the sample .pt2 and read by the
real CLI (edgecli/formats/pt2_archive.py lists the parts). Each case is its own process: forked from
a warm interpreter (tests/conftest.py, run_cli), or started for real (run_cli_process) for the pickled
weight under every verb; a payload never runs in the test process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import data_args, run_cli, run_cli_process
from tests.robustness.conftest import assert_refused

REFUSED = "pass --trust-pickle if you trust this file"


def _members(source: Path) -> tuple[str, list[tuple[str, bytes]]]:
    with zipfile.ZipFile(source) as archive:
        items = [(i.filename, archive.read(i)) for i in archive.infolist()]
    prefix = items[0][0].split("/", 1)[0] + "/"
    return prefix, [(name[len(prefix) :], data) for name, data in items]


def craft(
    source: Path, target: Path, change=None, add: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()
) -> Path:
    """`source` rewritten: change(name, bytes) -> bytes for each member, `add` appended, `drop` left out."""
    prefix, items = _members(source)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in items:
            if name in drop:
                continue
            archive.writestr(prefix + name, change(name, data) if change else data)
        for name, data in (add or {}).items():
            archive.writestr(prefix + name, data)
    return target


def evil(marker: Path, then: str) -> bytes:
    """A torch.save file whose unpickling touches `marker` (os.system) and then returns `then`."""

    class Payload:
        def __reduce__(self):
            return (eval, (f"(__import__('os').system('touch {marker}'), {then})[1]",))

    buffer = io.BytesIO()
    torch.save(Payload(), buffer)
    return buffer.getvalue()


def raw_evil(marker: Path, then: str) -> bytes:
    """The same payload as a bare pickle (what pickle.loads reads)."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (eval, (f"(__import__('os').system('touch {marker}'), {then})[1]",))

    return pickle.dumps(Payload())


def pickled(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _config(data: bytes, fqn: str, **fields) -> bytes:
    config = json.loads(data)
    config["config"][fqn].update(fields)
    return json.dumps(config).encode()


WEIGHT = "0.weight"  # the first convolution of the sample model: 32x1x3x3, stored as data/weights/weight_0
WEIGHT_VALUE = "__import__('torch').nn.Parameter(__import__('torch').zeros(32, 1, 3, 3))"


def pickled_weight(sample, tmp_path: Path, payload: bytes) -> Path:
    def change(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            return _config(data, WEIGHT, use_pickle=True)
        return payload if name == "data/weights/weight_0" else data

    return craft(sample["pt2"], tmp_path / "evil.pt2", change)


def _constant(kind: str, payload: bytes):
    def change(name: str, data: bytes) -> bytes:
        if name == "data/constants/model_constants_config.json":
            config = json.loads(data)
            config["config"]["c0"] = {"path_name": kind, "is_param": False, "use_pickle": True, "tensor_meta": None}
            return json.dumps(config).encode()
        return data

    return change, {f"data/constants/{kind}": payload}


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture
def evil_archives(sample, tmp_path, marker):
    """name -> crafted archive, each running os.system('touch marker') if torch reads it unguarded."""
    folder = tmp_path / "archives"
    folder.mkdir()
    found = {"weight": pickled_weight(sample, folder, evil(marker, WEIGHT_VALUE))}
    found["weight"] = found["weight"].rename(folder / "weight.pt2")
    inputs = evil(marker, "((__import__('torch').zeros(1, 1, 28, 28),), {})")
    found["sample_inputs"] = craft(
        sample["pt2"], folder / "inputs.pt2", lambda n, d: inputs if n == "data/sample_inputs/model.pt" else d
    )
    for kind in ("tensor_0", "opaque_obj_0", "custom_obj_0"):
        payload = (raw_evil if kind == "opaque_obj_0" else evil)(marker, "__import__('torch').zeros(2)")
        change, add = _constant(kind, payload)
        found[kind] = craft(sample["pt2"], folder / f"{kind}.pt2", change, add)
    hook = f"(__import__('os').system('touch {marker}'), Symbol('s31', positive=True, integer=True))[1]"
    found["expr_str"] = craft(
        sample["pt2"],
        folder / "expr.pt2",
        lambda n, d: (
            d.replace(b"Symbol('s31', positive=True, integer=True)", hook.encode()) if n == "models/model.json" else d
        ),
    )
    guard = json.dumps([f"__import__('os').system('touch {marker}') == 0"])

    def guards(name: str, data: bytes) -> bytes:
        return (
            data.replace(b'"guards_code": []', b'"guards_code": ' + guard.encode())
            if name == "models/model.json"
            else data
        )

    found["guards_code"] = craft(sample["pt2"], folder / "guards.pt2", guards)
    found["aotinductor"] = craft(
        sample["pt2"], folder / "aoti.pt2", add={"data/aotinductor/model/model.so": b"\x7fELF"}
    )
    return found


PARTS = {
    "weight": "data/weights/weight_0",
    "sample_inputs": "data/sample_inputs/model.pt",
    "tensor_0": "data/constants/tensor_0",
    "opaque_obj_0": "data/constants/opaque_obj_0",
    "custom_obj_0": "data/constants/custom_obj_0",
    "expr_str": "models/model.json",
    "guards_code": "models/model.json",
    "aotinductor": "data/aotinductor/model/model.so",
}


def _snapshot(paths) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


LOAD_WITH_TORCH = "import sys, torch; print(torch.export.load(sys.argv[1]) is not None)"


def test_the_crafted_archives_are_real_attacks_on_torch(evil_archives, marker):
    """Without edgecli's guard torch itself runs the pickled weight's payload (and loads the model):
    the attack the other tests refuse is real. torch loads it in a process of its own: the payload
    never runs in the test process."""
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_TORCH, evil_archives["weight"]], capture_output=True, text=True, timeout=600
    )
    assert loaded.returncode == 0, loaded.stderr
    assert marker.exists() and loaded.stdout.split() == ["True"]


@pytest.mark.parametrize("name", list(PARTS))
def test_inspect_refuses_every_part_torch_would_unpickle_or_run(evil_archives, name, marker, tmp_path, out):
    archive = evil_archives[name]
    before = _snapshot([archive])
    run = run_cli_process if name == "weight" else run_cli  # one real process
    line = assert_refused(run("inspect", archive), 3, REFUSED, out)
    assert PARTS[name] in line and "cannot read model" in line, line
    assert not marker.exists()
    assert _snapshot([archive]) == before


def _evil_runs(sample, archive: Path, out: Path):
    """Every verb that reads a .pt2, on the crafted archive (small data: each refuses before work)."""
    yield "convert", ("convert", archive, "-r", "onnx", *data_args("convert"), "-o", out / "m.onnx")
    yield "bench", ("bench", archive, *data_args("bench"), "--json", out / "bench.json")
    yield "prune", ("prune", archive, *data_args("prune"), "--set", "data.limit=64", "-o", out / "p.pt2")
    yield (
        "distill",
        (
            "distill",
            sample["onnx"],
            *data_args("distill"),
            "--set",
            f"student.path={archive}",
            "--set",
            "epochs=1",
            "--set",
            "data.limit=64",
            "--set",
            "latency_runs=0",
            "-o",
            out / "s.pt2",
        ),
    )  # not quiet: refused before the teacher runs (no progress line)


@pytest.mark.parametrize("verb", ["convert", "bench", "prune", "distill"])
def test_every_verb_refuses_a_pickled_weight_and_never_runs_it(sample, evil_archives, verb, marker, out):
    archive = evil_archives["weight"]
    args = dict(_evil_runs(sample, archive, out))[verb]
    inputs = [archive, sample["onnx"], sample["train"], sample["eval"]]
    before = _snapshot(inputs)
    result = run_cli_process(*args)
    line = assert_refused(result, 3, REFUSED, out)
    assert "data/weights/weight_0" in line and "use_pickle" in line, line
    assert not marker.exists()
    assert _snapshot(inputs) == before


@pytest.mark.parametrize("name", ["sample_inputs", "opaque_obj_0", "expr_str"])
def test_convert_refuses_sample_inputs_constants_and_expressions(sample, evil_archives, name, marker, out):
    line = assert_refused(
        run_cli("convert", evil_archives[name], "-r", "onnx", *data_args("convert"), "-o", out / "m.onnx"),
        3,
        REFUSED,
        out,
    )
    assert PARTS[name] in line, line
    assert not marker.exists()


def test_a_harmless_pickled_weight_loads_with_trust_pickle(sample, tmp_path, out):
    with zipfile.ZipFile(sample["pt2"]) as archive:
        prefix = archive.namelist()[0].split("/", 1)[0]
        raw = archive.read(f"{prefix}/data/weights/weight_0")
    weight = torch.nn.Parameter(torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(32, 1, 3, 3).clone())
    archive = pickled_weight(sample, tmp_path, pickled(weight))
    refused = run_cli("inspect", archive)
    assert refused.code == 3 and REFUSED in refused.lines[0]
    result = run_cli("--trust-pickle", "convert", archive, "-r", "onnx", *data_args("convert"), "-o", out / "m.onnx")
    assert result.code == 0, result.stderr
    assert (out / "m.onnx").exists()
    assert run_cli("inspect", archive, env={"EDGECLI_TRUST_PICKLE": "1"}).code == 0


def test_a_genuine_edgecli_pt2_still_loads_and_converts(sample, tmp_path):
    """The sample .pt2 (torch.export.save to a named file) and one edgecli wrote (prune's output,
    lineage in extra/) pass the inspection and convert; with --trust-pickle the sample converts to
    the very same ONNX bytes (the guard changes nothing in what a genuine archive loads to)."""
    direct, trusted, via = tmp_path / "direct.onnx", tmp_path / "trusted.onnx", tmp_path / "via.onnx"
    assert run_cli("convert", sample["pt2"], "-r", "onnx", *data_args("convert"), "-o", direct, "-q").code == 0
    assert (
        run_cli(
            "--trust-pickle", "convert", sample["pt2"], "-r", "onnx", *data_args("convert"), "-o", trusted, "-q"
        ).code
        == 0
    )
    assert direct.read_bytes() == trusted.read_bytes()
    pruned = tmp_path / "pruned.pt2"
    made = run_cli("prune", sample["pt2"], *data_args("prune"), "--set", "data.limit=64", "-o", pruned, "-q")
    assert made.code in (0, 1), made.stderr  # 1: an accuracy gate; the artifact is still written
    result = run_cli("convert", pruned, "-r", "onnx", *data_args("convert"), "-o", via, "-q")
    assert result.code == 0, result.stderr
    assert run_cli("inspect", pruned).code == 0


def _flip_json(name: str, data: bytes) -> bytes:
    return data.replace(b'"graph_module"', b'"graph_modul\xff"', 1) if name == "models/model.json" else data


TAMPERED = {
    "model JSON bytes flipped": (lambda n, d: _flip_json(n, d), (), "models/model.json"),
    "model JSON truncated": (lambda n, d: d[: len(d) // 2] if n == "models/model.json" else d, (), "models/model.json"),
    "a weight removed": (None, ("data/weights/weight_3",), "data/weights/weight_3"),
    "the model removed": (None, ("models/model.json",), "no known model format"),  # format detection looks for it
    "wrong archive_version": (lambda n, d: b"7" if n == "archive_version" else d, (), "archive_version"),
    "sample inputs damaged": (
        lambda n, d: d[:100] if n == "data/sample_inputs/model.pt" else d,
        (),
        "data/sample_inputs/model.pt",
    ),
    "weight config broken": (
        lambda n, d: b"{" if n == "data/weights/model_weights_config.json" else d,
        (),
        "model_weights_config.json",
    ),
    # torch's export verifier refuses it at load (edgecli's check_targets would too): never called
    "a node calling os.system": (
        lambda n, d: (
            d.replace(b"torch.ops.aten.relu_.default", b"torch.os.system", 1) if n == "models/model.json" else d
        ),
        (),
        "is not an allowed operator",
    ),
    "a weight of the wrong size": (
        lambda n, d: d[:-4] if n == "data/weights/weight_3" else d,
        (),
        "out of bounds for storage",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_archive_is_one_line_exit_3(sample, tmp_path, case, out):
    change, drop, part = TAMPERED[case]
    archive = craft(sample["pt2"], tmp_path / "tampered.pt2", change, drop=drop)
    for args in (("inspect", archive), ("convert", archive, "-r", "onnx", *data_args("convert"), "-o", out / "m.onnx")):
        line = assert_refused(run_cli(*args), 3, "cannot read model", out)
        assert part in line, line


def test_a_flipped_byte_in_the_zip_is_one_line_exit_3(sample, tmp_path, out):
    data = bytearray(sample["pt2"].read_bytes())
    start = data.index(b'"graph_module"')  # inside the stored models/model.json: its CRC no longer matches
    data[start + 3] ^= 0x20
    archive = tmp_path / "flipped.pt2"
    archive.write_bytes(bytes(data))
    line = assert_refused(run_cli("inspect", archive), 3, "damaged", out)
    assert "models/model.json" in line, line
