"""concealer: find the macroblocks that transmission errors destroyed in a video and repair them."""
from .errors import ConcealerError, InputError, OutputError, UsageError
from .simulate import LossOptions, PacketisationOptions, SimulationResult, simulate_loss

__version__ = "0.1.0"

__all__ = ["ConcealerError", "InputError", "OutputError", "UsageError", "LossOptions", "PacketisationOptions",
           "SimulationResult", "simulate_loss", "__version__"]
