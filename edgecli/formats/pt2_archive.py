"""What a .pt2 archive would make torch execute, found before torch reads it.

`torch.export.load` is not a data reader: it runs code the file's author chose at several places
(torch 2.13, torch/export/pt2_archive/_package.py and torch/_export/serde/serialize.py). For each
model `M` (a `models/M.json` in the archive; torch loads every one):

  part of the archive                                   what torch does with it
  data/weights/M_weights_config.json, `use_pickle: true`  torch.load(weights_only=False) of the weight
  data/constants/M_constants_config.json, tensor_*,       torch.load(weights_only=False)
      `use_pickle: true`
  data/constants/... custom_obj_*                       torch._C._pickle_load_obj (TorchScript unpickler)
  data/constants/... opaque_obj_*                       pickle.loads: full pickle
  data/sample_inputs/M.pt                               torch.load(weights_only=True), and if that
                                                        refuses, torch.load(weights_only=False)
  data/weights/M.pt, data/constants/M.pt (legacy)       the same weights_only=True-then-False fallback
  models/M.json `expr_str` (symbolic shapes)            sympy.sympify(text): Python eval
  models/M.json `guards_code`                           exec'd by ExportedProgram.module()
  models/M.json node targets                            any attribute of torch / operator / math,
                                                        called when the program runs
  data/aotinductor/...                                  compiled shared libraries, dlopen'ed
  the pre-2.7 layout (top-level serialized_*.json)      the weights_only=True-then-False fallback

`inspect` refuses each of these (ModelReadError, exit 3, naming the part; "pass --trust-pickle if
you trust this file") unless security.trust_pickle() is true. It reads the archive with Python's
zipfile and refuses what could make zipfile and torch's reader (miniz) see different members: two
members of one name, members outside the archive's one top folder. The checks it makes, and why each
is sound:

  * pickled weights and constants, custom and opaque objects, AOTInductor folders: refused from the
    archive's structure alone (config JSON, member names); torch would unpickle or load them
    whatever they hold, so nothing short of refusing is safe.
  * sample inputs and legacy .pt members: read here with torch.load(weights_only=True), torch's
    restricted unpickler (tensors, numbers, strings, containers; the same allow-list edgecli uses
    for every torch.save file). If it succeeds torch's own first attempt succeeds too and the
    weights_only=False fallback is never reached; if it refuses, the part is refused, naming the
    Python object the pickle asks for.
  * `expr_str`: parsed with Python's ast and allowed only as calls of sympy / torch symbolic classes
    (Symbol, Integer, Mul, FloorDiv, ...) on constants, keyword flags and each other: no attribute,
    subscript, lambda or other name, so sympify's eval can only build a sympy expression.
  * `guards_code`: allowed only as an expression without string literals (quotes appear only in
    input paths L['name']), without newlines, over a fixed set of names (size, stride, math,
    sympy functions, ...): the function torch execs from it can only compare input shapes.
  * node targets: checked on the loaded graph before anything runs it (every call_function target
    an OpOverload, a higher-order operator or one of the builtins torch's export verifier allows).

Defence in depth, for whatever the checks above miss (a torch that unpickles in a new place):
`guarded` runs the load with every `torch.load` forced to weights_only=True, `pickle.loads` and
`torch._C._pickle_load_obj` in the archive loader refusing, and AOTInductor loading refused. It
patches module attributes for the duration of the load, so it is process-wide while it lasts
(edgecli loads models from its main thread only). The same context silences torch's logging and
warnings, which otherwise print tracebacks of a failed deserialization on stderr.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import posixpath
import re
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecli.core.errors import ModelReadError, one_line

TRUST_HINT = "pass --trust-pickle if you trust this file"
NO_UNPICKLING = "edgecli does not unpickle it (unpickling runs code the file chooses)"
NO_CODE = "edgecli does not run code from a model file"
MAX_EXPR_CHARS = 20_000

# sympy.printing.repr.srepr's names (what torch writes) and torch.utils._sympy.functions
SYMPY_CALLS = frozenset(
    {
        "Symbol",
        "Dummy",
        "Integer",
        "Rational",
        "Float",
        "Add",
        "Mul",
        "Pow",
        "Mod",
        "Max",
        "Min",
        "Abs",
        "floor",
        "ceiling",
        "sqrt",
        "Equality",
        "Unequality",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "Xor",
        "ITE",
        "Piecewise",
        "ExprCondPair",
        "BooleanTrue",
        "BooleanFalse",
        "Half",
        "One",
        "Zero",
        "NegativeOne",
        "Infinity",
        "NegativeInfinity",
        "NaN",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
        "OpaqueUnaryFn_sqrt",
    }
)
SYMPY_CONSTANTS = frozenset({"true", "false", "oo", "zoo", "nan", "True", "False", "None"})
GUARD_NAMES = (
    SYMPY_CALLS
    | SYMPY_CONSTANTS
    | frozenset(
        {
            "L",
            "args",
            "size",
            "stride",
            "storage_offset",
            "dim",
            "numel",
            "shape",
            "math",
            "isnan",
            "isinf",
            "inf",
            "floor",
            "ceil",
            "trunc",
            "and",
            "or",
            "not",
            "in",
            "is",
            "if",
            "else",
        }
    )
)
_INPUT_PATH = re.compile(r"L(?:\[(?:'\w+'|\d+)\])+")
_GUARD_CHARS = re.compile(r"[\w .()\[\],<>=!+\-*/%&|~]*")


def _refuse(path: Path, part: str, what: str, why: str = NO_UNPICKLING) -> ModelReadError:
    return ModelReadError(f"{path}: part '{one_line(part)}' {what}; {why}", hint=TRUST_HINT)


def _damaged(path: Path, why: str) -> ModelReadError:
    return ModelReadError(f"{path} is a damaged .pt2 archive ({one_line(why)[:200]})")


class Archive:
    """The members of a .pt2 zip, named as torch names them (without the top folder)."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ModelReadError(f"{path} is not a .pt2 archive (a zip file): {one_line(str(exc))[:160]}") from None
        if not infos or "/" not in infos[0].filename:
            raise _damaged(path, "its members are not in one top folder")
        # torch's reader (caffe2 inline_container) takes the first member's folder as the archive's
        self.prefix = infos[0].filename.split("/", 1)[0] + "/"
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if not info.filename.startswith(self.prefix):
                raise _damaged(path, f"member '{info.filename}' is outside the folder '{self.prefix}'")
            name = info.filename[len(self.prefix) :]
            if name in self.members:
                raise _damaged(path, f"member '{info.filename}' appears twice")
            self.members[name] = info

    def read(self, name: str) -> bytes:
        try:
            return self.zip.read(self.members[name])
        except KeyError:
            raise _damaged(self.path, f"'{name}' is missing") from None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise _damaged(self.path, f"'{name}': {exc}") from None

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _damaged(self.path, f"'{name}' is not valid JSON: {exc}") from None


def inspect(data: bytes, path: Path, trusted: bool) -> None:
    """Refuse (ModelReadError) an archive torch cannot read as a current .pt2, or, unless `trusted`,
    one with a part torch would unpickle or run as code. Reads every member (zip CRC checks)."""
    archive = Archive(data, path)
    for name in archive.members:  # a flipped byte in any member: one line here, not torch's traceback
        archive.read(name)
    names = archive.members
    if "archive_version" not in names and "version" in names and "serialized_exported_program.json" in names:
        raise ModelReadError(f"{path} is a .pt2 of the pre-2.7 layout", hint="export it again with torch.export.save")
    version = archive.read("archive_version").decode("utf-8", "replace").strip()
    if version != "0":
        raise ModelReadError(
            f"{path}: part 'archive_version' says {one_line(version)[:20]!r}; this torch reads version '0'"
        )
    models = sorted(n[len("models/") : -len(".json")] for n in names if n.startswith("models/") and n.endswith(".json"))
    if "model" not in models:
        raise _damaged(path, "it holds no exported program 'models/model.json'")
    if not trusted:
        for name in names:
            if name.startswith("data/aotinductor/"):
                raise _refuse(path, name, "is AOTInductor compiled code, which torch would load and run", NO_CODE)
    for model in models:
        _check_model(archive, model, trusted)


def _check_model(archive: Archive, model: str, trusted: bool) -> None:
    path = archive.path
    program = archive.json(f"models/{model}.json")
    if not isinstance(program, dict):
        raise _damaged(path, f"'models/{model}.json' is not an exported program")
    for pickled in (f"data/sample_inputs/{model}.pt", f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
        if pickled in archive.members or pickled.startswith("data/sample_inputs/"):
            _check_weights_only(archive, pickled, trusted)
    for kind, folder in (("weights", "data/weights/"), ("constants", "data/constants/")):
        config_name = f"{folder}{model}_{kind}_config.json"
        if config_name not in archive.members:
            if f"{folder}{model}.pt" in archive.members:
                continue  # the legacy single-file form, checked above
            raise _damaged(path, f"'{config_name}' is missing")
        config = archive.json(config_name)
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise _damaged(path, f"'{config_name}' has no 'config' table")
        for fqn, meta in entries.items():
            if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
                raise _damaged(path, f"'{config_name}': entry '{fqn}' has no path_name")
            member = posixpath.join(folder, meta["path_name"])  # how torch names it (os.path.join)
            if member not in archive.members:
                raise _damaged(path, f"'{member}' (for '{fqn}' in {config_name}) is missing")
            if trusted:
                continue
            base = meta["path_name"]
            if kind == "constants" and base.startswith("custom_obj_"):
                raise _refuse(path, member, f"is a pickled TorchScript object (constant '{fqn}')")
            if kind == "constants" and base.startswith("opaque_obj_"):
                raise _refuse(path, member, f"is a pickled Python object (constant '{fqn}')")
            if meta.get("use_pickle"):
                raise _refuse(path, member, f"is a pickle ('{fqn}' has use_pickle in {config_name})")
    if not trusted:
        _check_expressions(program, path, f"models/{model}.json")
        for guard in program.get("guards_code") or []:
            if not isinstance(guard, str) or not _safe_guard(guard):
                raise _refuse(
                    path,
                    f"models/{model}.json",
                    f"has guards_code torch would execute ({one_line(str(guard))[:80]!r})",
                    NO_CODE,
                )


def _check_weights_only(archive: Archive, name: str, trusted: bool) -> None:
    """A torch.save member torch reads with weights_only=True and, if that refuses, False."""
    import pickle

    import torch

    raw = archive.read(name)
    if trusted or not raw:
        return
    try:
        torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        asked = match.group(1) if match else "a Python object"
        raise _refuse(archive.path, name, f"is a pickle of {asked}") from None
    except Exception as exc:  # torch raises many types for a damaged torch.save file
        raise _damaged(
            archive.path, f"'{name}': {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from None


def _check_expressions(node: Any, path: Path, part: str) -> None:
    """Every `expr_str` in the program JSON (torch sympify()s them: Python eval)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str" and not (isinstance(value, str) and _safe_sympy(value)):
                    raise _refuse(
                        path,
                        part,
                        f"has a symbolic expression torch would evaluate as Python ({one_line(str(value))[:80]!r})",
                        NO_CODE,
                    )
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _expression(text: str) -> ast.Expression | None:
    """`text` parsed as one Python expression (never run), or None if too long or not one."""
    if len(text) > MAX_EXPR_CHARS:
        return None
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return None


def _safe_sympy(text: str) -> bool:
    """Whether `text` is a sympy expression built only of sympy/torch symbolic calls and constants."""
    tree = _expression(text)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in SYMPY_CALLS):
                return False
            if any(k.arg is None or not isinstance(k.value, ast.Constant) for k in node.keywords):
                return False
        elif isinstance(node, ast.Name):
            if (
                node.id not in SYMPY_CALLS
                and node.id not in SYMPY_CONSTANTS
                and not re.fullmatch(r"[a-z]+\d+", node.id)
            ):
                return False
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str, bool)) or (
                isinstance(node.value, str) and not re.fullmatch(r"[\w.+\-]*", node.value)
            ):
                return False
        elif not isinstance(
            node,
            (
                ast.Expression,
                ast.Load,
                ast.keyword,
                ast.BinOp,
                ast.UnaryOp,
                ast.Compare,
                ast.BoolOp,
                ast.operator,
                ast.unaryop,
                ast.cmpop,
                ast.boolop,
            ),
        ):
            return False
    return True


def _safe_guard(text: str) -> bool:
    """Whether `text` is a guard torch can exec harmlessly: no string literal (quotes only inside
    input paths L['name']), no newline, only comparison/arithmetic over allowed names."""
    bare = _INPUT_PATH.sub("L", text)
    tree = _expression(bare) if len(text) <= MAX_EXPR_CHARS and _GUARD_CHARS.fullmatch(bare) else None
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in GUARD_NAMES:
            return False
        if isinstance(node, ast.Attribute) and (node.attr not in GUARD_NAMES or node.attr.startswith("_")):
            return False
        if isinstance(
            node,
            (
                ast.Lambda,
                ast.NamedExpr,
                ast.Starred,
                ast.JoinedStr,
                ast.Await,
                ast.Yield,
                ast.GeneratorExp,
                ast.ListComp,
                ast.SetComp,
                ast.DictComp,
            ),
        ):
            return False
    return True


def check_targets(program: Any, path: Path) -> None:
    """Every function the loaded graph calls is an operator (never an arbitrary Python callable
    a crafted node target resolved to, e.g. 'torch.os.system')."""
    import torch
    from torch._export.verifier import Verifier

    allowed_builtins = set(Verifier().allowed_builtin_ops())
    op_types = (torch._ops.OpOverload, torch._ops.HigherOrderOperator)
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op in ("call_module", "call_method"):
                raise ModelReadError(
                    f"{path}: node '{one_line(node.name)}' is a {node.op}, which an exported program never holds",
                    hint=TRUST_HINT,
                )
            if node.op != "call_function" or isinstance(node.target, op_types):
                continue
            if node.target in allowed_builtins or _is_torch_sym_function(node.target):
                continue
            name = getattr(node.target, "__qualname__", None) or str(node.target)
            raise ModelReadError(
                f"{path}: node '{one_line(node.name)}' calls '{one_line(getattr(node.target, '__module__', '') or '')}.{one_line(name)}', "
                f"which is not an operator; {NO_CODE}",
                hint=TRUST_HINT,
            )


def _is_torch_sym_function(target: Any) -> bool:
    import torch

    return target in (
        torch.sym_int,
        torch.sym_float,
        torch.sym_ite,
        torch.sym_max,
        torch.sym_min,
        torch.sym_not,
        torch.sym_sqrt,
        torch.sym_sum,
        torch._C._set_grad_enabled,
        torch.autograd.grad_mode.set_grad_enabled,
    )


class _Refused(Exception):
    """Raised by the stand-ins `guarded` puts in place of torch's unpickling calls."""


class _NoPickle(types.ModuleType):
    """Stands in for the `pickle` module in torch's archive loader (a module, like what it replaces)."""

    @staticmethod
    def loads(*args: Any, **kwargs: Any) -> Any:
        raise _Refused("a pickled object (pickle.loads)")


def _no_torchscript_pickle(*args: Any, **kwargs: Any) -> Any:
    raise _Refused("a pickled TorchScript object")


def _no_aoti(*args: Any, **kwargs: Any) -> Any:
    raise _Refused("AOTInductor compiled code")


@contextlib.contextmanager
def guarded(trusted: bool) -> Iterator[None]:
    """torch's logging and warnings silenced; unless `trusted`, every torch.load weights_only=True
    and torch's other unpickling calls in the archive loader refusing (`_Refused`)."""
    import logging
    import warnings

    import torch
    from torch.export.pt2_archive import _package

    saved_disable = logging.root.manager.disable
    saved = (torch.load, _package.pickle, torch._C._pickle_load_obj, _package._load_aoti)
    real_load = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)
        return real_load(*args, **kwargs)

    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not trusted:
                torch.load = weights_only_load
                _package.pickle = _NoPickle("pickle")
                torch._C._pickle_load_obj = _no_torchscript_pickle
                _package._load_aoti = _no_aoti
            yield
    finally:
        torch.load, _package.pickle, torch._C._pickle_load_obj, _package._load_aoti = saved
        logging.disable(saved_disable)
