"""PPE (Zhu et al., NeurIPS 2025, "Improving Reward Models with Proximal Policy Exploration for Preference-Based
Reinforcement Learning"): QPA plus a Morse network that tells how well the labelled preferences cover a
state-action, which steers both exploration and query selection toward what they cover less (ALGORITHM.md §12).
No public code holds PPE; docs/ALGORITHM.md §12 lists the choices made here where its description leaves one open.

- Morse network M_φ(s, a) = exp(−λ/2 ‖f_φ(s, a)‖²) ∈ (0, 1] (Dherin et al., 2023): f_φ an MLP, λ = `ppe_lambda`.
  After each query round it takes `ppe_morse_updates` Adam steps on the state-actions of the labelled pairs against
  the same states with uniformly drawn actions, minimising E_labelled[−log M] + E_uniform[M], so that M is near 1
  where the preferences cover and near 0 where they do not; 1 − M is a state-action's out-of-distribution degree.
- Proximal-policy extension (`ppe_extension`): the behaviour policy keeps the target policy's pre-tanh covariance Σ
  and moves its mean by the step that raises the out-of-distribution degree most to first order within
  KL(π_E ‖ π_T) ≤ ε (`ppe_epsilon`): μ_E = μ_T + sqrt(2ε) Σ g / sqrt(gᵀ Σ g), g = ∇_μ (1 − M_φ(s, tanh μ)) at μ_T
  (the construction of Optimistic Actor-Critic's exploration policy, Ciosek et al. 2019).
- Mixture distribution query (`ppe_mixture_query`, scheme `ppe_mixture`): of `reward_batch` x `large_batch`
  candidate pairs from QPA's window of the N newest episodes, κ·b (κ = `ppe_kappa`) with the highest
  out-of-distribution degree and the rest with the lowest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import feedback
import queries
import registry
import utils
from config_rules import Int, Number, Section, boolean, fail, key
from episodes import SegmentPairs

if TYPE_CHECKING:
    from feedback import Run
    from teacher import QueryRound


@registry.register_keys
@dataclass
class PpeKeys(Section):
    """PPE's keys (config/method/ppe.yaml; ALGORITHM.md §12)."""

    ppe_extension: bool = key(
        True, boolean, "PPE: explore with the proximal-policy extension of the policy (with ppe_morse)", switch=True
    )
    ppe_mixture_query: bool = key(
        True, boolean, "PPE: query_scheme=ppe_mixture mixes OOD and in-distribution pairs; false: QPA's", switch=True
    )
    ppe_epsilon: float = key(0.01, Number(0.0), "PPE: KL(π_E ‖ π_T) bound of the exploration shift", switch=True)
    ppe_kappa: float = key(
        0.5, Number(0.0, 1.0, closed=True), "PPE: share of a round's queries chosen as out-of-distribution", switch=True
    )
    ppe_lambda: float = key(5.0, Number(0.0), "PPE: the Morse network's kernel M = exp(-λ/2 ‖f(s, a)‖²)", switch=True)
    ppe_morse_hidden_dim: int = key(256, Int(), "PPE: Morse network MLP width", switch=True)
    ppe_morse_hidden_depth: int = key(3, Int(), "PPE: Morse network MLP hidden layers", switch=True)
    ppe_morse_updates: int = key(200, Int(), "PPE: Morse network Adam steps after each query round", switch=True)
    ppe_morse_batch: int = key(256, Int(), "PPE: labelled state-actions per Morse network step", switch=True)
    ppe_morse_lr: float = key(1e-3, Number(0.0), "PPE: Morse network Adam learning rate", switch=True)

    def check_relations(self) -> None:
        # Called on the whole config (TrainConfig.check_relations), so the core's keys are there too.
        scheme, steps = self.scheme, self.feedback_steps  # type: ignore[attr-defined]
        if scheme == "ppe_mixture" and "ppe_morse" not in steps:
            fail("query_scheme", scheme, "needs the ppe_morse feedback step, which trains the Morse network")


class MorseNetwork(nn.Module):
    """M_φ(s, a) = exp(−λ/2 ‖f_φ(s, a)‖²): an MLP f_φ into R^`embedding_dim` and a Gaussian kernel around 0."""

    def __init__(self, input_dim: int, hidden_dim: int, hidden_depth: int, embedding_dim: int, kernel_lambda: float):
        super().__init__()
        self.kernel_lambda = kernel_lambda
        self.embedding = utils.mlp(input_dim, hidden_dim, embedding_dim, hidden_depth)

    def half_sq_distance(self, obs_action: torch.Tensor) -> torch.Tensor:
        """λ/2 ‖f_φ(s, a)‖² = −log M_φ(s, a), per row [N]."""
        return 0.5 * self.kernel_lambda * self.embedding(obs_action).square().sum(-1)

    def forward(self, obs_action: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.half_sq_distance(obs_action))


@feedback.register_step("ppe_morse")
class ProximalPolicyExploration:
    """PPE's Morse network, trained after every round, and the behaviour policy of its proximal-policy extension
    (see the module docstring); the `ppe_mixture` scheme reads the network through the query context."""

    def __init__(self, run: Run) -> None:
        cfg, agent = run.cfg, run.agent
        self.cfg = cfg
        self.device = agent.device
        self.obs_dim, self.action_dim = agent.obs_dim, agent.action_dim
        self.net = MorseNetwork(agent.obs_dim + agent.action_dim, cfg.ppe_morse_hidden_dim, cfg.ppe_morse_hidden_depth,
                                agent.action_dim, cfg.ppe_lambda).to(self.device)  # fmt: skip
        self.opt = utils.adam(self.net.parameters(), lr=cfg.ppe_morse_lr)
        # Its own stream for minibatches and uniform actions: every other draw of the run stays as it was.
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 100_003 + 7)
        self.trained = False  # no round yet: nothing to tell covered from uncovered

    # ---------------------------------------------------------------- after a round's labels
    def __call__(self, run: Run, query_round: QueryRound) -> None:
        rows = run.preferences.data()[0].reshape(-1, self.obs_dim + self.action_dim)
        if self.trained:  # how covered the queries were by the labels before them, as the selection saw it
            queried = torch.as_tensor(query_round.pairs, device=self.device).reshape(-1, rows.shape[-1])
            with torch.no_grad():
                run.logger.log("train/ppe_queried_morse", self.net(queried).mean(), run.step)
        for _ in range(self.cfg.ppe_morse_updates):
            index = torch.randint(len(rows), (self.cfg.ppe_morse_batch,), generator=self.generator, device=self.device)
            covered = rows[index]
            uniform = torch.rand((len(index), self.action_dim), generator=self.generator, device=self.device)
            uncovered = torch.cat([covered[:, : self.obs_dim], 2.0 * uniform - 1.0], dim=-1)
            loss = self.net.half_sq_distance(covered).mean() + self.net(uncovered).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.trained = True
        run.logger.log("train/ppe_morse_loss", loss.detach(), run.step)

    # ---------------------------------------------------------------- the behaviour policy
    def behaviour_action(self, run: Run, obs: np.ndarray) -> np.ndarray:
        """A training action: from the target policy, or with `ppe_extension` (once the network is trained and
        while feedback remains) from the behaviour policy π_E."""
        if not (self.cfg.ppe_extension and self.trained and run.schedule.budget_left):
            return run.agent.act(obs, sample=True)
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None]
        with torch.no_grad():
            dist = run.agent.actor(obs_t)
        mean, variance = dist.mu.detach().requires_grad_(True), dist.std.square()
        with torch.enable_grad():
            out_of_distribution = 1.0 - self.net(torch.cat([obs_t, torch.tanh(mean)], dim=-1)).sum()
            (gradient,) = torch.autograd.grad(out_of_distribution, mean)
        with torch.no_grad():
            shift = exploration_shift(gradient, variance, self.cfg.ppe_epsilon)
            pre_tanh = mean + shift + dist.std * torch.randn_like(mean)
            action = torch.tanh(pre_tanh).clamp_(*run.agent.action_range)
            run.logger.log("train/ppe_shift", shift.norm(), run.step)
            run.logger.log("train/ppe_explored_morse", self.net(torch.cat([obs_t, action], dim=-1)).mean(), run.step)
        return action[0].cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "generator": self.generator.get_state(),
                "trained": self.trained}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.generator.set_state(state["generator"])
        self.trained = bool(state["trained"])


def exploration_shift(gradient: torch.Tensor, variance: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The mean shift Δ = sqrt(2ε) Σ g / sqrt(gᵀ Σ g) of a diagonal Gaussian with variances Σ: the first-order
    maximiser of gᵀ Δ subject to KL(N(μ + Δ, Σ) ‖ N(μ, Σ)) = Δᵀ Σ⁻¹ Δ / 2 ≤ ε. Zero where g is."""
    squared_scale = (gradient.square() * variance).sum(-1, keepdim=True)
    # rsqrt, not a division by sqrt: torch.sqrt on a CPU rounds by processor (see utils.adam).
    inverse_scale = torch.rsqrt(squared_scale.clamp_min(1e-24))
    return torch.where(squared_scale > 0, math.sqrt(2.0 * epsilon) * variance * gradient * inverse_scale, 0.0)


def out_of_distribution_degree(net: MorseNetwork, pairs: np.ndarray, device: torch.device) -> torch.Tensor:
    """1 − M_φ averaged over every state-action of each pair [num]."""
    rows = torch.as_tensor(pairs, device=device).reshape(-1, pairs.shape[-1])
    with torch.no_grad():
        return 1.0 - net(rows).reshape(len(pairs), -1).mean(1)


@queries.register("ppe_mixture", recent_only=True)
def ppe_mixture(ctx: queries.QueryContext) -> SegmentPairs:
    """PPE's mixture distribution query (see the module docstring); QPA's policy-aligned selection while the Morse
    network is untrained (the first round) or with `ppe_mixture_query=false`."""
    morse = ctx.feedback_steps.get("ppe_morse")
    if not ctx.cfg.ppe_mixture_query or morse is None or not morse.trained:
        return queries.policy_aligned(ctx)
    candidates = ctx.sample_pairs(ctx.num * ctx.large_batch, ctx.recent_episodes())
    order = torch.argsort(out_of_distribution_degree(morse.net, candidates.pairs, morse.device), descending=True)
    num_out = round(ctx.cfg.ppe_kappa * ctx.num)
    chosen = torch.cat([order[:num_out], order.flip(0)[: ctx.num - num_out]])
    return candidates.take(utils.to_np(chosen))
