"""Small stages for testing the runner's contract without model code."""
from __future__ import annotations

import os
import signal

import pyarrow as pa

from saerec.pipeline import Stage, StageContext


def _numbers(ctx: StageContext) -> dict:
    n = ctx.sections["data"].demo.users
    ctx.output.write_table("numbers.parquet", pa.table({"x": list(range(n))}))
    if os.environ.get("TOY_KILL_AFTER_WRITE"):
        os.kill(os.getpid(), signal.SIGKILL)
    ctx.output.write_json("summary.json", {"n": n})
    return {"rows": n}


def _double(ctx: StageContext) -> dict:
    table = ctx.input("numbers").read_table("numbers.parquet")
    ctx.output.write_table("doubled.parquet", pa.table({"y": [2 * v for v in table.column("x").to_pylist()]}))
    return {"rows": table.num_rows}


NUMBERS = Stage(name="numbers", run=_numbers, sections=("data",))
DOUBLE = Stage(name="double", run=_double, inputs=("numbers",), sections=("embed",))


def _total(ctx: StageContext) -> dict:
    doubled = ctx.input("double").read_table("doubled.parquet").column("y").to_pylist()
    numbers = ctx.input("numbers").read_json("summary.json")
    ctx.output.write_json("total.json", {"sum": sum(doubled), "n": numbers["n"]})
    return {"sum": sum(doubled)}


TOTAL = Stage(name="total", run=_total, inputs=("numbers", "double"), sections=("sae",))
