"""capcalc: capacity and roofline calculator for LLM inference.

``from capcalc import Session, Deployment`` is the Python API (:mod:`capcalc.api`). They are
imported on first use (PEP 562), so that ``import capcalc`` -- and the CLI's start-up --
does not pay for the calculation modules.
"""

__version__ = "0.1.0"

__all__ = ["Deployment", "LatencyReport", "PlanReport", "RooflineReport", "Session", "__version__"]

_API = {"Deployment", "LatencyReport", "PlanReport", "RooflineReport", "Session"}


def __getattr__(name: str):
    if name in _API:
        from capcalc import api

        return getattr(api, name)
    raise AttributeError(f"module 'capcalc' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _API)
