"""Renamed copies of SFT trajectories (protege.sft_augment): the episode's own names replaced consistently in
every message and tool-call argument, the scaffold left as it was, deterministic."""

from __future__ import annotations

import re

from protege.sft_augment import apply_renames, episode_names, with_renamed_copies, word_pieces

SYSTEM = (
    "You are a software engineer fixing an issue in a repository checked out at /testbed. Submit your fix."
)
TOOLS = [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}]
ISSUE = "<issue>\n`tests/test_weeks.py::test_week_end` fails: week_end(wednesday) is a Tuesday.\n</issue>"
VIEW = (
    "Here's the result of running `cat -n` on /testbed/daterange/weeks.py:\n"
    "     1\tfrom datetime import date, timedelta\n"
    "    10\tdef week_start(day: date) -> date:\n"
    "    11\t    return day - timedelta(days=day.isoweekday() - 1)\n"
    "    15\tdef week_end(day: date) -> date:\n"
    "    16\t    return week_start(day) + timedelta(days=1 - DAYS_PER_WEEK)\n"
    "    20\tclass WeekRange:\n"
)
GUIDANCE = "<expert_llm_guidance>\nIn `daterange/weeks.py`, in `week_end`: swap the operands.\n</expert_llm_guidance>"


def call(name: str, **arguments) -> dict:
    return {
        "role": "assistant",
        "provenance": "policy",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


def tool(content: str) -> dict:
    return {"role": "tool", "provenance": "environment", "content": content}


def episode(rid: str = "demo__daterange-1#0") -> dict:
    return {
        "id": rid,
        "tools": TOOLS,
        "messages": [
            {"role": "system", "provenance": "system", "content": SYSTEM},
            {"role": "user", "provenance": "task", "content": ISSUE},
            call("bash", command="git grep -n week_end"),
            tool("daterange/weeks.py:15:def week_end(day: date) -> date:\n"),
            call("str_replace_editor", command="view", path="daterange/weeks.py", view_range=[10, 20]),
            tool(VIEW),
            call("ask_expert", question="What is wrong in `week_end`?"),
            {"role": "tool", "provenance": "expert", "content": GUIDANCE},
            call(
                "str_replace_editor",
                command="str_replace",
                path="daterange/weeks.py",
                old_str="days=1 - DAYS_PER_WEEK",
                new_str="days=DAYS_PER_WEEK - 1",
            ),
            tool("The file /testbed/daterange/weeks.py has been edited. Oranges, lemons and pears."),
            call("submit"),
        ],
    }


def texts(record: dict) -> str:
    out = []
    for message in record["messages"]:
        out.append(message.get("content") or "")
        for c in message.get("tool_calls") or []:
            out += [str(v) for v in c["function"]["arguments"].values()]
    return "\n".join(out)


def test_the_names_an_episode_is_about():
    names = episode_names(episode())
    # path parts, the grepped symbol, defs and classes it was shown; longest first
    assert names == ["week_start", "WeekRange", "daterange", "week_end", "weeks"]
    # never Python's words, the scaffold's paths or words of the system prompt
    assert not {"date", "timedelta", "testbed", "tests", "py", "repository"} & set(names)


def test_a_copy_renames_every_occurrence_consistently_and_whole_word():
    record = episode()
    [original, renamed] = with_renamed_copies([record], 1, seed=0)
    assert original is record and renamed["id"] == "demo__daterange-1#0~r1"
    body = texts(renamed)
    for name in episode_names(record):
        assert not re.search(rf"(?<![A-Za-z0-9]){name}(?![A-Za-z0-9])", body), name
    # One fresh name everywhere the original stood: the grep, its output, the view, the guidance, the edit.
    grep = renamed["messages"][2]["tool_calls"][0]["function"]["arguments"]["command"]
    symbol = grep.rsplit(" ", 1)[1]
    path = renamed["messages"][4]["tool_calls"][0]["function"]["arguments"]["path"]
    assert f"{path}:15:def {symbol}(day: date)" in renamed["messages"][3]["content"]
    assert f"/testbed/{path}:" in renamed["messages"][5]["content"]
    assert f"In `{path}`, in `{symbol}`" in renamed["messages"][7]["content"]
    test_name = f"::test_{symbol.split('_', 1)[0]}"  # `test_` kept, the rest renamed
    assert test_name in renamed["messages"][1]["content"]
    assert renamed["messages"][8]["tool_calls"][0]["function"]["arguments"]["path"] == path
    # Shapes kept: snake_case stays snake_case with as many parts, CamelCase stays CamelCase.
    assert re.fullmatch(r"[a-z]+_[a-z]+", symbol)
    assert re.search(r"\n    20\tclass (?:[A-Z][a-z]+){2}:", renamed["messages"][5]["content"])
    # Code that is not the episode's names is left as it was.
    assert "days=DAYS_PER_WEEK - 1" in body and "from datetime import date, timedelta" in body


def test_the_scaffold_and_the_original_are_untouched():
    record = episode()
    before = texts(record)
    renamed = apply_renames(record, {"week_end": "lemon_pear", "testbed": "nope"}, "~r1")
    assert texts(record) == before  # a deep copy: the original record is not changed
    assert renamed["messages"][0]["content"] == SYSTEM and renamed["tools"] == TOOLS
    assert "lemon_pear" in texts(renamed) and "week_end" not in texts(renamed)


def test_fresh_names_are_word_pieces_of_the_observations_and_no_word_of_the_episode():
    record = episode()
    pieces = set(word_pieces([record]))
    assert (
        {"lemons", "pears", "result"} <= pieces
        and "oranges" not in pieces
        and "ubmitted" not in word_pieces([{"messages": [tool("Submitted a patch")]}])
    )
    copies = with_renamed_copies([record], 5, seed=0)[1:]
    words = set(re.findall(r"[A-Za-z_]\w*", texts(record)))
    for copy in copies:
        fresh = set(re.findall(r"[A-Za-z_]\w*", texts(copy))) - words
        assert fresh, copy["id"]
        for name in fresh:
            assert {p.lower() for p in re.findall(r"[A-Z][a-z]+|[a-z]+", name)} <= pieces | {"test"}, name


def test_copies_are_deterministic_and_differ_by_seed_and_copy():
    record = episode()
    first = with_renamed_copies([record], 3, seed=7)
    assert first == with_renamed_copies([record], 3, seed=7)
    bodies = [texts(r) for r in first]
    assert len(set(bodies)) == 4  # the original and three different copies
    assert texts(with_renamed_copies([record], 1, seed=8)[1]) != bodies[1]
    assert with_renamed_copies([record], 0, seed=7) == [record]
