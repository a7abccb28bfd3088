"""`capcalc measure`: time the local device and a real torch decode loop.

This package is the only code in capcalc that imports torch, and it does so only
inside functions (through :func:`require_torch`), so that every other command
works without torch installed. The pure pieces (memory pre-check, least-squares
fit) import nothing heavy and are tested without a device.
"""

from __future__ import annotations

import warnings

from capcalc.core.errors import CapcalcError

INSTALL_HINT = "pip install 'capcalc[measure]'"


def require_torch():
    """Import and return torch, or raise the one-line error with the install hint."""
    try:
        with warnings.catch_warnings():
            # a torch wheel without numpy beside it warns once on import; measure needs no numpy
            warnings.simplefilter("ignore")
            import torch
    except ImportError:
        raise CapcalcError(
            f"capcalc measure needs torch, which is not installed: {INSTALL_HINT}", exit_code=1
        ) from None
    return torch
