"""PyTorch frontend: TorchScript files, ``torch.export`` programs (.pt2) and ``module.py:factory`` entries.

Three inputs, two exporters (torch 2.13):

* a TorchScript archive (``torch.jit.save``, recognised by its content whatever its suffix: ``.pt``,
  ``.jit``, ``.zip``...) goes through the legacy TorchScript exporter (``dynamo=False``): the dynamo
  exporter cannot trace a ScriptModule. TorchScript records no input shapes, so ``--input
  NAME:SHAPE[:DTYPE]`` is required for each tensor argument; a symbolic dim (``Nx3x32x32``) stays
  dynamic. ``ARCHIVE:SUBMODULE`` (``vad.jit:_model``) compiles a submodule of the archive.
* ``int``/``float``/``bool`` arguments of ``forward`` (a sample rate) are traced with the value bound by
  ``--input NAME=VALUE``; the package keeps them as 0-d inputs that accept only that value.
* a module whose ``forward`` keeps state between calls (it assigns ``self.<attr>``) is refused with
  the stateless submodules it has: a package is a pure function of its inputs.
* a ``torch.export.save`` ExportedProgram (``.pt2``) goes through the dynamo exporter, which needs
  ``onnxscript``; its own example inputs and dynamic shapes give the graph's inputs.
* ``path/to/module.py:factory``: we import the file and call ``factory()`` for an ``nn.Module``, then
  export it with the dynamo exporter and the ``--input`` shapes. Importing a ``.py`` runs its code, as
  unpickling does: name only files you trust.

Loading a TorchScript or .pt2 archive runs no Python from the file (TorchScript code runs in its own
interpreter; tensors are read with torch's restricted unpickler). The loaded module is also the
accuracy gate's reference: the package is compared with PyTorch's own outputs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelFormatError, OptionError
from ...tensors import InputOverride, numpy_dtype
from ..context import SourceInfo
from ..options import split_member
from ..source import SourceRuntime
from . import Frontend, FrontendRequest, first_line, read_head, register, source_info, split_entry

if TYPE_CHECKING:
    import onnx

OPSET = 18  # both exporters reach it; the dynamo exporter's floor
_EXAMPLE_SYMBOL_SIZE = 2  # torch.export specializes sizes 0 and 1, so a dynamic dim is traced at 2
_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ptl")
_EXPORT_SUFFIXES = (".pt2",)
_ENTRY_EXAMPLE = "model.py:build"


# --- detection: cheap, imports nothing heavy ---------------------------------------------------------

def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _is_torchscript(names: list[str]) -> bool:
    return any("/code/" in n or n.startswith("code/") or n.endswith("constants.pkl") for n in names)


def _is_exported_program(names: list[str]) -> bool:
    return any(n.endswith("/archive_format") or ("/models/" in n and n.endswith(".json")) for n in names)


def detect(path: Path) -> bool:
    entry = split_entry(path)
    if entry is not None:
        return entry[0].is_file()
    member = split_member(path)
    if member is not None:
        path = member[0]
    if not path.is_file():
        return False
    if path.suffix.lower() in _EXPORT_SUFFIXES and zipfile.is_zipfile(path):
        return True
    if read_head(path, 4) != b"PK\x03\x04":  # by content, whatever the suffix (.pt, .jit, .zip...)
        return False
    names = _zip_names(path)
    return _is_torchscript(names) or _is_exported_program(names)


# --- load ---------------------------------------------------------------------------------------------

def load(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto, SourceInfo]:
    with _without_triton():
        return _load(path, request)


@contextlib.contextmanager
def _without_triton() -> Iterator[None]:
    """Keep torch from importing triton while we export. Triton compiles GPU kernels, which a CPU
    export never needs, and its LLVM clashes with TensorFlow's: importing it into a process that has
    TensorFlow loaded segfaults (seen with the CUDA build of torch 2.13 from PyPI next to
    tensorflow-cpu 2.21). torch treats an import that fails as "no triton"."""
    if "triton" in sys.modules:
        yield
        return
    sys.modules["triton"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("triton", 0) is None:
            del sys.modules["triton"]


def _load(path: Path, request: FrontendRequest) -> tuple[onnx.ModelProto, SourceInfo]:
    import onnx
    import torch

    entry = split_entry(path)
    member = split_member(path)
    if entry is not None:
        file, factory = entry
        model, kind = _from_entry(file, factory, torch), "entry"
        details: dict[str, Any] = {"entry": f"{file.name}:{factory}"}
    elif member is not None:
        file, attribute = member
        names = _zip_names(file)
        if not _is_torchscript(names):
            raise ModelFormatError("FILE:SUBMODULE names a submodule of a TorchScript archive", value=str(path),
                                   fix="pass a TorchScript archive (torch.jit.save) before the ':'")
        model = _submodule(_load_torchscript(file, torch), attribute, file)
        kind, details = "torchscript", {"submodule": attribute}
    else:
        if not path.is_file():
            raise ModelFormatError("expected a PyTorch file, got a directory or nothing", value=str(path),
                                   fix="pass a TorchScript .pt, a torch.export .pt2, or model.py:factory")
        names = _zip_names(path)
        if _is_exported_program(names):
            model, kind, details = _load_exported_program(path, torch), "exported_program", {}
        elif _is_torchscript(names):
            model, kind, details = _load_torchscript(path, torch), "torchscript", {}
        else:
            raise _not_pytorch(path, names)
        file = path

    if isinstance(model, torch.jit.ScriptModule):
        _refuse_stateful(model, file)
    scalars: dict[str, Any] = {}
    if isinstance(model, torch.export.ExportedProgram):
        proto, exporter = _export_program(model, torch), "dynamo"
    elif isinstance(model, torch.jit.ScriptModule):
        proto, scalars = _export_torchscript(model, request, torch)
        exporter = "torchscript"
    else:
        proto, scalars = _export_module(model, request, torch)
        exporter = "dynamo"
    _name_symbols(proto, request.inputs)
    _keep_scalar_inputs(proto, scalars)
    if scalars:
        details["bound_arguments"] = {name: value for name, (value, _) in scalars.items()}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    proto.producer_name, proto.producer_version = "edgemill-pytorch", torch.__version__
    info = source_info(file, "pytorch", torch.__version__, kind=kind, exporter=exporter, opset=opset,
                       onnx_version=onnx.__version__, **details)
    info.runtime = _runtime(model, proto, scalars, torch)
    return proto, info


def _not_pytorch(path: Path, names: list[str]) -> ModelFormatError:
    if any(n.endswith("data.pkl") for n in names):
        return ModelFormatError(
            "a torch.save checkpoint holds weights but no graph", value=str(path),
            expected="a TorchScript archive (torch.jit.save) or an ExportedProgram (torch.export.save)",
            fix="save the model with torch.jit.save(torch.jit.script(model), ...) or torch.export.save, or pass "
                f"{_ENTRY_EXAMPLE} that builds and loads it",
        )
    return ModelFormatError(
        "not a PyTorch model", value=str(path),
        expected="a TorchScript .pt (torch.jit.save), a torch.export .pt2 (torch.export.save) or "
                 f"{_ENTRY_EXAMPLE} returning an nn.Module",
        fix="save the model with torch.jit.save or torch.export.save, or drop --framework to detect the format",
    )


def _load_torchscript(path: Path, torch: Any) -> Any:
    try:
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError for every kind of damage
        raise ModelFormatError("cannot load the TorchScript archive", value=str(path),
                               fix=f"re-save it with torch.jit.save ({first_line(exc)})") from None


def _load_exported_program(path: Path, torch: Any) -> Any:
    try:
        with _quiet():
            return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelFormatError("cannot load the ExportedProgram", value=str(path),
                               fix=f"re-save it with torch.export.save ({first_line(exc)})") from None


def _from_entry(file: Path, factory: str, torch: Any) -> Any:
    """Import ``file`` (this runs its code) and call ``factory()``."""
    if not file.is_file():
        raise ModelFormatError("the Python file of the entry does not exist", value=str(file),
                               fix=f"write the entry as {_ENTRY_EXAMPLE} with an existing file")
    module_name = f"edgemill_user_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ModelFormatError("cannot import the Python file", value=str(file), fix="pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    sys.path.insert(0, str(file.resolve().parent))  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
        fn = getattr(module, factory, None)
        if not callable(fn):
            raise ModelFormatError(f"{file.name} has no callable {factory!r}", value=factory,
                                   expected="a function returning an nn.Module",
                                   fix=f"define `def {factory}(): return MyModel()` in {file.name}")
        model = fn()
    except ModelFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise ModelFormatError(f"running {file.name}:{factory} failed", value=f"{type(exc).__name__}: {first_line(exc)}",
                               fix="make the factory run on its own: python -c 'import ...; ...()'") from None
    finally:
        sys.path.remove(str(file.resolve().parent))
    if not isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        raise ModelFormatError(f"{file.name}:{factory} did not return an nn.Module", value=type(model).__name__,
                               expected="a torch.nn.Module (or ExportedProgram)",
                               fix=f"return the model from {factory}(), e.g. `return MyNet()`")
    return model.eval() if isinstance(model, torch.nn.Module) else model


# --- example inputs from --input ---------------------------------------------------------------------

_SCALAR_TYPES = {"int": ("int64", int), "float": ("float32", float), "bool": ("bool", bool)}


@dataclass(frozen=True)
class _Argument:
    name: str
    scalar: str | None  # "int" | "float" | "bool" for Python scalars, None for tensors
    has_default: bool


def _arguments(model: Any, torch: Any) -> list[_Argument]:
    """``forward``'s arguments after ``self``: name, whether it is a Python scalar, whether it has a default."""
    if isinstance(model, torch.jit.ScriptModule):
        return [_Argument(a.name, str(a.type) if str(a.type) in _SCALAR_TYPES else None, a.has_default_value())
                for a in model.forward.schema.arguments[1:]]
    import inspect

    params = inspect.signature(model.forward).parameters.values()
    out = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        out.append(_Argument(p.name, annotation if annotation in _SCALAR_TYPES else None, p.default is not p.empty))
    return out


def _examples(model: Any, request: FrontendRequest, torch: Any
              ) -> tuple[list[str], list[Any], dict[str, tuple[Any, str]]]:
    """Tensor argument names in ``forward``'s order, the example arguments (tensors from ``--input`` shapes,
    Python scalars from ``--input NAME=VALUE``), and the bound scalars: name -> (value, dtype)."""
    arguments = _arguments(model, torch)
    shapes = {o.name: o for o in request.inputs}
    values = {o.name: o for o in request.bindings}
    tensors = [a for a in arguments if a.scalar is None]
    example = ":".join([tensors[0].name if tensors else "x", "Nx3x224x224", "float32"])
    missing = [a.name for a in tensors if a.name not in shapes and not a.has_default]
    what = "a TorchScript module" if isinstance(model, torch.jit.ScriptModule) else "an nn.Module"
    if missing:
        raise OptionError(
            f"{what} does not record input shapes; pass --input NAME:SHAPE:DTYPE for each input",
            value=", ".join(missing), expected="--input for " + ", ".join(a.name for a in tensors),
            fix=f"add --input {example} with your model's shape (a symbol such as N keeps that dimension dynamic)",
        )
    unbound = [a for a in arguments if a.scalar and a.name not in values and not a.has_default]
    if unbound:
        a = unbound[0]
        raise OptionError(f"forward() takes {a.name!r} as a Python {a.scalar}, which the graph is traced with",
                          value=a.name, expected=f"--input {a.name}=VALUE",
                          fix=f"bind it to the value your application passes, e.g. --input {a.name}=16000 for a "
                              "sample rate; the package then takes that value only")
    known = {a.name for a in arguments}
    unknown = [n for n in [*shapes, *values] if n not in known]
    if unknown:
        raise OptionError("--input names an input the model does not have", value=", ".join(unknown),
                          expected="one of " + ", ".join(repr(n) for n in known),
                          fix="use the parameter names of the model's forward()")
    names: list[str] = []
    args: list[Any] = []
    scalars: dict[str, tuple[Any, str]] = {}
    for i, a in enumerate(arguments):
        if a.scalar is not None:
            if a.name not in values:
                break  # this and what follows keep their defaults
            dtype, cast = _SCALAR_TYPES[a.scalar]
            scalars[a.name] = (cast(values[a.name].value), dtype)
            args.append(scalars[a.name][0])
            continue
        if a.name not in shapes:
            break
        o = shapes[a.name]
        shape = [d if isinstance(d, int) and d > 0 else _EXAMPLE_SYMBOL_SIZE for d in (o.shape or ())]
        dtype = numpy_dtype(o.dtype or "float32")
        if dtype.kind == "f":
            t = torch.randn(*shape, generator=torch.Generator().manual_seed(i)).to(_torch_dtype(dtype, torch))
        else:
            t = torch.zeros(*shape, dtype=_torch_dtype(dtype, torch))
        names.append(a.name)
        args.append(t)
    return names, args, scalars


def _torch_dtype(dtype: Any, torch: Any) -> Any:
    import numpy as np

    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def _dynamic_axes(overrides: tuple[InputOverride, ...]) -> dict[str, dict[int, str]]:
    return {o.name: {axis: d if isinstance(d, str) else f"{o.name}_{axis}"
                     for axis, d in enumerate(o.shape or ()) if not (isinstance(d, int) and d > 0)}
            for o in overrides if any(not (isinstance(d, int) and d > 0) for d in (o.shape or ()))}


def _output_names(model: Any, args: list[Any], torch: Any) -> list[str]:
    """Run the model once: it checks the shapes and counts the outputs, so they get readable names."""
    try:
        with torch.no_grad():
            out = model(*args)
    except Exception as exc:  # noqa: BLE001
        shapes = ", ".join(f"{list(a.shape)}:{str(a.dtype).replace('torch.', '')}" if hasattr(a, "shape") else repr(a)
                           for a in args)
        raise OptionError("the model does not run on inputs of the --input shapes", value=shapes,
                          fix=f"give the shapes the model was built for ({first_line(exc)[:200]})") from None
    count = len(torch.utils._pytree.tree_leaves(out))
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


# --- stateful modules and submodules ----------------------------------------------------------------------

def _sets_attributes(method: Any, torch: Any) -> list[str]:
    """Attributes a TorchScript method assigns (``self._state = ...``), its calls inlined."""
    graph = method.graph.copy()
    torch._C._jit_pass_inline(graph)
    return sorted({node.s("name") for node in graph.findAllNodes("prim::SetAttr", recurse=True)})


def _refuse_stateful(model: Any, file: Path) -> None:
    import torch

    state = _sets_attributes(model.forward, torch)
    if not state:
        return
    stateless = []
    for name, child in model.named_children():
        if isinstance(child, torch.jit.ScriptModule) and hasattr(child, "forward"):
            try:
                if not _sets_attributes(child.forward, torch):
                    stateless.append(f"{file.name}:{name} (forward({', '.join(a.name for a in child.forward.schema.arguments[1:])}))")
            except RuntimeError:
                continue
    fix = ("compile a stateless submodule instead: " + ", ".join(stateless[:3]) if stateless else
           "export a stateless forward() that takes the state as an input and returns the new state")
    raise ModelFormatError(
        "the module keeps state between calls: forward() assigns " + ", ".join(f"self.{a}" for a in state[:4]),
        value=str(file), expected="a forward() whose outputs depend on its inputs only (a package is stateless)",
        fix=fix + "; then the application passes the state in and takes it back")


def _submodule(model: Any, attribute: str, file: Path) -> Any:
    target = model
    for part in attribute.split("."):
        if not hasattr(target, part):
            children = [n for n, _ in target.named_children()]
            raise ModelFormatError(f"the archive has no submodule {attribute!r}", value=part,
                                   expected="one of " + ", ".join(children[:12]) if children else "a submodule",
                                   fix=f"write {file.name}:NAME with one of those names")
        target = getattr(target, part)
    if not hasattr(target, "forward"):
        raise ModelFormatError(f"{attribute!r} is not a module with forward()", value=attribute,
                               fix=f"name a submodule of {file.name}")
    return target


def _keep_scalar_inputs(proto: onnx.ModelProto, scalars: dict[str, tuple[Any, str]]) -> None:
    """A bound Python scalar was traced as a constant; the package still takes it under its name (0-d),
    so an application calls the package as it called forward(), and the runtime checks the value."""
    from onnx import helper

    from ...tensors import DTYPE_TO_ONNX_ELEM

    present = {v.name for v in proto.graph.input}
    for name, (_, dtype) in scalars.items():
        if name not in present:
            proto.graph.input.append(helper.make_tensor_value_info(name, DTYPE_TO_ONNX_ELEM[dtype], []))


def _runtime(model: Any, proto: onnx.ModelProto, scalars: dict[str, tuple[Any, str]], torch: Any) -> SourceRuntime:
    """PyTorch itself as the reference: forward() on the same inputs, outputs matched by position."""
    import numpy as np

    module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    graph_inputs = [v.name for v in proto.graph.input]
    outputs = [v.name for v in proto.graph.output]
    order = [a.name for a in _arguments(module, torch)] if not isinstance(model, torch.export.ExportedProgram) \
        else [n for n in graph_inputs if n not in scalars]

    def run(feed: Any) -> dict[str, np.ndarray]:
        args = []
        for name in order:
            if name in scalars:
                args.append(scalars[name][0])
            elif name in feed:
                args.append(torch.from_numpy(np.ascontiguousarray(feed[name])))
            else:
                break
        with torch.no_grad():
            result = module(*args)
        leaves = [x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)
                  for x in torch.utils._pytree.tree_leaves(result)]
        return dict(zip(outputs, leaves)) if len(leaves) == len(outputs) else {}

    kind = "TorchScript" if isinstance(model, torch.jit.ScriptModule) else (
        "torch.export" if isinstance(model, torch.export.ExportedProgram) else "eager")
    return SourceRuntime(f"PyTorch {torch.__version__} ({kind})", run, run)


# --- export ----------------------------------------------------------------------------------------------

def _export_torchscript(model: Any, request: FrontendRequest, torch: Any
                        ) -> tuple[onnx.ModelProto, dict[str, tuple[Any, str]]]:
    import onnx

    names, args, scalars = _examples(model, request, torch)
    outputs = _output_names(model, args, torch)
    buffer = io.BytesIO()
    with _export_errors("torchscript"), _quiet():
        torch.onnx.export(model, tuple(args), buffer, dynamo=False, opset_version=OPSET, input_names=names,
                          output_names=outputs, dynamic_axes=_dynamic_axes(request.inputs) or None,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    _name_scalar_inputs(proto, model, args, torch)
    return proto, scalars


def _name_scalar_inputs(proto: onnx.ModelProto, model: Any, args: list[Any], torch: Any) -> None:
    """A scripted forward() keeps Python scalars as graph inputs, which the exporter names ``sr.1``: give
    every input its argument's name (inputs follow the arguments' order)."""
    from ..graph import rename_io

    initializers = {i.name for i in proto.graph.initializer}
    inputs = [v.name for v in proto.graph.input if v.name not in initializers]
    names = [a.name for a in _arguments(model, torch)][:len(args)]
    if len(inputs) == len(names):
        rename_io(proto, {old: new for old, new in zip(inputs, names) if old != new})


def _export_module(model: Any, request: FrontendRequest, torch: Any
                   ) -> tuple[onnx.ModelProto, dict[str, tuple[Any, str]]]:
    names, args, scalars = _examples(model, request, torch)
    outputs = _output_names(model, args, torch)
    dims: dict[str, Any] = {}
    dynamic: dict[str, dict[int, Any]] = {}
    for name, axes in _dynamic_axes(request.inputs).items():
        dynamic[name] = {axis: dims.setdefault(sym, torch.export.Dim(_identifier(sym))) for axis, sym in axes.items()}
    shapes: Any = None
    if dynamic:  # torch.export wants a spec per argument; a bound scalar has none
        arguments = [a.name for a in _arguments(model, torch)][:len(args)]
        shapes = {name: dynamic.get(name) for name in arguments}
    with _export_errors("dynamo"), _quiet():
        program = torch.onnx.export(model, tuple(args), dynamo=True, opset_version=OPSET, input_names=names,
                                    output_names=outputs, dynamic_shapes=shapes, verbose=False)
    return program.model_proto, scalars


def _export_program(program: Any, torch: Any) -> onnx.ModelProto:
    with _export_errors("dynamo"), _quiet():
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, verbose=False)
    return onnx_program.model_proto


def _identifier(symbol: str) -> str:
    text = re.sub(r"\W", "_", symbol)
    return text if text and not text[0].isdigit() else f"d_{text}"


def _name_symbols(proto: onnx.ModelProto, overrides: tuple[InputOverride, ...]) -> None:
    """Give dynamic input dims the user's symbols (the exporters may call them s0, s77...) everywhere, and
    refuse a symbol the export could not keep dynamic."""
    rename: dict[str, str] = {}
    given = {o.name: o for o in overrides}
    for value in proto.graph.input:
        if value.name not in given:
            continue
        for axis, (d, want) in enumerate(zip(value.type.tensor_type.shape.dim, given[value.name].shape)):
            if isinstance(want, str) and d.HasField("dim_value"):
                # torch.export specializes a dim the code fixes (a reshape to constants...) without failing
                raise OptionError(
                    f"the model does not allow axis {axis} of input {value.name!r} to be dynamic", value=want,
                    expected="a number (the exported graph fixes this dimension)",
                    fix=f"give axis {axis} of {value.name!r} as a number in --input, or make the model's code "
                        "independent of that size",
                )
            if isinstance(want, str) and d.HasField("dim_param") and d.dim_param != want:
                rename.setdefault(d.dim_param, want)
    if not rename:
        return
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress, deprecation notes and IR dumps; a compile shows its own progress."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _export_errors(exporter: str) -> Iterator[None]:
    """Turn an exporter failure into one line naming the operator (and node) it could not map."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - exporters raise RuntimeError, TorchExportError, UserError...
        text = "\n".join(str(e) for e in (exc, exc.__cause__) if e is not None)
        op = re.search(r"op='([\w.]+)'", text) or re.search(r"operator '([\w:.]+)'", text) \
            or re.search(r"namespace ([\w:.]+)", text)
        node = re.search(r"translating node %(\w+)", text)
        if op:
            where = f" at node {node.group(1)}" if node else ""
            raise ModelFormatError(
                f"the {exporter} ONNX exporter cannot map an operator{where}", value=op.group(1),
                expected=f"operators with an ONNX opset {OPSET} mapping",
                fix="replace the operator in the model with supported ones, or register an ONNX translation for it "
                    "(torch.onnx.export custom_translation_table)",
            ) from None
        if "Constraints violated" in text or "specialized" in text.lower():
            raise OptionError("the model does not allow a dimension given as dynamic in --input",
                              value=first_line(exc)[:200], fix="give that dimension as a number") from None
        raise ModelFormatError(f"the {exporter} ONNX exporter failed", value=first_line(exc)[:300],
                               fix="check that the model exports with torch.onnx.export on its own") from None


register(Frontend(
    "pytorch", "PyTorch: TorchScript (.pt/.pth/.ptl), torch.export (.pt2), module.py:factory", detect, load,
    requires=("torch", "onnxscript"), extra="torch", priority=40, suffixes=(*_TORCHSCRIPT_SUFFIXES, *_EXPORT_SUFFIXES),
))
