"""Medians and spreads of repeated measurements, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import statistics

from bench.harness.report import cpu_model


def machine() -> dict[str, str]:
    model = cpu_model()
    import grpc
    import h2
    import trio

    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "trio": trio.__version__, "h2": h2.__version__, "grpcio": grpc.__version__,
            "kernel": platform.release()}


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float], fmt: str = "{:.0f}") -> str:
    if not xs:
        return "—"
    return f"{fmt.format(med(xs))} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"
