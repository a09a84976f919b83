"""rbp: robust binary subnetworks found by pruning randomly initialised ±1 networks."""

__version__ = "0.1.0"
