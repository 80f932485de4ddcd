"""Building models in-process: `nldsl.load("spec.nl")` → a `torch.nn.Module`.

The spec is checked (a `SpecError` carries every diagnostic), compiled to source, and the source
is executed as a real module object whose text is registered with `linecache`, so tracebacks
and `inspect.getsource` show the generated lines. Nothing is written to disk.
"""

from __future__ import annotations

import hashlib
import linecache
import math
import numbers
import os
import sys
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .diagnostics import SpecError, SpecWarning, render_text


def override_strings(overrides: Sequence[str] = (), **values: Any) -> list[str]:
    """`dim=128, train__steps=50` → ["dim=128", "train.steps=50"] (`__` stands for a dot)."""
    out = [] if isinstance(overrides, (str, bytes, Mapping)) else list(overrides)
    if isinstance(overrides, (str, bytes, Mapping)) or not all(isinstance(item, str) for item in out):
        raise TypeError("overrides must be a list of 'key=value' strings, e.g. ['dim=64'], or keyword "
                        f"arguments, e.g. dim=64; got {type(overrides).__name__} {overrides!r}")
    from .checker import Override

    for key, value in values.items():
        # Diagnostics name a keyword as the user wrote it, not as a `--set` they never typed (the
        # strings of `overrides` are the command line's and read as `--set`).
        out.append(Override(f"{key.replace('__', '.')}={_spec_value(value, key)}",
                            origin=f"{key}={value!r}", label=f"<keyword {key}>"))
    return out


def python_overrides(overrides: Any) -> Any:
    """The strings of a Python caller's `overrides` list, named in diagnostics as its items
    (`<override 1>`) rather than as `--set` flags nobody typed; anything else is left for
    `override_strings` to refuse."""
    from .checker import Override

    if isinstance(overrides, (str, bytes, Mapping)) or not isinstance(overrides, Sequence):
        return overrides
    return [Override(item, origin=f"override {item}", label=f"<override {index}>")
            if isinstance(item, str) and not isinstance(item, Override) else item
            for index, item in enumerate(overrides, 1)]


def _spec_value(value: Any, key: str) -> str:
    """A Python value written as the spec language writes it (the checker then validates it); `key`,
    the keyword, names a number the language cannot write (nan, inf, one past a float's range)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a 0-d tensor or array: its bool or number
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, numbers.Integral):
        return repr(int(value))  # numpy and torch integers print as the spec's integers
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:  # a Fraction or Decimal past a float's range
            number = math.inf
        if not math.isfinite(number):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "…"
            raise ValueError(f"{key}={shown}: a spec's numbers are finite floats (the language has no nan or inf)")
        return repr(number)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_spec_value(item, key) for item in value) + "]"
    return repr(value)  # anything else: the checker reports it against the override


def check(path: str | Path, overrides: Sequence[str] = (), **values: Any):
    """Check a spec file; raise `SpecError` with all diagnostics if it has errors."""
    from .checker import check_file

    _check_spec_path(path, "nldsl.check")
    result = check_file(path, override_strings(overrides, **values))
    if not result.ok:
        raise SpecError(result.diagnostics, result.sources)
    print_debug_stages(result)
    return result


def print_debug_stages(result) -> None:
    """NLDSL_DEBUG=spec,graph,codegen prints each stage to stderr (codegen: see nldsl.compiler)."""
    stages = os.environ.get("NLDSL_DEBUG", "")
    if "spec" in stages:
        print(result.spec.model_dump_json(indent=2), file=sys.stderr)
    if "graph" in stages:
        from .graph import build_graph

        print(build_graph(result.spec).to_json(), file=sys.stderr)


def compile_module(result) -> types.ModuleType:
    """Execute the generated source of a checked spec as a module (registered for tracebacks)."""
    spec = result.spec
    return build_module(spec, result.sources[spec.path].text, result.overrides)


class GeneratedSource:
    """The loader of a generated module: it has no file, so tracebacks and `inspect.getsource` read
    its lines from here (`linecache` asks a module's `__loader__` when its file name is no file on
    disk, also after `linecache.clearcache()` dropped the registered copy)."""

    def __init__(self, source: str):
        self.source = source

    def get_source(self, name: str) -> str:
        return self.source


def build_module(spec, source_text: str = "", overrides: Sequence[str] = ()) -> types.ModuleType:
    """Compile a checked `Spec` and execute the source as a module (`overrides`: the `--set` texts it
    was checked with, which the banner's command names)."""
    from nldsl.compiler import compile_spec

    source = compile_spec(spec, source_text, overrides)
    # Not in <…>: linecache reloads only a file name without them through the module's loader.
    return _module_of_source(source, f"nldsl generated from {spec.path} ({spec.sha256[:12]})")


def _module_of_source(source: str, filename: str) -> types.ModuleType:
    """The module a generated source defines, executed once per process and registered by name."""
    # Named by the generated text, so a spec built twice gives the same module (and model class):
    # replacing a registered module would leave the models built from it unpicklable.
    name = f"nldsl_generated_{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    registered = sys.modules.get(name)
    if isinstance(registered, types.ModuleType) and registered.__dict__.get("__source__") == source:
        return registered
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__loader__ = GeneratedSource(source)
    module.__dict__["__source__"] = source
    sys.modules[name] = module  # torch.compile and pickling look modules up by name
    exec(compile(source, filename, "exec"), module.__dict__)
    import torch

    for value in list(module.__dict__.values()):  # its modules pickle with the source that defines them
        if isinstance(value, type) and issubclass(value, torch.nn.Module) and value.__module__ == name:
            value.__reduce_ex__ = _reduce_generated
    return module


def _reduce_generated(self: Any, protocol: int) -> tuple:
    """Pickle a generated module's `nn.Module` with its source, so that a new process (which never
    built the spec, and has no module of that name) reads it back: `torch.save(model, f)` then
    `torch.load(f, weights_only=False)` after `import nldsl`."""
    module = sys.modules[type(self).__module__]
    return (_rebuilt_generated, (module.__dict__["__source__"], module.__file__, type(self).__qualname__),
            self.__getstate__())


def _rebuilt_generated(source: str, filename: str, qualname: str) -> Any:
    """An empty instance of a generated class (unpickling fills in its state), its module executed
    from `source` where this process has not built it yet."""
    module = _module_of_source(source, filename)
    cls = getattr(module, qualname)
    if qualname == "Model":
        cls.module = module  # as `attach` gives it
    return cls.__new__(cls)


class ModelTooLargeError(MemoryError):
    """The model's parameters cannot be allocated on the device asked for."""


def build_model(module: types.ModuleType, spec, device=None, dtype=None):
    """`module.build(device, dtype)`, refusing a model whose weights alone exceed the device's memory.

    The check comes first because on Linux a CPU allocation larger than the machine usually
    succeeds (memory is overcommitted) and the process is killed when initialisation touches the
    pages, with no message and nothing saved. An allocation that fails anyway is the same error.
    """
    import torch

    from . import shapes

    count = shapes.parameter_count(spec.model)
    element = torch.empty((), dtype=dtype or torch.get_default_dtype()).element_size()
    where = torch.device(device) if device is not None else torch.device("cpu")
    needed, capacity = count * element, _device_memory(where)

    def refusal(detail: str) -> ModelTooLargeError:
        return ModelTooLargeError(
            f"{spec.path}: the model has {count:,} parameters ({_gib(needed)} of weights), "
            f"{detail}; make it smaller (dim, layers, vocab, expansion)")

    if capacity is not None and needed > capacity:
        raise refusal(f"more than the {_gib(capacity)} of memory of {where.type}")
    try:
        return module.build(device, dtype)
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, MemoryError) or "allocate" in str(error):
            raise refusal(f"which cannot be allocated ({str(error).splitlines()[0]})") from None
        raise


def _device_memory(device) -> int | None:
    """Bytes of memory of a device: physical memory for the CPU, the card's total for CUDA."""
    import torch

    try:
        if device.type == "cpu":
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None
    return None


def _check_spec_path(path: object, caller: str) -> None:
    """A spec file's path: not another object, not empty (the current folder), not the spec's text."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a spec file's path (a str or pathlib.Path), got {type(path).__name__} "
                        f"{path!r}")
    if isinstance(path, str) and not path.strip():
        raise ValueError(f"{caller} got an empty path: name a spec file")
    if isinstance(path, str) and "\n" in path:  # no spec file has a line break in its name
        raise ValueError(f"{caller} takes a spec file's path, and this looks like a spec's text "
                         f"({path.strip().splitlines()[0][:60]!r}…): write the text to a .nl file and pass its path")


def load(path: str | Path, overrides: Sequence[str] = (), *, device: Any = None, dtype: Any = None,
         **values: Any):
    """`nldsl.load` (its docstring is the contract: overrides, placement, seeding, what it returns)."""
    _check_spec_path(path, "nldsl.load")
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a folder: nldsl.load builds a spec file's model; a trained run "
                                "(its folder or a checkpoint) is read by nldsl.load_run")
    if dtype is not None:
        import torch

        # the precisions a model computes in; float8 types store weights but have no arithmetic of their own
        computing = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        if dtype not in computing:
            real = isinstance(dtype, torch.dtype) and dtype.is_floating_point
            raise TypeError(f"dtype must be a floating-point torch dtype a model computes in (torch.float32, "
                            f"torch.float64, torch.bfloat16 or torch.float16), got {dtype!r}: "
                            + ("a storage format without arithmetic (norms and products are not defined on it)"
                               if real else "the weights are real numbers"))
    result = check(path, python_overrides(overrides), **values)
    for diagnostic in result.diagnostics:  # a notebook sees what `nldsl check` would say of the spec
        if diagnostic.severity == "warning":
            warnings.warn(render_text([diagnostic], result.sources), SpecWarning, stacklevel=3)
    module = compile_module(result)
    seeded = "train__seed" in values or any(str(item).split("=", 1)[0].strip() == "train.seed"
                                            for item in overrides if isinstance(item, str))
    if seeded:
        import torch

        # the model is built on the CPU and then moved, so the CPU generator is the one `nldsl train`'s
        # torch.manual_seed gives its weights from; fork_rng restores it (and no device's is touched)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(result.spec.train.seed)
            model = build_model(module, result.spec, device, dtype)
    else:
        model = build_model(module, result.spec, device, dtype)
    return attach(model, module, result.spec)


def attach(model, module: types.ModuleType, spec):
    """`model.spec` and `model.module`, as `nldsl.load` and `nldsl.load_run` give them."""
    model.spec = spec
    # On the class, not the instance: a module object in the instance would make the model
    # impossible to deepcopy or pickle.
    module.Model.module = module
    return model


def _gib(size: int) -> str:
    """A size in GiB as a reader takes it in: 0.4 GiB, 12.5 GiB, 1,024 GiB, 1.9e+14 GiB."""
    gib = size / 2**30
    return f"{gib:.1f} GiB" if gib < 100 else f"{gib:,.0f} GiB" if gib < 1e6 else f"{gib:.2g} GiB"
