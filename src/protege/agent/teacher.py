"""The oracle teacher: an offline stand-in for the strong model that acts during synthesis (METHOD §3).

`OracleTeacher(task)` is a `Policy` that works like a careful engineer who happens to know where the
fix is (from the task's gold patch) but acts only through the agent's real tools, one call per turn:

1. gets its bearings (lists the repository),
2. searches for a symbol the issue names (`git grep -n`),
3. views the relevant part of the file (`str_replace_editor view` with a `view_range`),
4. runs the existing tests of the files the failing tests live in (FAIL_TO_PASS tests usually come
   with the test patch and do not exist yet) and, when the issue has `>>>` examples, reproduces them,
5. asks the expert (`ask_expert`) once it has located but not yet understood the problem,
6. edits through `str_replace_editor` (each gold hunk as a `str_replace`: old text = context and
   removed lines, new text = context and added lines; `create` for new files, `rm` for deleted ones),
7. re-runs the tests, reviews the diff, submits.

It adapts to what it observes: a failed view is retried without a range; a failed `str_replace` is
followed by a look at the file and a retry with a smaller snippet (changed lines with one line of
context, then the changed lines alone); failing tests after the edit lead to a second question.
The `ask_first` plan skips 1-5 and 7: it asks the expert at once (`ASK_FIRST_QUESTION`), makes the change the
reply names (6, with the same retries) and submits.

Each turn carries reasoning text built from the task (file, function and the issue's own words), with
phrasing varied deterministically by (instance, attempt), so trajectories have the shape of real
ones (`reasoning=False`: the tool calls alone, the same ones). Everything it does is deterministic: the
same task and attempt give the same turns.
"""

from __future__ import annotations

import ast
import random
import re
import shlex
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from protege import patches
from protege.agent.expert_backends import estimate_tokens
from protege.agent.policies import PolicyError
from protege.agent.protocols import PolicyTurn
from protege.agent.tools import added_files
from protege.config import TeacherPlan
from protege.tasks import TaskInstance
from protege.trajectory import Message, ToolCall

NAME = "oracle-teacher"
"""Policy backend name recorded in trajectories."""
VIEW_MARGIN_LINES = 12
"""Lines shown above a hunk when the teacher first reads it."""
PYTEST = "python -m pytest -qq"
"""Test command: `-qq` prints no timings, so observations (and the dataset) are deterministic."""
REPRO_EOF = "PROTEGE_REPRO_EOF"
MISSING_INPUT = "FileNotFoundError"
"""In a replayed example's output: the example needs a file the issue does not include."""
GUIDANCE_QUOTE_CHARS = 220
"""Longest piece of expert guidance the teacher paraphrases in its next thought."""
ASK_FIRST_QUESTION = "Which change fixes this issue, and where?"
"""The `ask_first` plan's one question: the same words on every task, the issue being in the expert's input."""

_DEF = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+([A-Za-z_]\w*)")
_BACKTICKED = re.compile(r"`([A-Za-z_][\w.]*)(?:\(\))?`")
_EDIT_FAILED = ("No replacement was performed", "str_replace_editor")

Step = tuple[str, str, dict[str, Any]]
"""(reasoning text, tool name, arguments) of one turn."""


# --------------------------------------------------------------------------------------------------
# The gold patch, as edits
# --------------------------------------------------------------------------------------------------


@dataclass
class PatchHunk:
    """One hunk, its body lines in order as (tag, text) with tag in ' ', '-', '+'."""

    old_start: int
    old_count: int
    new_start: int
    scope: str
    lines: list[tuple[str, str]] = field(default_factory=list)

    def side(self, tags: str, context: int | None = None) -> str:
        """Text of the lines whose tag is in `tags`; `context`: keep only that many context lines
        before the first and after the last change."""
        body = self.lines
        if context is not None:
            changed = [i for i, (tag, _) in enumerate(body) if tag != " "]
            body = body[max(0, changed[0] - context) : changed[-1] + context + 1]
        return "\n".join(text for tag, text in body if tag in tags)

    @property
    def added(self) -> list[str]:
        return [text for tag, text in self.lines if tag == "+"]

    @property
    def removed(self) -> list[str]:
        return [text for tag, text in self.lines if tag == "-"]


@dataclass
class FilePatch:
    """One file of a diff: `kind` is modify, create or delete."""

    path: str
    kind: str
    hunks: list[PatchHunk] = field(default_factory=list)


def parse_patch(patch: str) -> list[FilePatch]:
    """Files and hunks of a unified git diff (protege.patches)."""
    files: list[FilePatch] = []
    for changed in patches.parse(patch):
        kind = "create" if changed.is_added_file else "delete" if changed.is_removed_file else "modify"
        files.append(FilePatch(changed.path, kind, [_hunk(hunk) for hunk in changed]))
    return files


def _hunk(hunk: Any) -> PatchHunk:
    """A unidiff hunk as a PatchHunk, with its scope (protege.patches.hunk_scope)."""
    body = [(line.line_type, line.value.rstrip("\n")) for line in hunk if line.line_type in " -+"]
    return PatchHunk(hunk.source_start, hunk.source_length, hunk.target_start, patches.hunk_scope(hunk), body)


# --------------------------------------------------------------------------------------------------
# What the teacher reads out of the task and the observations
# --------------------------------------------------------------------------------------------------


def issue_title(problem: str) -> str:
    """The issue's first non-empty line, without markdown heading marks."""
    for line in problem.splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip()
    return "the reported problem"


def search_symbol(task: TaskInstance, files: list[FilePatch]) -> str:
    """The identifier to search for: a changed function the issue names, else a backticked name of
    the issue that the fix touches, else the changed function, else the first file's stem."""
    named = [m.group(1).split(".")[-1] for m in _BACKTICKED.finditer(task.problem_statement)]
    scopes = [h.scope for f in files for h in f.hunks if h.scope]
    touched = "\n".join(text for f in files for h in f.hunks for _, text in h.lines)
    for candidates in ([n for n in named if n in scopes], [n for n in named if n in touched], scopes):
        if candidates:
            return candidates[0]
    return files[0].path.rsplit("/", 1)[-1].removesuffix(".py") if files else "def "


def repro_script(problem: str) -> str:
    """A script replaying the issue's `>>>` examples (expressions printed with repr), or ''."""
    lines: list[str] = []
    for raw in problem.splitlines():
        text = raw.strip()
        if text.startswith(">>> "):
            lines.append(text[4:])
        elif text.startswith("... ") and lines:
            lines[-1] += "\n" + text[4:]
    out = []
    for line in lines:
        try:
            ast.parse(line, mode="eval")
            out.append(f"print(repr({line}))")
        except SyntaxError:
            out.append(line)
    return "\n".join(out)


def existing_test_files(task: TaskInstance) -> list[str]:
    """Test files of FAIL_TO_PASS / PASS_TO_PASS that exist before the test patch is applied."""
    new = added_files(task.test_patch)
    names = dict.fromkeys(t.split("::", 1)[0] for t in task.FAIL_TO_PASS + task.PASS_TO_PASS)
    return [n for n in names if n.endswith(".py") and n not in new]


def pytest_counts(output: str) -> tuple[int, int]:
    """(passed, failed) from `pytest -qq` progress dots; a collection error counts as one failure."""
    dots = "".join(
        line.split("[")[0] for line in output.splitlines() if re.match(r"^[.FEsxX]+\s*(\[|$)", line)
    )
    failed = dots.count("F") + dots.count("E")
    # Exit code 5 is pytest's "no tests collected": nothing ran, so nothing failed.
    collected = "[exit code 5]" not in output
    if not dots and collected and ("error" in output.lower() or "exit code" in output):
        failed = 1
    return dots.count("."), failed


def grep_line(output: str, path: str, symbol: str) -> int:
    """Line of `symbol`'s definition in `path` according to `git grep -n` output (0 when absent)."""
    for line in output.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[0] == path and parts[1].isdigit() and _DEF.match(parts[2]):
            if _DEF.match(parts[2]).group(1) == symbol:
                return int(parts[1])
    return 0


def first_guidance(reply: str) -> str:
    """The first substantive sentence of an expert observation, shortened, for the next thought."""
    body = reply.replace("<expert_llm_guidance>", "").replace("</expert_llm_guidance>", "")
    lines = [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("(")]
    bullets = [line for line in lines if line.startswith(("-", "*", "•"))]
    for line in bullets + lines:
        text = line.lstrip("-*• ").strip()
        return (
            text
            if len(text) < GUIDANCE_QUOTE_CHARS
            else text[: GUIDANCE_QUOTE_CHARS - 3].rsplit(" ", 1)[0] + "..."
        )
    return ""


# --------------------------------------------------------------------------------------------------
# The teacher
# --------------------------------------------------------------------------------------------------


class OracleTeacher:
    """A scripted, observation-driven engineer for one task and attempt (see module docstring)."""

    name = NAME

    def __init__(
        self,
        task: TaskInstance,
        attempt: int = 0,
        model: str = "oracle",
        reasoning: bool = True,
        plan: TeacherPlan = "explore",
    ) -> None:
        self.task = task
        self.model = model
        self.reasoning = reasoning
        """False: each turn is the tool call alone, no sentence of reasoning before it."""
        self.plan = plan
        self.files = parse_patch(task.patch)
        if not self.files:
            raise ValueError(f"{task.instance_id}: the gold patch has no file to change")
        self.main = next((f for f in self.files if f.kind == "modify"), self.files[0])
        """The file the questions are about: the first one modified, else the first one."""
        self.rng = random.Random(f"{task.instance_id}:{attempt}")
        self._script: Generator[Step, str, None] | None = None
        self._calls = 0

    def generate(self, messages: list[Message], tools: list[dict[str, Any]]) -> PolicyTurn:
        """The next turn; the last message (the observation of the previous call) drives adaptation."""
        observation = messages[-1].content if messages and messages[-1].role == "tool" else ""
        try:
            if self._script is None:
                self._script = self.script()
                thought, tool, arguments = next(self._script)
            else:
                thought, tool, arguments = self._script.send(observation)
        except StopIteration:
            raise PolicyError(f"{NAME}: nothing left to do after submitting") from None
        self._calls += 1
        thought = thought if self.reasoning else ""
        call = ToolCall(id=f"call_{self._calls}", name=tool, arguments=arguments)
        prompt = sum(estimate_tokens(m.content) for m in messages)
        return PolicyTurn(
            text=thought,
            tool_calls=[call],
            input_tokens=prompt,
            output_tokens=estimate_tokens(thought + str(arguments)),
        )

    def say(self, *options: str, **values: Any) -> str:
        """One of the phrasings, filled with task details."""
        return self.rng.choice(options).format(**values)

    # the episode ---------------------------------------------------------------------------------

    def script(self) -> Generator[Step, str, None]:
        return self.ask_first() if self.plan == "ask_first" else self.explore()

    def ask_first(self) -> Generator[Step, str, None]:
        reply = yield (
            "Let me ask the expert which change fixes this.",
            "ask_expert",
            {"question": ASK_FIRST_QUESTION},
        )
        yield from self.change_all(reply)
        yield "The change is made. Submitting.", "submit", {}

    def change_all(self, reply: str) -> Generator[Step, str, None]:
        """Each file of the fix in turn; the reply guides the main one, any other is read before it is changed."""
        for file in self.files:
            yield from self.change(file, reply if file is self.main else "", fresh=file is not self.main)

    def explore(self) -> Generator[Step, str, None]:
        title = issue_title(self.task.problem_statement)
        symbol = search_symbol(self.task, self.files)
        main = self.main
        yield from self.orient(title)
        grep = yield self.search(symbol)
        yield from self.read(main, symbol, grep)
        tests = existing_test_files(self.task)
        test_command = f"{PYTEST} {' '.join(tests)}" if tests else PYTEST
        before = yield (
            self.say(
                "Before changing anything, let me run the existing tests around this code to see where things stand.",
                "Let me run the current test suite for {where} first, so I know the baseline.",
                where=", ".join(f"`{t}`" for t in tests) or "the project",
            ),
            "bash",
            {"command": test_command},
        )
        passed, failed = pytest_counts(before)
        script = repro_script(self.task.problem_statement)
        note = ""
        if script:
            replay = yield self.reproduce(script, passed, failed)
            if MISSING_INPUT in replay:
                # The example reads a file the report does not include: it cannot be replayed here.
                script, note = (
                    "",
                    "The issue's example needs an input file I don't have, so the code will have to tell. ",
                )
        reply = yield self.ask(title, symbol, main, passed, failed, note)
        yield from self.change_all(reply)
        after = yield (
            self.say(
                "Now the tests again, to confirm the change and make sure nothing else broke.",
                "Let me re-run the tests after the edit.",
            ),
            "bash",
            {"command": test_command},
        )
        passed, failed = pytest_counts(after)
        if script:
            yield (
                self.say(
                    "And the example from the issue once more.",
                    "Let me replay the issue's example to see the new behaviour.",
                ),
                "bash",
                {"command": self.repro_command(script)},
            )
        if failed:
            yield (
                self.say(
                    "{failed} test(s) still fail after my change. I should check with the expert before going further.",
                    failed=failed,
                ),
                "ask_expert",
                {
                    "question": f"After changing {main.path}, {failed} test(s) fail:\n{after[-600:]}\n"
                    "Is my change incomplete, or are these failures unrelated?"
                },
            )
        if self.rng.random() < 0.5:
            yield "Let me review the full diff before submitting.", "bash", {"command": "git diff"}
        yield (
            self.say(
                "All {passed} tests pass and the change is limited to {paths}. Submitting.",
                "The fix is in place ({paths}) and the tests are green ({passed} passed). Time to submit.",
                "Done: {paths} changed, {passed} tests passing. Submitting the patch.",
                passed=passed,
                paths=", ".join(f"`{f.path}`" for f in self.files),
            )
            if not failed
            else "I'll submit what I have.",
            "submit",
            {},
        )

    def orient(self, title: str) -> Generator[Step, str, None]:
        thought = self.say(
            "The issue reports: {title}. First, let me get an overview of the repository layout.",
            "Let me start by looking at how the repository is organised; the report is about: {title}.",
            'To fix "{title}" I first need to know where things live. Listing the repository.',
            title=title,
        )
        if self.rng.random() < 0.5:
            yield thought, "str_replace_editor", {"command": "view", "path": "."}
        else:
            yield thought, "bash", {"command": "find . -name '*.py' -not -path './.git/*' | sort"}

    def search(self, symbol: str) -> Step:
        return (
            self.say(
                "The issue mentions `{symbol}`. Let me find where it is defined and used.",
                "Searching for `{symbol}` to find the code behind the report.",
                "`{symbol}` looks like the entry point of the bug; let me grep for it.",
                symbol=symbol,
            ),
            "bash",
            {"command": f"git grep -n {shlex.quote(symbol)}"},
        )

    def read(self, file: FilePatch, symbol: str, grep: str) -> Generator[Step, str, None]:
        if file.kind != "modify":
            return
        hunk = file.hunks[0]
        found = grep_line(grep, file.path, symbol)
        where = f" (defined at line {found})" if found else ""
        start = max(1, min(hunk.old_start, found or hunk.old_start) - VIEW_MARGIN_LINES)
        end = hunk.old_start + hunk.old_count - 1
        view = yield (
            self.say(
                "`{symbol}` is in `{path}`{where}. Let me read that part of the file.",
                "The relevant code is in `{path}`{where}; opening it around there.",
                symbol=hunk.scope or symbol,
                path=file.path,
                where=where,
            ),
            "str_replace_editor",
            {"command": "view", "path": file.path, "view_range": [start, max(start, end)]},
        )
        if view.startswith(_EDIT_FAILED):
            yield (
                "That range did not work; let me view the whole file instead.",
                "str_replace_editor",
                {"command": "view", "path": file.path},
            )

    def reproduce(self, script: str, passed: int, failed: int) -> Step:
        state = f"{failed} of {passed + failed} tests fail" if failed else f"all {passed} existing tests pass"
        return (
            self.say(
                "{state}, so the suite does not catch this yet. Let me reproduce the example from the issue.",
                "Baseline: {state}. Now let me replay the issue's example to see the bug myself.",
                state=state[0].upper() + state[1:],
            ),
            "bash",
            {"command": self.repro_command(script)},
        )

    def repro_command(self, script: str) -> str:
        return f"python - <<'{REPRO_EOF}'\n{script}\n{REPRO_EOF}"

    def ask(self, title: str, symbol: str, file: FilePatch, passed: int, failed: int, note: str = "") -> Step:
        scope = file.hunks[0].scope or symbol if file.hunks else symbol
        lines = f"around line {file.hunks[0].old_start}" if file.hunks else ""
        tests = f"{failed} existing test(s) fail" if failed else f"the {passed} existing tests pass"
        more = " The change might span more than one file; which ones matter?" if len(self.files) > 1 else ""
        thought = note + self.say(
            "I've found `{scope}` in `{path}`, but I can't yet tell which part of it causes \"{title}\". "
            "Rather than guess, I'll ask the expert.",
            "I know where the problem is (`{scope}` in `{path}`) but not exactly what is wrong. Time to ask the expert.",
            scope=scope,
            path=file.path,
            title=title,
        )
        question = (
            f"The issue: {title}. I located `{scope}` in `{file.path}` ({lines}); {tests}. "
            f"What exactly is wrong in `{scope}`, and what is the right minimal fix?{more}"
        )
        return thought, "ask_expert", {"question": question}

    def change(self, file: FilePatch, guidance: str, fresh: bool) -> Generator[Step, str, None]:
        """Edit one file; `fresh`: not read yet, so read it first."""
        hint = first_guidance(guidance)
        if file.kind == "create":
            text = "\n".join(file.hunks[0].added) + "\n" if file.hunks else ""
            yield (
                self.say(
                    "The fix needs a new file, `{path}`. Creating it.",
                    "`{path}` does not exist yet; I'll create it.",
                    path=file.path,
                ),
                "str_replace_editor",
                {"command": "create", "path": file.path, "file_text": text},
            )
            return
        if file.kind == "delete":
            yield (
                f"`{file.path}` is no longer needed; removing it.",
                "bash",
                {"command": f"git rm -q {file.path}"},
            )
            return
        if fresh:
            yield from self.read(file, file.hunks[0].scope, "")
        for number, hunk in enumerate(file.hunks):
            yield from self.edit(file, hunk, hint if number == 0 else "")

    def edit(self, file: FilePatch, hunk: PatchHunk, hint: str) -> Generator[Step, str, None]:
        scope = f"`{hunk.scope}`" if hunk.scope else "the module"
        what = (
            f"{len(hunk.removed)} line(s) replaced by {len(hunk.added)}"
            if hunk.removed
            else f"{len(hunk.added)} line(s) added"
        )
        if hint:
            thought = self.say(
                "The expert's point: {hint} That matches what I read in {scope}. Making the edit ({what}).",
                'Following the guidance ("{hint}"), I\'ll change {scope} in `{path}`.',
                hint=hint,
                scope=scope,
                what=what,
                path=file.path,
            )
        else:
            thought = self.say(
                "Next, the change in {scope} of `{path}` ({what}).",
                "Now {scope} in `{path}` needs the corresponding update.",
                scope=scope,
                what=what,
                path=file.path,
            )
        # The smallest snippet first, from the first changed line to the last (the shortest text to copy, and
        # usually unique), widened on failure to one line of context, then to the whole hunk.
        candidates = [(hunk.side(" -", 0), hunk.side(" +", 0))] if hunk.removed else []
        candidates += [(hunk.side(" -", 1), hunk.side(" +", 1)), (hunk.side(" -"), hunk.side(" +"))]
        for old, new in dict.fromkeys(candidates):
            if not old.strip():
                line = hunk.new_start - 1 if hunk.old_count == 0 else hunk.new_start
                yield (
                    thought,
                    "str_replace_editor",
                    {
                        "command": "insert",
                        "path": file.path,
                        "insert_line": line,
                        "new_str": "\n".join(hunk.added),
                    },
                )
                return
            result = yield (
                thought,
                "str_replace_editor",
                {"command": "str_replace", "path": file.path, "old_str": old, "new_str": new},
            )
            if not result.startswith(_EDIT_FAILED):
                return
            view = yield (
                self.say(
                    "The replacement did not apply; the text must differ from what I assumed. Let me look again.",
                    "That edit failed. Let me re-read the exact lines before retrying.",
                ),
                "str_replace_editor",
                {
                    "command": "view",
                    "path": file.path,
                    "view_range": [hunk.new_start, hunk.new_start + hunk.old_count - 1],
                },
            )
            if view.startswith(_EDIT_FAILED):
                yield (
                    "Let me see the whole file.",
                    "str_replace_editor",
                    {"command": "view", "path": file.path},
                )
            thought = "I'll retry with a snippet that takes in more of the lines around the change."
