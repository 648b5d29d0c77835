"""The local (bubblewrap) sandbox on a real git repository with history past base_commit."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

import protege
from protege.agent.protocols import SandboxError
from protege.agent.sandbox import LocalSandbox, OutputCap, open_sandbox
from protege.agent.sandbox import local as sandbox_module
from protege.config import SandboxConfig
from protege.tasks import TaskInstance

GOLD_LINE = "return a + b  # GOLD-FIX-7f3a9c"
TEST_LINE = "assert add(2, 2) == 4  # TEST-PATCH-51be02"
LATER_LINE = "LATER-MAIN-COMMIT-c0ffee"
BWRAP = pytest.mark.skipif(
    subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True).returncode
    != 0
    if Path("/usr/bin/bwrap").exists()
    else True,
    reason="bubblewrap with user namespaces is not available on this host",
)


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class Demo:
    repos_dir: Path
    task: TaskInstance
    base: str
    fix_commit: str
    fix_blob: str
    later_commit: str
    base_blob: str


def make_repo(src: Path) -> dict[str, str]:
    """main: c1 (tag v0.1) -> c2 = base -> later; branch fix from base with the gold fix (tag v1.0);
    a remote-tracking ref and a stash past base; everything packed."""
    src.mkdir(parents=True)
    git(src, "init", "-q", "-b", "main")
    (src / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    git(src, "add", "-A")
    git(src, "commit", "-qm", "c1")
    git(src, "tag", "v0.1")
    (src / "README.md").write_text("calc\n")
    git(src, "add", "-A")
    git(src, "commit", "-qm", "c2")
    base = git(src, "rev-parse", "HEAD")
    git(src, "checkout", "-qb", "fix")
    (src / "calc.py").write_text(f"def add(a, b):\n    {GOLD_LINE}\n")
    git(src, "commit", "-qam", "fix add")
    fix = git(src, "rev-parse", "HEAD")
    git(src, "tag", "-a", "v1.0", "-m", "release with the fix")
    git(src, "update-ref", "refs/remotes/origin/fix", fix)
    git(src, "checkout", "-q", "main")
    (src / "later.txt").write_text(LATER_LINE + "\n")
    git(src, "add", "-A")
    git(src, "commit", "-qm", "later")
    later = git(src, "rev-parse", "HEAD")
    (src / "README.md").write_text("stashed work\n")
    git(src, "stash", "-q")
    git(src, "gc", "-q")
    return {"base": base, "fix": fix, "later": later}


def make_task(base: str) -> TaskInstance:
    patch = f"diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    {GOLD_LINE}\n"
    test_patch = f"diff --git a/test_calc.py b/test_calc.py\n--- /dev/null\n+++ b/test_calc.py\n@@ -0,0 +1 @@\n+{TEST_LINE}\n"
    return TaskInstance(
        instance_id="owner__calc-1",
        repo="owner/calc",
        base_commit=base[:10],
        problem_statement="add() subtracts",
        patch=patch,
        test_patch=test_patch,
        FAIL_TO_PASS=["test_calc.py::test_add"],
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    repos = tmp_path_factory.mktemp("repos")
    shas = make_repo(repos / "owner__calc")
    src = repos / "owner__calc"
    return Demo(
        repos_dir=repos,
        task=make_task(shas["base"]),
        base=shas["base"],
        fix_commit=shas["fix"],
        fix_blob=git(src, "rev-parse", f"{shas['fix']}:calc.py"),
        later_commit=shas["later"],
        base_blob=git(src, "rev-parse", f"{shas['base']}:calc.py"),
    )


@pytest.fixture(scope="module")
def shared(demo: Demo):
    """One sandbox for the read-only checks (each test that edits the tree opens its own)."""
    with open_sandbox(SandboxConfig(command_timeout_s=30), demo.task, demo.repos_dir) as sandbox:
        yield sandbox


@pytest.mark.parametrize(
    ("limit", "pieces", "expected", "truncated"),
    [
        (None, [b"abc", b"def"], "abcdef", False),
        (10, [b"0123456789"], "0123456789", False),
        (
            10,
            [b"01234", b"56789", b"abcdefghij"],
            "01234\n[... output truncated: 10 of 20 bytes cut ...]\nfghij",
            True,
        ),
        (10, [b"x"] * 25, "xxxxx\n[... output truncated: 15 of 25 bytes cut ...]\nxxxxx", True),
    ],
)
def test_output_cap_keeps_head_and_tail_and_says_how_much_was_cut(limit, pieces, expected, truncated):
    cap = OutputCap(limit)
    for piece in pieces:
        cap.feed(piece)
    assert cap.text() == (expected, truncated)


@BWRAP
def test_history_holds_nothing_after_base_commit(shared: LocalSandbox, demo: Demo):
    assert shared.workdir == "/testbed"
    assert shared.base_commit == demo.base
    first = git(demo.repos_dir / "owner__calc", "rev-parse", "v0.1")
    assert sorted(shared.run("git log --all --format=%H").output.split()) == sorted([demo.base, first])
    refs = shared.run("git for-each-ref --format='%(refname)'").output.split()
    assert refs == ["refs/tags/v0.1"]  # the ancestor tag stays; remotes, fix branch, v1.0, stash do not
    assert shared.run("git remote").output == ""
    assert shared.run("git reflog --all").output == ""
    assert shared.run("ls .git/logs .git/FETCH_HEAD").exit_code != 0
    for later in (demo.fix_commit, demo.fix_blob, demo.later_commit):
        assert shared.run(f"git cat-file -e {later}").exit_code != 0, later
    assert shared.run(f"git cat-file -e {demo.base_blob}").exit_code == 0


@BWRAP
def test_gold_and_test_patch_text_is_nowhere_the_sandbox_can_read(shared: LocalSandbox, demo: Demo):
    visible = "/testbed /tmp $HOME"  # the writable places; the read-only binds are system and Python dirs
    # grep works: it finds the repo's own line, and elsewhere only files of the read-only Python
    # installation, which is bound at its host path and may itself live under /tmp or $HOME.
    python_dirs = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix)]
    hits = shared.run(f"grep -rlsF 'return a - b' {visible}").output.split()
    assert "/testbed/calc.py" in hits
    assert [
        h for h in hits if h != "/testbed/calc.py" and not any(Path(h).is_relative_to(p) for p in python_dirs)
    ] == []
    for secret in (GOLD_LINE, TEST_LINE, LATER_LINE):
        # -s: files the capability-less root cannot read (e.g. /etc/polkit-1) are no leak either
        result = shared.run(f"grep -rlsF '{secret}' {visible} /etc")
        assert result.exit_code in (1, 2) and result.output == "", result.output
    project_src = Path(protege.__file__).resolve().parent
    for hidden in (demo.repos_dir, project_src, project_src.parent, Path(__file__).parent):
        assert shared.run(f"test -e {hidden}").exit_code == 1, hidden
    home = Path.home()  # visible only as far as the Python installation lives under it (pyenv)
    needed = {p.relative_to(home).parts[0] for p in python_dirs if p.is_relative_to(home)}
    assert set(shared.run(f"ls -A {home}").output.split()) <= needed
    for (
        package_dir
    ) in protege.__path__:  # editable or installed (masked): its files, demo data included, are not there
        assert shared.run(f"test -e {package_dir}/__init__.py").exit_code == 1, package_dir


@BWRAP
def test_python_and_pytest_run_inside(shared: LocalSandbox):
    result = shared.run("python -m pytest --version && python -c 'import sys; print(sys.prefix)'")
    assert result.exit_code == 0, result.output
    assert result.output.split()[-1] == sys.prefix


@BWRAP
def test_network_is_unreachable_even_a_server_on_host_loopback(shared: LocalSandbox):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # reachable from the host
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)"
    for host, target_port in (("127.0.0.1", port), ("1.1.1.1", 53)):
        result = shared.run(f"python -c '{probe}' {host} {target_port}")
        assert result.exit_code == 1 and ("Error" in result.output), result.output
    assert shared.run("getent hosts example.com").exit_code != 0
    server.close()


@BWRAP
def test_writes_outside_the_work_tree_fail(shared: LocalSandbox):
    for target in ("/etc/x", "/usr/x", f"{sys.prefix}/x", "/x"):
        result = shared.run(f"touch {target}")
        assert result.exit_code != 0 and ("Read-only" in result.output or "Permission" in result.output), (
            target
        )
    assert shared.run("touch /tmp/x $HOME/x /testbed/x && rm /testbed/x").exit_code == 0


@BWRAP
def test_a_command_past_its_timeout_is_killed_with_its_group_and_the_sandbox_goes_on(shared: LocalSandbox):
    result = shared.run("sleep 1000.25 & sleep 1000.5", timeout=1)
    assert result.timed_out and result.exit_code != 0
    assert result.duration_s < 100  # nowhere near the 1000 s the command asked for
    leftovers = [
        p for p in Path("/proc").glob("[0-9]*") if b"1000.25" in _cmdline(p) or b"1000.5" in _cmdline(p)
    ]
    assert leftovers == [], [(_cmdline(p), (p / "stat").read_text()) for p in leftovers]
    after = shared.run("echo still here")
    assert (after.output, after.exit_code, after.timed_out) == ("still here\n", 0, False)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


@BWRAP
def test_ten_megabytes_of_output_are_truncated_with_a_marker(demo: Demo):
    cfg = SandboxConfig(output_limit_chars=10_000)
    with open_sandbox(cfg, demo.task, demo.repos_dir) as sandbox:
        result = sandbox.run("head -c 10000000 /dev/zero | tr '\\0' x; echo; echo END")
    assert result.truncated and result.exit_code == 0
    assert "[... output truncated: 9990005 of 10000005 bytes cut ...]" in result.output
    assert result.output.startswith("x" * 5000) and result.output.endswith("x\nEND\n")
    assert len(result.output) < 10_100


@BWRAP
def test_memory_limit_applies(demo: Demo):
    with open_sandbox(SandboxConfig(memory_limit_mb=256), demo.task, demo.repos_dir) as sandbox:
        result = sandbox.run("python -c 'x = bytearray(1024 ** 3)'")
    assert result.exit_code == 1 and "MemoryError" in result.output


@BWRAP
def test_diff_has_edited_and_new_files_and_leaves_the_index_alone(demo: Demo):
    with open_sandbox(SandboxConfig(), demo.task, demo.repos_dir) as sandbox:
        sandbox.write_file("calc.py", "def add(a, b):\n    return b + a\n")
        sandbox.write_file("pkg/new_module.py", "VALUE = 1\n")
        sandbox.run("python -c 'import calc'")  # byte-code caches must not enter the patch
        patch = sandbox.diff()
        status = sandbox.run("git status --porcelain").output
    assert (
        "diff --git a/calc.py b/calc.py" in patch
        and "+    return b + a" in patch
        and "-    return a - b" in patch
    )
    assert "diff --git a/pkg/new_module.py b/pkg/new_module.py" in patch and "+VALUE = 1" in patch
    assert "__pycache__" not in patch and ".pyc" not in patch
    assert "?? pkg/" in status  # still untracked: the diff staged into a throwaway index


@BWRAP
def test_read_and_write_files(demo: Demo):
    with open_sandbox(SandboxConfig(), demo.task, demo.repos_dir) as sandbox:
        assert sandbox.read_file("calc.py") == "def add(a, b):\n    return a - b\n"
        odd = "caf\u00e9 \udcff raw byte\n"  # a non-UTF-8 byte survives the round trip
        sandbox.write_file("/testbed/deep/dir/f.txt", odd)
        assert sandbox.read_file("deep/dir/f.txt") == odd
        assert sandbox.run("cat deep/dir/f.txt | wc -c").output.strip() == str(
            len(odd.encode(errors="surrogateescape"))
        )
        with pytest.raises(FileNotFoundError, match="nope.py"):
            sandbox.read_file("nope.py")
        with pytest.raises(IsADirectoryError, match="deep"):
            sandbox.read_file("deep")
        with pytest.raises(OSError, match="/etc/evil"):
            sandbox.write_file("/etc/evil", "x")


def test_missing_bubblewrap_raises_unless_opted_in(demo: Demo):
    with pytest.raises(
        SandboxError, match="bubblewrap not found at '/nonexistent/bwrap'.*allow_unsandboxed=true"
    ):
        LocalSandbox(SandboxConfig(bwrap_path="/nonexistent/bwrap"), demo.task, demo.repos_dir)


def test_unsandboxed_is_an_explicit_opt_in_and_still_times_out_and_cleans_up(demo: Demo):
    cfg = SandboxConfig(bwrap_path="/nonexistent/bwrap", allow_unsandboxed=True)
    sandbox = LocalSandbox(cfg, demo.task, demo.repos_dir)
    tree = Path(sandbox.workdir)
    assert tree.is_dir() and tree != Path("/testbed")
    assert demo.base in sandbox.run("git log --all --format=%H").output.split()
    assert demo.fix_commit not in sandbox.run("git log --all --format=%H").output
    assert sandbox.run("pwd").output.strip() == str(tree)
    assert sandbox.run("sleep 1000.75", timeout=1).timed_out
    assert sandbox.run("echo ok").output == "ok\n"
    sandbox.write_file("new.txt", "n\n")
    assert "+n" in sandbox.diff()
    sandbox.close()
    assert not tree.exists()
    sandbox.close()  # idempotent


def test_dropped_sandbox_removes_its_tree(demo: Demo):
    sandbox = LocalSandbox(SandboxConfig(allow_unsandboxed=True), demo.task, demo.repos_dir)
    tree = Path(sandbox.workdir)
    del sandbox
    gc.collect()
    assert not tree.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base_commit": "deadbeefdeadbeef"}, "owner__calc-1: base_commit deadbeefdeadbeef is not in"),
        ({"repo": "owner/missing"}, "owner__calc-1: source repository .*owner__missing does not exist"),
    ],
)
def test_bad_task_raises_naming_the_instance(demo: Demo, change: dict[str, str], message: str):
    task = demo.task.model_copy(update=change)
    with pytest.raises(SandboxError, match=message):
        LocalSandbox(SandboxConfig(allow_unsandboxed=True), task, demo.repos_dir)


@pytest.mark.parametrize("backend", ["docker", "kubernetes"])
def test_open_sandbox_dispatches_container_backends(demo: Demo, backend: str):
    # The bundled task has no image, which the container backends refuse before any client call.
    with pytest.raises(SandboxError, match=f"task owner__calc-1 has no `image`; the {backend} sandbox"):
        open_sandbox(SandboxConfig(backend=backend), demo.task, demo.repos_dir)


@BWRAP
def test_protected_paths_inside_a_mounted_dir_are_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # As if the Python installation held the source repositories (or a non-editable protege with its demo data).
    site = tmp_path / "site"
    shas = make_repo(site / "repos" / "owner__calc")
    (site / "visible.txt").write_text("ok\n")
    python_dirs = sandbox_module._python_dirs
    monkeypatch.setattr(sandbox_module, "_python_dirs", lambda: [*python_dirs(), str(site)])
    with open_sandbox(SandboxConfig(), make_task(shas["base"]), site / "repos") as sandbox:
        assert sandbox.run(f"cat {site}/visible.txt").output == "ok\n"  # the directory is mounted ...
        assert sandbox.run(f"ls -A {site}/repos").output == ""  # ... but the repositories are masked
