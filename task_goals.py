"""What each task asks for, in one line that a person who has never seen it understands: the labelling page of
`teacher=human` shows it above every query, so a labeller knows what "better" means. A study may replace it with
its own words (`human_instruction`).

The table covers every name `utils.env_names()` accepts and Gymnasium's MuJoCo tasks (tests/test_human_teacher.py
checks both), so a family of tasks added later cannot reach the page without its goals; any other Gymnasium task
gets a line pointing to its own reward. Directions are as the page's camera shows them: DMC's
walker, cheetah and hopper move to the right on screen when they move forward.
"""

from __future__ import annotations

from typing import NamedTuple

import utils

TASK_GOALS: dict[str, str] = {
    # DeepMind Control
    "acrobot_swingup": "Swing the two-link arm up from hanging down and hold it pointing straight up.",
    "acrobot_swingup_sparse": "Swing the two-link arm up until its tip reaches the very top, and keep it there.",
    "ball_in_cup_catch": "Swing the ball on its string up and catch it in the cup.",
    "cartpole_balance": "Keep the pole standing upright on the cart, with the cart near the middle of the track.",
    "cartpole_balance_sparse": "Keep the pole upright on the cart without letting the cart leave the middle.",
    "cartpole_swingup": "Swing the pole up from hanging down, then balance it upright with the cart near the middle.",
    "cartpole_swingup_sparse": "Swing the pole up from hanging down and keep it balanced upright near the middle.",
    "cartpole_two_poles": "Swing the chain of two poles up and balance it upright on the cart.",
    "cartpole_three_poles": "Swing the chain of three poles up and balance it upright on the cart.",
    "cheetah_run": "Run forward (to the right) as fast as possible.",
    "dog_fetch": "Run to the ball, pick it up in the mouth and bring it to the middle of the arena, staying upright.",
    "dog_run": "Run forward fast while staying upright on all four legs.",
    "dog_stand": "Stand up on all four legs, body high and level, and stay there.",
    "dog_trot": "Trot forward at a brisk pace while staying upright on all four legs.",
    "dog_walk": "Walk forward slowly and steadily while staying upright on all four legs.",
    "finger_spin": "Flick the free-turning spinner with the finger so that it keeps spinning fast.",
    "finger_turn_easy": "Turn the spinner with the finger until its tip points at the target (a large target).",
    "finger_turn_hard": "Turn the spinner with the finger until its tip points at the target (a small target).",
    "fish_swim": "Swim to the target ball in the water and touch it with the mouth, staying upright.",
    "fish_upright": "Turn the fish so its back is up and its belly down, and keep it that way.",
    "hopper_hop": "Hop forward (to the right) on the one leg without falling over.",
    "hopper_stand": "Stand up straight on the one leg, body high, and stay still.",
    "humanoid_CMU_run": "Run fast in any direction while staying upright on two feet.",
    "humanoid_CMU_stand": "Stand upright on two feet, head high, and stay still.",
    "humanoid_CMU_walk": "Walk at a steady pace in any direction while staying upright on two feet.",
    "humanoid_run": "Run fast in any direction while staying upright on two feet.",
    "humanoid_run_pure_state": "Run fast in any direction while staying upright on two feet.",
    "humanoid_stand": "Stand upright on two feet, head high, and stay still.",
    "humanoid_walk": "Walk at a steady pace in any direction while staying upright on two feet.",
    "lqr_lqr_2_1": "Bring the moving parts to rest at their middle positions, pushing as little as possible.",
    "lqr_lqr_6_2": "Bring all six moving parts to rest at their middle positions, pushing as little as possible.",
    "manipulator_bring_ball": "Grab the ball with the arm's gripper and carry it to the target spot.",
    "manipulator_bring_peg": "Grab the peg with the arm's gripper and carry it to the target, lined up with it.",
    "manipulator_insert_ball": "Grab the ball with the arm's gripper and put it into the basket.",
    "manipulator_insert_peg": "Grab the peg with the arm's gripper and push it into the slot.",
    "pendulum_swingup": "Swing the pendulum up from hanging down and keep it balanced straight up.",
    "point_mass_easy": "Move the ball to the target in the middle and keep it there, pushing gently.",
    "point_mass_hard": "Move the ball to the target in the middle and keep it there, pushing gently.",
    "quadruped_escape": "Climb out of the bumpy bowl and get as far from its centre as possible, staying upright.",
    "quadruped_fetch": "Run to the ball and push it to the target in the middle of the arena, staying upright.",
    "quadruped_run": "Run forward (the way the body faces) fast while staying upright.",
    "quadruped_walk": "Walk forward (the way the body faces) at a steady pace while staying upright.",
    "reacher_easy": "Move the arm's fingertip onto the target (a large target) and keep it there.",
    "reacher_hard": "Move the arm's fingertip onto the target (a small target) and keep it there.",
    "stacker_stack_2": "Put one of the two boxes on the target spot, on top of the other box if the spot is high.",
    "stacker_stack_4": "Put one of the four boxes on the target spot, stacking on the others if the spot is high.",
    "swimmer_swimmer15": "Swim the fifteen-link snake head first to the target.",
    "swimmer_swimmer6": "Swim the six-link snake head first to the target.",
    "walker_run": "Run forward (to the right) fast while staying upright.",
    "walker_stand": "Stand upright with the body high, without walking away.",
    "walker_walk": "Walk forward (to the right) at a steady pace while staying upright.",
    # Meta-World: what the robot arm must do
    "metaworld_assembly-v3": "Pick up the ring by its handle and drop it over the peg.",
    "metaworld_basketball-v3": "Pick up the ball and drop it through the hoop.",
    "metaworld_bin-picking-v3": "Pick up the block from one bin and put it into the other bin.",
    "metaworld_box-close-v3": "Pick up the lid and put it on the box to close it.",
    "metaworld_button-press-topdown-v3": "Press the button down from above.",
    "metaworld_button-press-topdown-wall-v3": "Press the button down from above; a low wall stands in front of it.",
    "metaworld_button-press-v3": "Push the button in from the front.",
    "metaworld_button-press-wall-v3": "Push the button in from the front; a low wall stands in front of it.",
    "metaworld_coffee-button-v3": "Press the button on the front of the coffee machine.",
    "metaworld_coffee-pull-v3": "Pull the mug out from under the coffee machine to the spot in front of it.",
    "metaworld_coffee-push-v3": "Push the mug under the coffee machine's spout.",
    "metaworld_dial-turn-v3": "Turn the dial round to its target position.",
    "metaworld_disassemble-v3": "Grab the ring by its handle and lift it up off the peg.",
    "metaworld_door-close-v3": "Push the open door shut.",
    "metaworld_door-lock-v3": "Turn the door's lock knob down to lock it.",
    "metaworld_door-open-v3": "Pull the door open by its handle.",
    "metaworld_door-unlock-v3": "Turn the door's lock knob to unlock it.",
    "metaworld_drawer-close-v3": "Push the drawer shut.",
    "metaworld_drawer-open-v3": "Pull the drawer open by its handle.",
    "metaworld_faucet-close-v3": "Turn the faucet's handle round to close the faucet.",
    "metaworld_faucet-open-v3": "Turn the faucet's handle round to open the faucet.",
    "metaworld_hammer-v3": "Pick up the hammer and hit the nail in.",
    "metaworld_hand-insert-v3": "Push the gripper down into the hole in the table.",
    "metaworld_handle-press-side-v3": "Press the handle down, reaching it from the side.",
    "metaworld_handle-press-v3": "Press the handle down.",
    "metaworld_handle-pull-side-v3": "Pull the handle up, reaching it from the side.",
    "metaworld_handle-pull-v3": "Pull the handle up.",
    "metaworld_lever-pull-v3": "Pull the lever up.",
    "metaworld_peg-insert-side-v3": "Pick up the peg and push it sideways into the hole in the box.",
    "metaworld_peg-unplug-side-v3": "Pull the peg sideways out of its hole.",
    "metaworld_pick-out-of-hole-v3": "Pick the object up out of the hole and lift it to the target above.",
    "metaworld_pick-place-v3": "Pick up the puck and carry it to the target spot.",
    "metaworld_pick-place-wall-v3": "Pick up the puck and carry it over the wall to the target spot.",
    "metaworld_plate-slide-back-side-v3": "Slide the plate sideways out of the cabinet, back onto the table.",
    "metaworld_plate-slide-back-v3": "Slide the plate back out of the cabinet, onto the table.",
    "metaworld_plate-slide-side-v3": "Slide the plate sideways into the cabinet.",
    "metaworld_plate-slide-v3": "Slide the plate forward into the cabinet.",
    "metaworld_push-back-v3": "Push the puck back towards the robot, to the target spot.",
    "metaworld_push-v3": "Push the puck along the table to the target spot.",
    "metaworld_push-wall-v3": "Push the puck round the wall to the target spot behind it.",
    "metaworld_reach-v3": "Move the gripper to the target point in the air.",
    "metaworld_reach-wall-v3": "Move the gripper over the wall to the target point in the air.",
    "metaworld_shelf-place-v3": "Pick up the block and put it on the shelf.",
    "metaworld_soccer-v3": "Push the ball into the goal.",
    "metaworld_stick-pull-v3": "Pick up the stick and use it to pull the container to the target spot.",
    "metaworld_stick-push-v3": "Pick up the stick and use it to push the container to the target spot.",
    "metaworld_sweep-into-v3": "Sweep the puck across the table into the hole.",
    "metaworld_sweep-v3": "Sweep the puck sideways off the edge of the table.",
    "metaworld_window-close-v3": "Slide the window shut.",
    "metaworld_window-open-v3": "Slide the window open.",
}


# Gymnasium's MuJoCo tasks, by their id without the version (`HalfCheetah-v5`: HalfCheetah). Any other Gymnasium
# task the project trains gets GYMNASIUM_FALLBACK.
GYMNASIUM_GOALS: dict[str, str] = {
    "Ant": "Walk the four-legged ant forward (to the right) as fast as possible without flipping over.",
    "HalfCheetah": "Run forward (to the right) as fast as possible.",
    "Hopper": "Hop forward (to the right) on the one leg as fast as possible without falling over.",
    "Humanoid": "Walk or run forward as fast as possible while staying upright on two feet.",
    "HumanoidStandup": "Stand up from lying on the ground, and get the head as high as possible.",
    "InvertedDoublePendulum": "Keep the two-link pole balanced upright on the cart.",
    "InvertedPendulum": "Keep the pole balanced upright on the cart.",
    "Pusher": "Push the white object with the arm to the red target spot.",
    "Reacher": "Move the tip of the two-link arm to the target dot.",
    "Swimmer": "Swim forward (to the right) as fast as possible by wiggling the body.",
    "Walker2d": "Walk forward (to the right) on two legs as fast as possible without falling over.",
}
GYMNASIUM_FALLBACK = "Do better at this task, as its own reward measures it (see the task's documentation)."


class Task(NamedTuple):
    """A task as the labelling page introduces it."""

    name: str  # the environment name the run uses (Meta-World v2 aliases resolved)
    family: str  # DeepMind Control, Meta-World or Gymnasium
    goal: str  # from TASK_GOALS or GYMNASIUM_GOALS


def describe_task(env: str) -> Task:
    """The name, family and goal of a task the project accepts (a Meta-World v2 alias gives its v3 task's)."""
    name = utils.canonical_env_name(env)
    family = utils.env_family(name)
    if family == "gymnasium":
        return Task(name, "Gymnasium", GYMNASIUM_GOALS.get(name.split("-v")[0], GYMNASIUM_FALLBACK))
    return Task(name, "Meta-World" if family == "metaworld" else "DeepMind Control", TASK_GOALS[name])
