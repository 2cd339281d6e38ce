"""PPE (Zhu et al., NeurIPS 2025, "Improving Reward Models with Proximal Policy Exploration for Preference-Based
Reinforcement Learning"): QPA plus a Morse network that tells how well the labelled preferences cover a
state-action, which steers both exploration and query selection toward what they cover less (ALGORITHM.md §12,
with the paper's section for every choice). No public code holds PPE.

- Morse network (§3.2, Eq. 1–2, Appendix B): f_φ(s, a) is a perturbation model that outputs an action, and
  K_φ(s, a) = exp(−λ/2 ‖f_φ(s, a) − a‖²) ∈ (0, 1] (λ = `ppe_lambda`) is near 1 only where f_φ returns the action
  itself, which training makes it do on the labelled state-actions; the paper's M_φ = 1 − K_φ is the
  out-of-distribution degree. After each query round `ppe_morse_updates` Adam steps (Appendix F.2: 200) minimise
  E_labelled[−log K] + E_uniform[K], uniform actions at the labelled states (the KL of Eq. 2). Its initial weights
  come from its own seeded stream, so a PPE run is QPA's run until PPE first acts.
- Proximal-policy extension (`ppe_extension`, Eq. 3–4, Appendix D): every training action after the first round
  (Algorithm 2, line 3: a ~ π_E at every step after pre-training; the network is first trained at the first round)
  comes from π_E, which keeps the target policy's pre-tanh covariance Σ and moves its mean by the step that raises
  M_φ most to first order within KL(π_E ‖ π_T) ≤ ε (`ppe_epsilon`): μ_E = μ_T + sqrt(2ε) Σ g / sqrt(gᵀ Σ g),
  g = ∇_μ M_φ(s, tanh μ) at μ_T.
- Mixture distribution query (`ppe_mixture_query`, scheme `ppe_mixture`, Algorithm 1, Eq. 5–6): over every segment
  of the N newest episodes (QPA's policy-aligned set D_cp), each segment's out-of-distribution degree (the mean of
  M_φ over its steps); 2κb segments (κ = `ppe_kappa`, b the round's size) drawn without replacement with
  probability ∝ that degree (P_out) and 2(1 − κ)b of the rest ∝ 1 − the degree (P_in), paired in order of drawing.
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
from episodes import Episode, SegmentPairs

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
    """K_φ(s, a) = exp(−λ/2 ‖f_φ(s, a) − a‖²): an MLP f_φ from a state-action to an action, and a Gaussian kernel
    between its output and the action itself."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, hidden_depth: int, kernel_lambda: float):
        super().__init__()
        self.action_dim = action_dim
        self.kernel_lambda = kernel_lambda
        self.perturbation = utils.mlp(obs_dim + action_dim, hidden_dim, action_dim, hidden_depth)

    def half_sq_distance(self, obs_action: torch.Tensor) -> torch.Tensor:
        """λ/2 ‖f_φ(s, a) − a‖² = −log K_φ(s, a), per row [N]."""
        action = obs_action[..., -self.action_dim :]
        return 0.5 * self.kernel_lambda * (self.perturbation(obs_action) - action).square().sum(-1)

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
        # Its initial weights from its own seeded stream: the global one stays where QPA's run has it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed * 100_003 + 11)
            self.net = MorseNetwork(agent.obs_dim, agent.action_dim, cfg.ppe_morse_hidden_dim,
                                    cfg.ppe_morse_hidden_depth, cfg.ppe_lambda).to(self.device)  # fmt: skip
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
        """A training action: with `ppe_extension`, from the behaviour policy π_E once the network has been trained
        (from the first round to the end of the run); else, and before, from the target policy."""
        if not (self.cfg.ppe_extension and self.trained):
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


def segment_degrees(net: MorseNetwork, episodes: list[Episode], length: int, device: torch.device) -> np.ndarray:
    """The out-of-distribution degree (mean of M_φ = 1 − K_φ over its steps) of every `length`-step segment of
    `episodes`, rows (episode index, start, degree), starts 0 … len − length − 1 as the store draws them."""
    rows = []
    with torch.no_grad():
        for episode in episodes:
            degree = 1.0 - net(torch.as_tensor(episode.sa, device=device)).double()
            cumulative = torch.nn.functional.pad(degree.cumsum(0), (1, 0))
            starts = torch.arange(len(episode.sa) - length, device=device)
            means = (cumulative[starts + length] - cumulative[starts]) / length
            rows.append(np.stack([np.full(len(starts), episode.index), utils.to_np(starts), utils.to_np(means)], 1))
    return np.concatenate(rows)


def draw(rng: np.random.Generator, weights: np.ndarray, num: int, available: np.ndarray) -> np.ndarray:
    """`num` distinct indices of the `available` ones, drawn one after another with probability ∝ `weights` (a tiny
    floor keeps every segment drawable, so there are always enough)."""
    weights = weights[available] + 1e-12
    return available[rng.choice(len(available), size=num, replace=False, p=weights / weights.sum())]


@queries.register("ppe_mixture", recent_only=True)
def ppe_mixture(ctx: queries.QueryContext) -> SegmentPairs:
    """PPE's mixture distribution query (see the module docstring); QPA's policy-aligned selection while the Morse
    network is untrained (the first round) or with `ppe_mixture_query=false`."""
    morse = ctx.feedback_steps.get("ppe_morse")
    if not ctx.cfg.ppe_mixture_query or morse is None or not morse.trained:
        return queries.policy_aligned(ctx)
    segments = segment_degrees(morse.net, ctx.recent_episodes(), ctx.segment, morse.device)
    degree = np.clip(segments[:, 2], 0.0, 1.0)
    num_out = round(ctx.cfg.ppe_kappa * ctx.num)
    outside = draw(ctx.rng, degree, 2 * num_out, np.arange(len(segments)))
    rest = np.setdiff1d(np.arange(len(segments)), outside)
    inside = draw(ctx.rng, 1.0 - degree, 2 * (ctx.num - num_out), rest)
    origins = segments[np.concatenate([outside, inside]), :2].astype(np.int64).reshape(-1, 2, 2)
    return ctx.episodes.segment_pairs(origins, ctx.segment)
