"""The runtime corner: device and rank session, atomic files, the run lock, signals."""
