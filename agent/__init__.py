"""SAC agent (ALGORITHM.md §6): tanh-Gaussian actor, double-Q critic, and the PEBBLE / QPA update variants."""

from agent.actor import DiagGaussianActor
from agent.critic import DoubleQCritic
from agent.sac import SACAgent

__all__ = ["DiagGaussianActor", "DoubleQCritic", "SACAgent"]
