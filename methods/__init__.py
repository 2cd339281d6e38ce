"""The methods beside QPA and PEBBLE, one module each: its config keys, query schemes, feedback steps and
extensions, registered as the package loads (registry.py); its preset is config/method/<name>.yaml."""

from methods import mrn, policer, ppe, rime, rune, surf

__all__ = ["mrn", "policer", "ppe", "rime", "rune", "surf"]
