"""The parts of the methods beside QPA and PEBBLE that the core does not share, one small module each. Importing
the package registers their query schemes and feedback steps."""

from methods import policer, ppe

__all__ = ["policer", "ppe"]
