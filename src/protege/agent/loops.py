"""Loop detection (METHOD §6): base commands, runs of equal base commands, R_loop and the loop-rate metric.

An agent that repeats itself (the same test run, the same `grep`, the same `view`) is looping. Every
action is normalised to a *base command*; a run is a maximal sequence of consecutive actions with
the same base command. R_loop (METHOD §5.1) penalises runs beyond a threshold (k1 for the first run,
k2 for every later one); the loop-rate metric reports the share of trajectories whose longest run
exceeds L steps. All constants come from `LoopConfig`.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterable, Sequence
from typing import Any

from protege.config import LoopConfig
from protege.trajectory import Trajectory

NAVIGATE = "navigate"
"""The one class every read-only navigation action belongs to (METHOD §6 rule 3)."""

NAVIGATION_PROGRAMS = frozenset({"grep", "rg", "find", "cat", "ls", "head", "tail"})
"""bash programs that count as navigation."""

# Separators that chain commands (rule 1): the last chained part is the one that defines the action.
# Newlines chain too: a multi-line command is a script whose last line is what it is "for".
_CHAIN_OPERATORS = ("&&", "||", ";", "\n")

# git options that take a separate value word before the subcommand (`git -C dir status`).
_GIT_OPTIONS_WITH_VALUE = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace"})


def _split_outside_quotes(command: str, separators: Sequence[str]) -> list[str]:
    """Split on any of `separators` where they occur outside single/double quotes (backslash escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    index = 0
    while index < len(command):
        char = command[index]
        if quote:
            current.append(char)
            if char == "\\" and quote == '"' and index + 1 < len(command):
                current.append(command[index + 1])
                index += 1
            elif char == quote:
                quote = ""
            index += 1
            continue
        if char == "\\" and index + 1 < len(command):
            current.extend(command[index : index + 2])
            index += 2
            continue
        if char in "'\"":
            quote = char
            current.append(char)
            index += 1
            continue
        separator = next((s for s in separators if command.startswith(s, index)), "")
        if separator:
            parts.append("".join(current))
            current = []
            index += len(separator)
            continue
        current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _words(segment: str) -> list[str]:
    try:
        return shlex.split(segment)
    except ValueError:  # unbalanced quotes: fall back to whitespace words, never fail on agent input
        return segment.split()


def _is_assignment(word: str) -> bool:
    name, eq, _ = word.partition("=")
    return bool(eq) and name.isidentifier()


def _git_base(words: list[str]) -> str:
    index = 1
    while index < len(words) and words[index].startswith("-"):
        index += 2 if words[index] in _GIT_OPTIONS_WITH_VALUE else 1
    return f"git {words[index]}" if index < len(words) else "git"


def bash_base_command(command: str) -> str:
    """Base command of a bash action (METHOD §6 rule 1, with navigation folded in per rule 3)."""
    chained = [p for p in _split_outside_quotes(command, _CHAIN_OPERATORS) if p.strip()]
    last = chained[-1] if chained else ""
    first_stage = _split_outside_quotes(last, ("|",))[0]
    words = _words(first_stage)
    while words and _is_assignment(words[0]):
        words.pop(0)
    if not words:
        return "bash"
    program = posixpath.basename(words[0])
    if program == "git":
        return _git_base(words)
    if program in NAVIGATION_PROGRAMS:
        return NAVIGATE
    return program


def base_command(tool: str, arguments: dict[str, Any]) -> str:
    """Normalise one action to its base command (METHOD §6).

    `bash` -> the program of the last chained command (`git <subcommand>` for git), navigation
    programs -> `navigate`; `str_replace_editor` -> `str_replace_editor <command>` (`view` ->
    `navigate`); every other tool (`ask_expert`, `submit`, unknown names) is its own base command.
    """
    if tool == "bash":
        command = arguments.get("command")
        return bash_base_command(command if isinstance(command, str) else "")
    if tool == "str_replace_editor":
        sub = arguments.get("command")
        if sub == "view":
            return NAVIGATE
        return f"str_replace_editor {sub}" if isinstance(sub, str) and sub else "str_replace_editor"
    return tool


def runs(base_commands: Iterable[str]) -> list[int]:
    """Lengths of the maximal runs of equal consecutive base commands, in order (s_1..s_M)."""
    lengths: list[int] = []
    previous: str | None = None
    for command in base_commands:
        if lengths and command == previous:
            lengths[-1] += 1
        else:
            lengths.append(1)
        previous = command
    return lengths


def longest_run(base_commands: Iterable[str]) -> int:
    """Length of the longest run (0 for no actions)."""
    return max(runs(base_commands), default=0)


def r_loop(run_lengths: Sequence[int], cfg: LoopConfig) -> float:
    """R_loop = max(floor, -λ (max(0, s_1 - k1 + 1) + Σ_{j≥2} max(0, s_j - k2 + 1))) (METHOD §5.1)."""
    if not run_lengths:
        return 0.0
    excess = max(0, run_lengths[0] - cfg.first_run_threshold + 1)
    excess += sum(max(0, length - cfg.later_run_threshold + 1) for length in run_lengths[1:])
    # `+ 0.0` turns the -0.0 of a loop-free trajectory into 0.0.
    return max(cfg.floor, -cfg.penalty_per_step * excess) + 0.0


def trajectory_runs(trajectory: Trajectory) -> list[int]:
    """Run lengths of a trajectory's actions (their recorded base commands)."""
    return runs(action.base_command for action in trajectory.actions)


def loop_rates(trajectories: Sequence[Trajectory], cfg: LoopConfig) -> dict[int, float]:
    """For each L in cfg.metric_lengths: share of trajectories whose longest run exceeds L steps."""
    longest = [max(trajectory_runs(t), default=0) for t in trajectories]
    if not longest:
        return {length: 0.0 for length in cfg.metric_lengths}
    return {length: sum(s > length for s in longest) / len(longest) for length in cfg.metric_lengths}
