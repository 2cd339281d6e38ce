"""A complete method in one module of your own, no file of the repository edited (docs/EXTENDING.md):

    PYTHONPATH=examples python train_QPA.py imports=[most_likely] method=most_likely env=walker_walk

- its keys: `most_likely_pool` (candidates ranked per query) and `q_limit` (the trigger's limit), typed, checked,
  documented and saved like every other key (`q_limit=-1` is refused in one line before any work);
- its query scheme `most_likely`: of `num` x `most_likely_pool` candidates from the whole history, the `num` pairs
  whose steps the current policy finds likeliest;
- its feedback step and trigger `restart_critic_on_high_q`: after every SAC update it computes the critic's mean
  |Q| on that update's last batch; at the next query round, if that passed `q_limit` since the last round, the
  critic restarts, warmed up on the relabelled buffer as PEBBLE's first-round restart is;
- its preset, `method=most_likely`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.core.config_store import ConfigStore

import feedback
import queries
import registry
from agent.sac import SacUpdate
from config_rules import Int, Number, Section, key
from episodes import SegmentPairs
from feedback import Run
from queries import QueryContext
from teacher import QueryRound


@registry.register_keys
@dataclass
class MostLikelyKeys(Section):
    most_likely_pool: int = key(10, Int(), "most_likely: candidates the policy ranks per query", switch=True)
    q_limit: float = key(100.0, Number(0.0), "most_likely: restart the critic at a round once |Q| passed this")


@queries.register("most_likely", feed_type=42)
def most_likely(ctx: QueryContext) -> SegmentPairs:
    """The `num` likeliest pairs under the current policy of `num` x `most_likely_pool` history candidates."""
    candidates = ctx.sample_pairs(ctx.num * ctx.cfg.most_likely_pool, ctx.history())
    score = ctx.log_likelihood(candidates).mean((1, 2))  # per-step log π(a|s), averaged over a pair
    return candidates.take(queries.top(score, ctx.num))


@feedback.register_step("restart_critic_on_high_q")
class RestartCriticOnHighQ:
    """A trigger on a quantity it computes itself: the critic's mean |Q| on each update's last batch."""

    def __init__(self, run: Run) -> None:
        self.limit = run.cfg.q_limit
        self.highest = torch.tensor(-torch.inf, device=run.agent.device)  # on the device: no sync per update
        self.restarts = 0

    def after_update(self, run: Run, update: SacUpdate) -> None:
        batch = update.last_batch()
        with torch.no_grad():
            q = torch.min(*run.agent.critic(batch.obs, batch.action)).abs().mean()
        self.highest = torch.maximum(self.highest, q)

    def __call__(self, run: Run, query_round: QueryRound) -> None:
        if float(self.highest) > self.limit:
            run.agent.reset_critic()
            for index in range(run.cfg.reset_update):
                run.update_metrics = run.agent.update(lambda: run.sample(hybrid=False), index)
            self.restarts += 1
        self.highest.fill_(-torch.inf)
        run.logger.log("train/critic_restarts", self.restarts, run.step)

    def state_dict(self) -> dict[str, Any]:
        return {"highest": self.highest.clone(), "restarts": self.restarts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.highest.copy_(state["highest"])
        self.restarts = int(state["restarts"])


ConfigStore.instance().store(
    group="method",
    name="most_likely",
    package="_global_",
    node={
        "defaults": ["qpa", "_self_"],
        "method": "most_likely",
        "experiment": "MostLikely",
        "query_scheme": "most_likely",
        "feedback_steps": ["train_reward", "relabel", "reset_critic_after_first_round", "restart_critic_on_high_q"],
    },
)
