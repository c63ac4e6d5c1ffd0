"""A deterministic simulator of the switch (in the spirit of TigerBeetle's VOPR): the real
core and store under simulated time, I/O and faults, with invariants checked every step.
See bench/README.md, "Deterministic simulation"."""

from .checks import InvariantViolation
from .faults import KINDS as FAULT_KINDS
from .faults import FaultRates
from .world import Hooks, Simulator, Summary, base_data_set

__all__ = ["FAULT_KINDS", "FaultRates", "Hooks", "InvariantViolation", "Simulator", "Summary",
           "base_data_set"]
