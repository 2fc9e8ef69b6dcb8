"""CEC API simulator over real HTTP on loopback, for the demo, the tests and dry runs.

Speaks tokenByAkSk and queryPhone (SPEC section 2) with injectable faults (section 7).
"""

from exporter.simulator.faults import Fault, parse_faults
from exporter.simulator.model import Expected, SimConfig
from exporter.simulator.server import Simulator

__all__ = ["Expected", "Fault", "SimConfig", "Simulator", "parse_faults"]
