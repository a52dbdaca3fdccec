"""What a compiled XLA program multiplies, read from its HLO text: every dot and gemm call
with its shapes and FLOPs, whether the seeds share one matmul, and the large transposes
and copies around it."""

from __future__ import annotations

import math
import re
from typing import Any

# "%name = f32[9920,400]{1,0} op(...)"; a tuple result "(f32[...], s8[...])" gives its first.
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\(?(\w+)\[([\d,]*)\]")
_OPERAND = re.compile(r"(?:(\w+)\[([\d,]*)\](?:\{[^}]*\})?\s+)?%([\w.\-]+)")


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def hlo_matmuls(text: str) -> list[dict[str, Any]]:
    """Every dot (and cuBLAS/oneDNN gemm custom call) of a compiled HLO module: output
    shape, operand shapes and FLOPs (2 · output size · contracted size; None when the
    operands' shapes are not printed)."""
    shapes: dict[str, tuple[int, ...]] = {}
    found = []
    for line in text.splitlines():
        m = _DEF.match(line)
        if not m:
            continue
        name, _, dims = m.groups()
        shapes[name] = _dims(dims)
        is_dot = " dot(" in line
        is_gemm = "custom-call(" in line and re.search(r"gemm|matmul", line, re.I)
        if not (is_dot or is_gemm):
            continue
        call = re.search(r"(?:dot|custom-call)\((.*?)\)", line)
        ops = []
        for dt, odims, oname in _OPERAND.findall(call.group(1) if call else ""):
            ops.append(_dims(odims) if dt else shapes.get(oname))
        entry: dict[str, Any] = {
            "kind": "dot" if is_dot else "gemm_custom_call",
            "out": list(shapes[name]),
            "operands": [list(o) if o else None for o in ops],
        }
        lc = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        if is_dot and lc and ops and ops[0] is not None:
            contracted = math.prod(ops[0][i] for i in _dims(lc.group(1)))
            entry["flops"] = 2 * math.prod(shapes[name]) * contracted
        elif all(o is not None and len(o) == 2 for o in ops[:2]) and len(shapes[name]) == 2:
            # a plain (m, k)·(k, n) gemm call: k² = |lhs|·|rhs| / |out|
            k = math.isqrt(math.prod(ops[0]) * math.prod(ops[1]) // math.prod(shapes[name]))
            entry["flops"] = 2 * math.prod(shapes[name]) * k
        else:
            entry["flops"] = None
        found.append(entry)
    return found


def hlo_summary(text: str, S: int, km: int, NP: int) -> dict[str, Any]:
    """Do the seeds share one matmul? (a dot whose output has a dimension S·k·m), and the
    large transposes/copies the step pays for around it."""
    mms = hlo_matmuls(text)
    big = NP * S * km
    n_transpose = sum(
        1
        for line in text.splitlines()
        if re.search(r"= \w+\[[\d,]*\]\{[^}]*\} (transpose|copy)\(", line)
        and (m := _DEF.match(line))
        and math.prod(_dims(m.group(3))) >= big
    )
    fused = any(S * km in e["out"] for e in mms) if S > 1 else True
    per_seed_dots = sum(
        1 for e in mms if S > 1 and e["out"] and e["out"][0] == S and km in e["out"]
    )
    return {
        "matmuls": mms,
        "flops_per_step_from_hlo": sum(e["flops"] or 0 for e in mms),
        "seeds_fused_into_one_matmul": bool(fused),
        "batched_per_seed_dots": per_seed_dots,
        "large_transposes_or_copies": n_transpose,
        "n_fusions": text.count(" fusion("),
    }
