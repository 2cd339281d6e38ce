"""The parts of the methods beside QPA and PEBBLE that are not shared by the core: each method is one small module."""
