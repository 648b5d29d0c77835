"""The local sandbox's persistent shell: what persists between commands, timeouts, caps, exit codes,
commands that try to wedge it, a killed server, and one round trip per editor operation."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from protege.agent.editor import Editor
from protege.agent.protocols import SandboxError
from protege.agent.sandbox import LocalSandbox, open_sandbox
from protege.agent.sandbox import local as sandbox_module
from protege.agent.sandbox.shell import SERVER_SOURCE, server_command
from protege.agent.sandbox.shell_server import apply_edit, parse_exports
from protege.config import SandboxConfig
from protege.tasks import TaskInstance
from tests.agent.test_sandbox import BWRAP, _cmdline, make_repo, make_task


@dataclass
class Demo:
    repos_dir: Path
    task: TaskInstance


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    repos = tmp_path_factory.mktemp("repos")
    return Demo(repos, make_task(make_repo(repos / "owner__calc")["base"]))


BOTH = pytest.mark.parametrize("unsandboxed", [False, True], ids=["bwrap", "unsandboxed"])


@pytest.fixture(scope="module")
def shell(demo: Demo):
    with open_sandbox(SandboxConfig(command_timeout_s=30), demo.task, demo.repos_dir) as sandbox:
        yield sandbox


def _open(demo: Demo, unsandboxed: bool, **cfg: object) -> LocalSandbox:
    if not unsandboxed and BWRAP.args[0]:
        pytest.skip(BWRAP.kwargs["reason"])
    return LocalSandbox(SandboxConfig(allow_unsandboxed=unsandboxed, **cfg), demo.task, demo.repos_dir)


def _leftovers(marker: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").glob("[0-9]*") if marker.encode() in _cmdline(p)]


@BOTH
def test_cd_and_export_persist_and_shell_variables_do_not(demo: Demo, unsandboxed: bool):
    with _open(demo, unsandboxed) as sandbox:
        home = sandbox.workdir
        odd = 'two words\n"quoted" $dollar `tick` \\ \x01 caf\u00e9'
        script = f"mkdir -p sub/dir && cd sub/dir && export ODD=$'{_ansi_c(odd)}' PLAIN=1 && LOCAL=2"
        assert sandbox.run(script).exit_code == 0
        after = sandbox.run('pwd; printf "%s|" "$ODD" "$PLAIN" "$LOCAL"')
        assert after.output == f"{home}/sub/dir\n{odd}|1||"
        assert sandbox.run("cd -").output == f"{home}\n"  # OLDPWD persisted too
        assert sandbox.run("unset PLAIN; cd sub").exit_code == 0
        assert sandbox.run('pwd; echo "[$PLAIN]"').output == f"{home}/sub\n[]\n"
        # a directory removed under the session: the next command starts in the work tree
        sandbox.run("cd dir && rm -rf ../dir")
        assert sandbox.run("pwd").output == f"{home}\n"
        # the files and diff the host reads do not depend on the agent's directory or environment
        sandbox.run("cd /tmp && export GIT_DIR=/nowhere")
        assert sandbox.read_file("calc.py").startswith("def add")
        assert "diff --git" not in sandbox.diff()


def _ansi_c(text: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in "\x01\n'\\" else c for c in text)


@BWRAP
def test_a_timed_out_command_is_killed_with_its_group_and_the_session_keeps_its_state(shell: LocalSandbox):
    shell.run("cd /tmp && export KEPT=yes")
    result = shell.run("cd / && export LOST=1 && (sleep 1000.61 &) && sleep 1000.62", timeout=1)
    assert result.timed_out and result.exit_code == -9 and result.duration_s < 30
    assert _leftovers("1000.61") == [] and _leftovers("1000.62") == []
    after = shell.run('pwd; echo "$KEPT[$LOST]"')  # the killed command's changes are not adopted
    assert (after.output, after.exit_code, after.timed_out) == ("/tmp\nyes[]\n", 0, False)
    shell.run(f"cd {shell.workdir}")


@BWRAP
@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("true", 0),
        ("false", 1),
        ("exit 3", 3),
        ("no-such-command-xyz", 127),
        ("sh -c 'kill -9 $$'", 137),  # a child killed by a signal, as bash reports it
        ("set -e; false; echo not here", 1),
    ],
)
def test_exit_codes(shell: LocalSandbox, command: str, code: int):
    result = shell.run(command)
    assert (result.exit_code, result.timed_out) == (code, False), result.output
    assert "not here" not in result.output


@BWRAP
def test_output_is_capped_and_the_shell_goes_on(demo: Demo):
    cfg = SandboxConfig(output_limit_chars=1000)
    with open_sandbox(cfg, demo.task, demo.repos_dir) as sandbox:
        result = sandbox.run("head -c 3000000 /dev/zero | tr '\\0' y; echo END >&2")
        assert result.truncated and result.exit_code == 0
        assert "[... output truncated: 2999004 of 3000004 bytes cut ...]" in result.output
        assert result.output.endswith("yEND\n")
        assert sandbox.run("echo next").output == "next\n"


@BWRAP
def test_closed_stdout_and_daemons_do_not_wedge_the_shell(shell: LocalSandbox):
    started = time.monotonic()
    closed = shell.run("exec >&- 2>&-; sleep 0.2; echo lost", timeout=20)
    daemon = shell.run(
        "setsid sleep 1000.71 & nohup sleep 1000.72 & (sleep 1000.73 &); echo started", timeout=20
    )
    assert time.monotonic() - started < 10  # not the 20 s timeout: nothing waited on the daemons' pipes
    assert (closed.exit_code, closed.timed_out, daemon.output, daemon.timed_out) == (
        1,
        False,
        "started\n",
        False,
    )
    assert [_leftovers(f"1000.7{i}") for i in (1, 2, 3)] == [[], [], []]
    assert shell.run("echo fine").output == "fine\n"


@BWRAP
def test_a_killed_shell_is_restarted_in_the_work_tree_with_the_initial_environment(demo: Demo):
    with open_sandbox(SandboxConfig(), demo.task, demo.repos_dir) as sandbox:
        sandbox.run("cd /tmp && export GONE=1")
        killed = sandbox.run("kill -9 $PPID; sleep 5")
        assert killed.exit_code == -9 and "the next command starts a fresh one in /testbed" in killed.output
        assert sandbox.run('pwd; echo "[$GONE]"').output == "/testbed\n[]\n"
        assert sandbox.read_file("calc.py").startswith("def add")


@BOTH
def test_every_editor_operation_is_one_round_trip(demo: Demo, unsandboxed: bool):
    with _open(demo, unsandboxed) as sandbox:
        editor = Editor(sandbox)
        shell = sandbox._held.shell
        calls = [
            {"command": "view", "path": "calc.py"},
            {"command": "view", "path": "."},
            {"command": "create", "path": "new/mod.py", "file_text": "A = 1\n"},
            {"command": "create", "path": "calc.py", "file_text": "x"},  # refused: exists
            {"command": "str_replace", "path": "calc.py", "old_str": "a - b", "new_str": "a + b"},
            {"command": "str_replace", "path": "calc.py", "old_str": "absent", "new_str": "x"},
            {"command": "insert", "path": "calc.py", "insert_line": 0, "new_str": "# top"},
            {"command": "undo_edit", "path": "calc.py"},
            {"command": "undo_edit", "path": "new/mod.py"},
        ]
        for call in calls:
            before = shell.requests
            try:
                editor.run(dict(call))
            except Exception as err:  # the observations are tested in test_tools; here only the count
                assert "No replacement" in str(err) or "already exists" in str(err), err
            assert shell.requests - before == 1, call
        assert sandbox.read_file("calc.py") == "def add(a, b):\n    return a + b\n"
        assert sandbox.read_path("new") == ("dir", "")


def test_parse_exports_reads_what_bash_exported():
    values = {
        "A": 'a\nb "q" $x `y` \\z',
        "B": "\x01\x02\x1b\x7f tab\t caf\u00e9",
        "C": "",
        "D": "it's",
        "E": "trailing\\",
        "F": "x\n",
    }
    env = {name.encode(): value.encode() for name, value in values.items()}
    env |= {b"G": b"\xff\xfe raw", b"PATH": b"/usr/bin:/bin", b"LANG": b"C.UTF-8"}
    for posix in ("", "set -o posix; "):
        exported = subprocess.run(["bash", "-c", posix + "export -p"], env=env, capture_output=True).stdout
        parsed = parse_exports(exported)
        assert {name: parsed[name] for name in env} == env


@pytest.mark.parametrize(
    ("text", "old", "new", "line", "expected"),
    [
        ("a b a", "b", "c", None, "a c a"),
        ("a b a", "a", "c", None, None),  # twice: not unique
        ("a b a", "z", "c", None, None),
        ("a b a", "", "c", None, None),
        ("1\n2\n", None, "x", 1, "1\nx\n2\n"),
        ("1\n2", None, "x", 2, "1\n2\nx"),
        ("1\n2\n", None, "x", 3, None),
        ("", None, "x", 0, "x\n"),
    ],
)
def test_apply_edit(text: str, old: str | None, new: str, line: int | None, expected: str | None):
    assert apply_edit(text, old, new, line) == expected


@BWRAP
def test_closing_from_another_thread_ends_a_running_command_and_later_ones_fail(demo: Demo):
    """A rollout's timeout closes its sandbox from the scheduler's thread to stop the episode's thread."""
    sandbox = open_sandbox(SandboxConfig(), demo.task, demo.repos_dir)
    closer = threading.Timer(1.0, sandbox.close)
    closer.start()
    started = time.monotonic()
    result = sandbox.run("sleep 1000.81", timeout=600)
    assert time.monotonic() - started < 60 and result.exit_code != 0
    closer.join()
    with pytest.raises(SandboxError):
        sandbox.run("echo after")
    assert _leftovers("1000.81") == []


@BWRAP
def test_a_shell_that_cannot_start_is_a_sandbox_error_at_first_use(
    demo: Demo, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sandbox_module, "_server_python", lambda: "/nonexistent/python3")
    with open_sandbox(SandboxConfig(), demo.task, demo.repos_dir) as sandbox:  # returns before the boot
        with pytest.raises(SandboxError, match="could not start a sandbox.*nonexistent/python3"):
            sandbox.run("true")


@BWRAP
def test_the_server_also_runs_from_source_on_another_interpreter(demo: Demo, monkeypatch: pytest.MonkeyPatch):
    """Compiled code goes only to this very interpreter; any other (here the system's) gets the source."""
    other = "/usr/bin/python3"
    if not Path(other).exists() or Path(other).resolve() == Path(sys.executable).resolve():
        pytest.skip("no second interpreter")
    assert server_command(other)[-1] == SERVER_SOURCE
    assert server_command(os.path.realpath(sys.executable))[-2] != SERVER_SOURCE
    monkeypatch.setattr(sandbox_module, "_server_python", lambda: other)
    with open_sandbox(SandboxConfig(), demo.task, demo.repos_dir) as sandbox:
        assert sandbox.run("cd /tmp && export V=1").exit_code == 0
        assert sandbox.run('pwd; echo "$V"').output == "/tmp\n1\n"


@BOTH
def test_a_command_writing_into_the_servers_pipe_cannot_crash_the_host(demo: Demo, unsandboxed: bool):
    """As root, the sandbox's uid cannot open the host-made pipe at all; a process of the server's own
    user can, and a garbled answer then counts as a killed shell."""
    with _open(demo, unsandboxed) as sandbox:
        garbled = sandbox.run("printf 'R\\0\\0\\0\\5hello' > /proc/$PPID/fd/1; sleep 1")
        refused = "Permission denied" in garbled.output and garbled.exit_code == 0
        restarted = garbled.exit_code == -9 and "the next command starts a fresh one" in garbled.output
        assert restarted or (refused and not unsandboxed), garbled
        assert sandbox.run("echo fine").output == "fine\n"
