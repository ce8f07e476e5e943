"""torch -> ONNX with the dynamo exporter: one self-contained file with truly dynamic axes.

Model-agnostic: the caller wraps its model so that ``forward`` takes the named inputs positionally, in
the order of the ``example`` dict, and returns a tensor or a tuple of tensors in ``output_names`` order.
Nothing is printed; functions return data or raise ``kdcli.errors``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdcli.errors import KdcliError
from kdcli.runtime.files import atomic_path

DEFAULT_OPSET = 18

Axes = Mapping[str, Mapping[int, str]]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block, then every submodule gets its own flag back."""
    # Not module.train(flag): it is recursive, so a fresh wrapper (training=True) would flip an eval model.
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def short_error(e: BaseException, limit: int = 400) -> str:
    """One line for an exception, at most ``limit`` characters."""
    text = f"{type(e).__name__}: {e}".strip()
    # torch's export errors carry long boilerplate; keep the summary line when present.
    marker = "## Exception summary"
    if marker in text:
        tail = text.split(marker, 1)[1].strip().splitlines()
        keep = [ln.strip() for ln in tail if ln.strip() and not ln.strip().startswith("(Refer to")]
        text = " ".join(keep) or text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def export_onnx(module: nn.Module, example: dict[str, Tensor], path: Path, *, output_names: list[str],
                dynamic_axes: dict[str, dict[int, str]], opset: int = DEFAULT_OPSET) -> Path:
    """Export ``module`` to one ONNX file at ``path`` (written atomically) with named dynamic axes.

    ``dynamic_axes`` (``{input_name: {axis: "symbol"}}``; entries for outputs are only checked) becomes
    ``dynamic_shapes``, so the ONNX inputs get dim_params like ``batch`` / ``seq``. KdcliError if export fails
    or a requested axis comes out static; ValueError for inconsistent arguments (a caller bug).
    """
    path = Path(path)
    _check_arguments(example, output_names, dynamic_axes)
    input_names = list(example)
    in_axes = {n: {int(a): str(s) for a, s in axes.items()} for n, axes in dynamic_axes.items() if n in example}
    grown = _grow_size_one_axes(example, in_axes)
    args = tuple(grown[n] for n in input_names)
    with atomic_path(path) as tmp:  # a failed export or check leaves no file behind
        with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
            # "The axis name: seq will not be used, since it shares the same shape constraints with another
            # axis: seq." is expected when inputs share symbols.
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            program, named = _export_program(module, args, input_names, output_names, in_axes, opset)
            _save(program, tmp)
            if not named:
                _rename_dim_params(tmp, in_axes)
        _check_dynamic(tmp, dynamic_axes)
        _check_model(tmp)
    return path


def _check_arguments(example: dict[str, Tensor], output_names: list[str], dynamic_axes: Axes) -> None:
    if not example:
        raise ValueError("export needs at least one example input")
    if not output_names:
        raise ValueError("export needs at least one output name")
    for name, t in example.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"example input {name!r} is {type(t).__name__}, not a tensor")
    known = set(example) | set(output_names)
    unknown = [k for k in dynamic_axes if k not in known]
    if unknown:
        raise ValueError(f"dynamic_axes names {unknown} are neither inputs {list(example)} nor outputs {output_names}")
    for name, axes in dynamic_axes.items():
        if name in example:
            rank = example[name].dim()
            bad = [a for a in axes if not (0 <= int(a) < rank)]
            if bad:
                raise ValueError(f"dynamic axes {bad} out of range for input {name!r} of rank {rank}")


def _grow_size_one_axes(example: dict[str, Tensor], dynamic_axes: Axes) -> dict[str, Tensor]:
    """Tile example tensors whose dynamic axes have size 1 up to size 2 (repeated values stay valid).

    torch.export specialises size-0/1 dims, and transformers' SDPA path turns a symbolic seq_len==1 into a
    SymBool ``is_causal`` that fails to trace.
    """
    grown = {}
    for name, t in example.items():
        for axis in dynamic_axes.get(name, {}):
            if t.shape[axis] == 1:
                t = torch.cat([t, t], dim=axis)
        grown[name] = t
    return grown


def _export_program(module: nn.Module, args: tuple[Tensor, ...], input_names: list[str], output_names: list[str],
                    in_axes: Axes, opset: int) -> tuple[Any, bool]:
    """The ONNXProgram, and whether its dims already carry the requested names."""
    named = tuple(in_axes.get(n) or None for n in input_names)
    first_error: Exception | None = None
    try:
        # Strings become Dim.DYNAMIC named after the string: export fails loudly if the model specialises the
        # axis, and the ONNX dims get these names.
        program = _torch_export(module, args, input_names, output_names, named, opset)
    except Exception as e:  # noqa: BLE001 - torch raises many types here
        first_error = e
    if first_error is not None:
        # Dim.AUTO lets torch.export infer relations between dims instead of failing; s0/s1 are renamed later.
        auto = tuple({a: torch.export.Dim.AUTO for a in in_axes[n]} if in_axes.get(n) else None
                     for n in input_names)
        try:
            program = _torch_export(module, args, input_names, output_names, auto, opset)
        except Exception as e:
            raise KdcliError(f"ONNX export failed: {short_error(first_error)}",
                             hint="the model must be traceable by torch.export; see docs/export.md") from e
    pinned = _specialised_axes(program, input_names, in_axes)
    if pinned:
        detail = f" (first attempt: {short_error(first_error, 200)})" if first_error is not None else ""
        raise KdcliError(f"ONNX export pinned dynamic axes to the example size: {', '.join(pinned)}{detail}",
                         hint="the model code branches on or reshapes to that size; the file would only "
                         "work at the example shape")
    return program, first_error is None


def _torch_export(module: nn.Module, args: tuple[Tensor, ...], input_names: list[str], output_names: list[str],
                  dynamic_shapes: tuple[Any, ...], opset: int) -> Any:
    """torch.onnx.export with the dynamo exporter; returns the ONNXProgram (not saved)."""
    return torch.onnx.export(module, args, f=None, input_names=input_names, output_names=list(output_names),
                             opset_version=int(opset), dynamo=True, external_data=False,
                             dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)


def _specialised_axes(program: Any, input_names: list[str], in_axes: Axes) -> list[str]:
    """Requested dynamic axes that torch.export fixed to one value, as ``name[axis]=size``.

    The exporter traces with ``backed_size_oblivious`` and then drops its deferred runtime asserts: a model
    that reshapes to a constant (``x.view(8)``) or branches on a size keeps a symbolic ONNX dim while the graph
    is only valid at the example size. The exported program's range constraints still say so (``VR[2, 2]``).
    """
    ep = getattr(program, "exported_program", None)
    if ep is None:
        return []
    try:
        placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        user_inputs = list(ep.graph_signature.user_inputs)
        ranges = ep.range_constraints
    except Exception:  # noqa: BLE001 - best-effort introspection of torch internals
        return []
    pinned: list[str] = []
    for name, ph in zip(input_names, user_inputs):
        node = placeholders.get(ph)
        val = node.meta.get("val") if node is not None else None
        if val is None or not hasattr(val, "shape"):
            continue
        for axis in in_axes.get(name, {}):
            dim = val.shape[axis]
            if not isinstance(dim, torch.SymInt):
                pinned.append(f"{name}[{axis}]={int(dim)}")
                continue
            expr = dim.node.expr
            if getattr(expr, "is_number", False):
                pinned.append(f"{name}[{axis}]={expr}")
                continue
            vr = ranges.get(expr)
            if vr is not None and vr.lower == vr.upper:
                pinned.append(f"{name}[{axis}]={vr.lower}")
    return pinned


def _save(program: Any, path: Path) -> None:
    try:
        program.save(str(path), external_data=False)
    except Exception as e:
        raise KdcliError(f"writing the ONNX file failed: {short_error(e)}",
                         hint="single-file ONNX is limited to 2 GB of weights") from e


def _symbolic_dims(model_path: Path) -> dict[str, list[int | str]]:
    """{value name: [dim_value or dim_param, ...]} for graph inputs and outputs."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    return {v.name: [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.input) + list(m.graph.output)}


def _rename_dim_params(model_path: Path, dynamic_axes: Axes) -> None:
    """Rename auto-generated symbols (s0, s53 ...) to the names given in dynamic_axes."""
    import onnx

    m = onnx.load(str(model_path))
    mapping: dict[str, str] = {}
    for v in m.graph.input:
        dims = v.type.tensor_type.shape.dim
        for axis, new in dynamic_axes.get(v.name, {}).items():
            if axis < len(dims) and dims[axis].dim_param:
                mapping.setdefault(dims[axis].dim_param, new)
    if not mapping:
        return
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]
    onnx.save(m, str(model_path))


def _check_dynamic(model_path: Path, dynamic_axes: Axes) -> None:
    dims = _symbolic_dims(model_path)
    static = [f"{name}[{axis}]" for name, axes in dynamic_axes.items() if name in dims for axis in axes
              if axis >= len(dims[name]) or not isinstance(dims[name][axis], str)]
    if static:
        raise KdcliError(f"ONNX export specialised dynamic axes to fixed sizes: {', '.join(static)}",
                         hint="the model code branches on that size; try another example shape "
                         "(>= 2 on every dynamic axis)")


def _check_model(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as e:
        raise KdcliError(f"exported ONNX model is invalid: {short_error(e)}") from e


def set_metadata(path: Path, props: Mapping[str, str]) -> None:
    """Write `props` into the ONNX file's metadata_props (replacing same-named entries), atomically."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def read_metadata(path: Path) -> dict[str, str]:
    """The ONNX file's metadata_props as a dict."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
