"""concealer: find the macroblocks that transmission errors destroyed in a video and repair them."""
from .errors import ConcealerError, InputError, OutputError, UsageError
from .pipeline import ConcealSummary, conceal, detect
from .simulate import LossOptions, PacketisationOptions, SimulationResult, simulate_loss

__version__ = "0.1.0"

__all__ = ["ConcealerError", "InputError", "OutputError", "UsageError", "LossOptions", "PacketisationOptions",
           "SimulationResult", "simulate_loss", "conceal", "ConcealSummary", "detect", "inpaint_image", "__version__"]


def __getattr__(name: str):
    """`inpaint_image` loads torch: import it only when it is asked for, not for every CLI start."""
    if name == "inpaint_image":
        from .inpaint import inpaint_image
        return inpaint_image
    raise AttributeError(f"module 'concealer' has no attribute {name!r}")
