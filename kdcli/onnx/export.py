"""ONNX export with the dynamo exporter: one self-contained file with truly dynamic axes.

Everything here is model-agnostic. The caller wraps its model so that ``forward``
takes the named inputs *positionally*, in the order of the ``example`` dict, and
returns a tensor or a tuple of tensors in the order of ``output_names``.

Library code: nothing is printed; functions return data or raise ``kdcli.errors``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcli.errors import BadInput, KdcliError
from kdcli.runtime.files import sibling_tmp

DEFAULT_OPSET = 18

# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block, then restore every submodule's own flag.

    (``module.train(flag)`` would be wrong: it is recursive, so a fresh wrapper
    (training=True) around an eval-mode model would switch the model to training.)
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def as_outputs(out: Any, output_names: Sequence[str]) -> list[Tensor]:
    """Normalise a forward result (tensor / tuple / list / mapping) to a list of tensors."""
    if isinstance(out, Tensor):
        outs = [out]
    elif isinstance(out, Mapping):
        missing = [n for n in output_names if n not in out]
        if missing:
            raise BadInput(f"model output has no {missing} (it has {list(out)})")
        outs = [out[n] for n in output_names]
    elif isinstance(out, (tuple, list)):
        outs = list(out)
    else:
        raise BadInput(
            f"model forward returned {type(out).__name__}; expected a tensor or a tuple of tensors",
            hint="wrap the model so forward returns tensors in output_names order",
        )
    if len(outs) != len(output_names):
        raise BadInput(
            f"model returned {len(outs)} output(s) but {len(output_names)} output name(s) "
            f"were given: {list(output_names)}"
        )
    for name, t in zip(output_names, outs):
        if not isinstance(t, Tensor):
            raise BadInput(f"output {name!r} is {type(t).__name__}, not a tensor")
    return outs


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def unlink_quietly(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.unlink()


def _grow_size_one_axes(
    example: dict[str, Tensor], dynamic_axes: Mapping[str, Mapping[int, str]]
) -> dict[str, Tensor]:
    """Tile example tensors whose *dynamic* axes have size 1 up to size 2.

    torch.export specialises size-0/1 dims, and transformers' SDPA path turns a
    symbolic seq_len==1 into a SymBool ``is_causal`` that fails to trace. Tiling the
    example (repeating ids, masks, pixels along that axis) keeps the values valid.
    """
    grown = {}
    for name, t in example.items():
        for axis in dynamic_axes.get(name, {}):
            if t.shape[axis] == 1:
                t = torch.cat([t, t], dim=axis)
        grown[name] = t
    return grown


def _symbolic_dims(model_path: Path) -> dict[str, list[int | str]]:
    """{value name: [dim_value or dim_param, ...]} for graph inputs and outputs."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    dims: dict[str, list[int | str]] = {}
    for v in list(m.graph.input) + list(m.graph.output):
        shape = v.type.tensor_type.shape
        dims[v.name] = [d.dim_param if d.dim_param else d.dim_value for d in shape.dim]
    return dims


def _rename_dim_params(model_path: Path, dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Rename auto-generated symbols (s0, s53 ...) to the names given in dynamic_axes."""
    import onnx

    m = onnx.load(str(model_path))
    mapping: dict[str, str] = {}
    for v in m.graph.input:
        axes = dynamic_axes.get(v.name, {})
        dims = v.type.tensor_type.shape.dim
        for axis, new in axes.items():
            if axis < len(dims) and dims[axis].dim_param:
                mapping.setdefault(dims[axis].dim_param, new)
    if not mapping:
        return
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]
    onnx.save(m, str(model_path))


def _check_dynamic(model_path: Path, dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    dims = _symbolic_dims(model_path)
    static = []
    for name, axes in dynamic_axes.items():
        if name not in dims:
            continue
        for axis in axes:
            shape = dims[name]
            if axis >= len(shape) or not isinstance(shape[axis], str):
                static.append(f"{name}[{axis}]")
    if static:
        raise KdcliError(
            f"ONNX export specialised dynamic axes to fixed sizes: {', '.join(static)}",
            hint="the model code branches on that size; try another example shape (>= 2 on every dynamic axis)",
        )


# --------------------------------------------------------------------------- export


def export_onnx(
    module: nn.Module,
    example: dict[str, Tensor],
    path: Path,
    *,
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``module`` to one self-contained ONNX file at ``path`` (written atomically).

    Uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``). ``dynamic_axes``
    (``{input_name: {axis: "symbol"}}``, entries for outputs are checked but not needed)
    becomes ``dynamic_shapes`` with the symbol names, so the ONNX inputs get dim_params
    like ``batch`` / ``seq``. Raises KdcliError if export fails or a requested axis comes
    out static; BadInput for inconsistent arguments.
    """
    path = Path(path)
    if not example:
        raise BadInput("export needs at least one example input")
    if not output_names:
        raise BadInput("export needs at least one output name")
    for name, t in example.items():
        if not isinstance(t, Tensor):
            raise BadInput(f"example input {name!r} is {type(t).__name__}, not a tensor")
    known = set(example) | set(output_names)
    unknown = [k for k in dynamic_axes if k not in known]
    if unknown:
        raise BadInput(
            f"dynamic_axes names {unknown} are neither inputs {list(example)} nor outputs {output_names}"
        )
    for name, axes in dynamic_axes.items():
        if name in example:
            rank = example[name].dim()
            bad = [a for a in axes if not (0 <= int(a) < rank)]
            if bad:
                raise BadInput(f"dynamic axes {bad} out of range for input {name!r} of rank {rank}")

    input_names = list(example)
    in_axes = {n: {int(a): str(s) for a, s in axes.items()} for n, axes in dynamic_axes.items() if n in example}
    ex = _grow_size_one_axes(example, in_axes)
    args = tuple(ex[n] for n in input_names)

    named_shapes = tuple(in_axes.get(n) or None for n in input_names)
    auto_shapes = tuple(
        {a: torch.export.Dim.AUTO for a in in_axes[n]} if in_axes.get(n) else None for n in input_names
    )

    tmp = sibling_tmp(path, ".onnx.tmp")
    try:
        with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
            # "The axis name: seq will not be used, since it shares the same shape
            # constraints with another axis: seq." -- expected when inputs share symbols.
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            first_error: Exception | None = None
            renamed = True
            try:
                # Strings -> Dim.DYNAMIC named after the string: export fails loudly if
                # the model specialises the axis, and the ONNX dims get these names.
                program = _torch_export(module, args, input_names, output_names, named_shapes, opset)
            except Exception as e:  # noqa: BLE001 - torch raises many types here
                first_error = e
            if first_error is not None:
                # Fallback: Dim.AUTO lets torch.export infer relations between dims
                # instead of failing; its s0/s1 symbols are renamed after saving.
                try:
                    program = _torch_export(module, args, input_names, output_names, auto_shapes, opset)
                    renamed = False
                except Exception as e:  # noqa: BLE001
                    raise KdcliError(
                        f"ONNX export failed: {short_error(first_error)}",
                        hint="the model must be traceable by torch.export; see docs/export.md",
                    ) from e
            pinned = _specialised_axes(program, input_names, in_axes)
            if pinned:
                detail = f" (first attempt: {short_error(first_error, 200)})" if first_error is not None else ""
                raise KdcliError(
                    f"ONNX export pinned dynamic axes to the example size: {', '.join(pinned)}{detail}",
                    hint="the model code branches on or reshapes to that size; the file would only "
                    "work at the example shape",
                )
            try:
                program.save(str(tmp), external_data=False)
            except Exception as e:  # noqa: BLE001
                raise KdcliError(
                    f"writing the ONNX file failed: {short_error(e)}",
                    hint="single-file ONNX is limited to 2 GB of weights",
                ) from e
            if not renamed:
                _rename_dim_params(tmp, in_axes)
        _check_dynamic(tmp, dynamic_axes)
        import onnx

        try:
            onnx.checker.check_model(str(tmp), full_check=False)
        except Exception as e:  # noqa: BLE001
            raise KdcliError(f"exported ONNX model is invalid: {short_error(e)}") from e
        os.replace(tmp, path)
    finally:
        unlink_quietly(tmp)
    return path


def _torch_export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[Any, ...],
    opset: int,
):
    """torch.onnx.export with the dynamo exporter; returns the ONNXProgram (not saved)."""
    return torch.onnx.export(
        module,
        args,
        f=None,
        input_names=input_names,
        output_names=list(output_names),
        opset_version=int(opset),
        dynamo=True,
        external_data=False,
        dynamic_shapes=dynamic_shapes,
        optimize=True,
        verbose=False,
    )


def _specialised_axes(program: Any, input_names: list[str], in_axes: Mapping[str, Mapping[int, str]]) -> list[str]:
    """Requested dynamic axes that torch.export fixed to one value.

    The ONNX exporter traces with ``backed_size_oblivious`` and deferred runtime
    asserts, and then drops those asserts: a model that reshapes to a constant
    (``x.view(8)``) or branches on a size keeps a *symbolic* ONNX input dim while the
    graph is only valid at the example size. The exported program's range
    constraints still say so (``VR[2, 2]``), so look there.
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


def short_error(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    # torch's export errors carry long boilerplate; keep the summary line when present.
    marker = "## Exception summary"
    if marker in text:
        tail = text.split(marker, 1)[1].strip().splitlines()
        keep = [ln.strip() for ln in tail if ln.strip() and not ln.strip().startswith("(Refer to")]
        text = " ".join(keep) or text
    return text if len(text) <= limit else text[: limit - 3] + "..."
