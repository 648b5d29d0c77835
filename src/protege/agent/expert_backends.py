"""Expert backends: how one compact expert request becomes a reply (METHOD §2).

Three backends, picked by `ExpertConfig.backend` through the literal dict `BACKENDS`:

- `anthropic`: the Messages API through the official SDK (its own retries with backoff on 408/409/
  429/5xx incl. 529 overloaded, `timeout_s`, `base_url` override).
- `openai`: any OpenAI-compatible `/chat/completions` server (an open model behind vLLM) through the
  openai SDK (the same retries, timeouts and capped `retry-after` as the anthropic one).
- `oracle`: an offline stand-in that reads the task's gold patch and describes in words which
  file(s) and function(s) must change and how, never pasting patch lines. It exists so the whole
  pipeline runs without an API key; it is only constructed when `allow_oracle` is set and is always
  recorded as backend `oracle`.

A backend never meters, caches or enforces limits (that is `protege.agent.expert`); it turns API
trouble into `ExpertBackendError` with a readable message, marked `transient` when the same request may
succeed later: transport errors and timeouts, overload and rate limits (408/409/429/5xx incl. 529) after
the retries, and a 200 reply that is not the JSON the API promises (retried like an overload first).
A `retry-after` header is obeyed up to `expert.retry_after_max_s`, never longer.
"""

from __future__ import annotations

import keyword
import os
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Protocol

from protege import patches
from protege.agent.qwen_format import tool_call_json
from protege.config import ExpertConfig
from protege.tasks import TaskInstance

# Rough characters per token, used where no tokenizer exists (oracle metering, budget reservations).
CHARS_PER_TOKEN = 4
# HTTP statuses worth retrying (the same set the anthropic SDK retries).
RETRYABLE_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# How much of an error body to quote in an error message.
ERROR_BODY_CHARS = 300
# The oracle names at most this many identifiers per change (more reads as a paste).
ORACLE_MAX_NAMES = 6
# For a one-line change, the oracle names the changed piece of code when each side is at most this long (a
# strong expert points at `<` versus `<=`; a longer piece would read as a paste of the line).
ORACLE_MAX_PIECE_CHARS = 24


class ExpertBackendError(RuntimeError):
    """The backend could not produce a reply (timeout, overload after retries, auth, bad response).

    `transient`: the same request may succeed later (transport, overload, rate limit, malformed reply);
    False for what a retry cannot fix (bad request, authentication)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class MalformedReply(ValueError):
    """A 200 reply whose body is not the JSON the API promises (retried, then transient)."""


def retry_malformed(cfg: ExpertConfig, call: Any) -> Any:
    """`call()`, again (up to `expert.max_retries` times, backoff from `expert.retry_backoff_s`) while it raises
    `MalformedReply`: a garbled body is a transport fault, not an answer."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    retrying = Retrying(
        stop=stop_after_attempt(cfg.max_retries + 1),
        wait=wait_exponential(multiplier=cfg.retry_backoff_s, max=max(cfg.retry_after_max_s, 0.0)),
        retry=retry_if_exception_type(MalformedReply),
        reraise=True,
    )
    return retrying(call)


@dataclass(frozen=True)
class ExpertRequest:
    """The compact context sent to the expert: a system prompt and one user message."""

    system: str
    user: str
    max_tokens: int


@dataclass(frozen=True)
class BackendReply:
    """A reply with the usage the backend reported (or estimated, for the oracle)."""

    text: str
    input_tokens: int
    output_tokens: int


class ExpertBackend(Protocol):
    """Turns a request into a reply; raises ExpertBackendError for any API trouble."""

    name: str

    def complete(self, request: ExpertRequest, task: TaskInstance) -> BackendReply: ...


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def _api_key(cfg: ExpertConfig, default_env: str) -> str:
    return os.environ.get(cfg.api_key_env or default_env, "")


class AnthropicBackend:
    """Claude through the Messages API (anthropic SDK; it sends the key as `Authorization: Bearer`)."""

    name = "anthropic"

    def __init__(self, cfg: ExpertConfig, api_key: str | None = None) -> None:
        import anthropic  # 2 s import; only when this backend is used

        key = api_key if api_key is not None else _api_key(cfg, "ANTHROPIC_API_KEY")
        if not key:
            env = cfg.api_key_env or "ANTHROPIC_API_KEY"
            raise ValueError(f"expert backend anthropic: no API key (set {env} or expert.api_key_env)")
        self.cfg = cfg
        self._anthropic = anthropic
        self._client = _capped_client_class(anthropic.Anthropic, cfg.retry_after_max_s)(
            api_key=key, base_url=cfg.base_url or None, timeout=cfg.timeout_s, max_retries=cfg.max_retries
        )

    @staticmethod
    def payload(cfg: ExpertConfig, request: ExpertRequest) -> dict[str, Any]:
        """The exact Messages API body (also the response-cache key material)."""
        return {
            "model": cfg.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "messages": [{"role": "user", "content": request.user}],
        }

    def complete(self, request: ExpertRequest, task: TaskInstance) -> BackendReply:
        errors = self._anthropic
        try:
            return retry_malformed(self.cfg, lambda: self._create(request))
        except MalformedReply as err:
            raise ExpertBackendError(
                f"anthropic malformed reply after {self.cfg.max_retries} retries: {err}", transient=True
            ) from err
        except errors.APIStatusError as err:
            raise ExpertBackendError(
                f"anthropic {type(err).__name__} (HTTP {err.status_code}) after up to "
                f"{self.cfg.max_retries} retries: {err.message}",
                transient=err.status_code in RETRYABLE_STATUSES,
            ) from err
        except errors.APITimeoutError as err:
            raise ExpertBackendError(
                f"anthropic request timed out after {self.cfg.timeout_s}s ({self.cfg.max_retries} retries)",
                transient=True,
            ) from err
        except errors.APIConnectionError as err:
            raise ExpertBackendError(f"anthropic connection error: {err}", transient=True) from err
        except errors.APIError as err:
            raise ExpertBackendError(f"anthropic {type(err).__name__}: {err}") from err

    def _create(self, request: ExpertRequest) -> BackendReply:
        """One SDK call (with the SDK's own retries); a body the SDK cannot read is `MalformedReply`."""
        try:
            response = self._client.messages.create(**self.payload(self.cfg, request))
            text = "".join(block.text for block in response.content if block.type == "text")
            return BackendReply(text, int(response.usage.input_tokens), int(response.usage.output_tokens))
        except self._anthropic.APIError:
            raise
        except (ValueError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
            raise MalformedReply(f"{type(err).__name__}: {str(err)[:ERROR_BODY_CHARS]}") from err


def _capped_client_class(client_class: type, cap_s: float) -> type:
    """An SDK client class (`anthropic.Anthropic`, `openai.OpenAI`: both share the same retry machinery)
    whose retries wait at most `cap_s` whatever a `retry-after` header asks."""

    class Capped(client_class):  # type: ignore[misc, valid-type]
        def _calculate_retry_timeout(self, *args: Any, **kwargs: Any) -> float:
            return min(super()._calculate_retry_timeout(*args, **kwargs), cap_s)

        def _parse_retry_after_header(self, *args: Any, **kwargs: Any) -> float | None:
            # Seen capped, so a long `retry-after` is waited out for `cap_s` and retried, not given up on
            # (the openai SDK stops retrying past two minutes).
            asked = super()._parse_retry_after_header(*args, **kwargs)
            return None if asked is None else min(asked, cap_s)

    return Capped


class OpenAIBackend:
    """An OpenAI-compatible chat-completions server through the openai SDK; `base_url` includes `/v1`."""

    name = "openai"
    default_base_url = "https://api.openai.com/v1"

    def __init__(self, cfg: ExpertConfig, api_key: str | None = None) -> None:
        import openai  # only when this backend is used

        self.cfg = cfg
        self._openai = openai
        key = api_key if api_key is not None else _api_key(cfg, "OPENAI_API_KEY")
        base = cfg.base_url or os.environ.get("OPENAI_BASE_URL", "") or self.default_base_url
        self.url = base.rstrip("/") + "/chat/completions"
        # A keyless server (a local vLLM) takes any key; the SDK insists on one.
        self._client = _capped_client_class(openai.OpenAI, cfg.retry_after_max_s)(
            api_key=key or "none", base_url=base, timeout=cfg.timeout_s, max_retries=cfg.max_retries
        )

    @staticmethod
    def payload(cfg: ExpertConfig, request: ExpertRequest) -> dict[str, Any]:
        """The exact chat-completions body (also the response-cache key material)."""
        return {
            "model": cfg.model,
            "max_tokens": request.max_tokens,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
        }

    def complete(self, request: ExpertRequest, task: TaskInstance) -> BackendReply:
        errors, server, retries = self._openai, f"openai-compatible server {self.url}", self.cfg.max_retries
        try:
            return retry_malformed(self.cfg, lambda: self._create(request))
        except MalformedReply as err:
            raise ExpertBackendError(f"{server}: {err} after {retries} retries", transient=True) from err
        except errors.APIStatusError as err:
            detail = err.response.text[:ERROR_BODY_CHARS]
            raise ExpertBackendError(
                f"{server}: HTTP {err.status_code} after up to {retries} retries: {detail}",
                transient=err.status_code in RETRYABLE_STATUSES,
            ) from err
        except errors.APIConnectionError as err:  # timeouts included
            raise ExpertBackendError(
                f"{server}: {err} after {retries} retries (timeout {self.cfg.timeout_s}s)", transient=True
            ) from err
        except errors.APIError as err:
            raise ExpertBackendError(f"{server}: {type(err).__name__}: {err}") from err

    def _create(self, request: ExpertRequest) -> BackendReply:
        """One SDK call (with the SDK's own retries); a body that is not a completion is `MalformedReply`."""
        try:
            response = self._client.chat.completions.create(**self.payload(self.cfg, request))
            text = response.choices[0].message.content or ""
            usage = response.usage
            tokens = (int(usage.prompt_tokens), int(usage.completion_tokens)) if usage else (0, 0)
            return BackendReply(text, *tokens)
        except self._openai.APIError:
            raise
        except (ValueError, TypeError, AttributeError, IndexError) as err:  # JSONDecodeError is a ValueError
            raise MalformedReply(
                f"malformed response: {type(err).__name__}: {str(err)[:ERROR_BODY_CHARS]}"
            ) from err


# --------------------------------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_]\w*")
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")
_ASSIGN = re.compile(r"^([A-Za-z_][\w.]*)\s*(?:[-+*/%|&^]|//|\*\*)?=(?!=)")
_IGNORED_NAMES = frozenset(keyword.kwlist) | {"self", "cls"}
# Code tokens of one line, for the oracle's piece-level diff: strings, names and numbers, two-character
# operators, then any other single character.
_TOKEN = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|\w+|[=!<>/*+\-%&|^]=|//|\*\*|->|\S")
# How the oracle names the statement a change is about: (when existing code changes, when code is added).
_KIND_PHRASES = {
    "if": ("the `if` condition", "an `if` check"),
    "elif": ("the `elif` condition", "an `elif` branch"),
    "else": ("the `else` branch", "an `else` branch"),
    "while": ("the `while` condition", "a `while` loop"),
    "for": ("the `for` loop", "a `for` loop"),
    "return": ("the returned value", "a `return`"),
    "raise": ("the raised exception", "a `raise`"),
    "import": ("the imports", "an import"),
    "from": ("the imports", "an import"),
    "def": ("the function signature", "a new function"),
    "class": ("the class definition", "a new class"),
    "with": ("the `with` block", "a `with` block"),
    "try": ("the exception handling", "exception handling"),
    "except": ("the exception handling", "exception handling"),
}


@dataclass
class Hunk:
    """One hunk of a unified diff, reduced to what the oracle talks about."""

    path: str
    line: int
    """New-file line number of the first changed line."""
    scope: str
    """Innermost `def`/`class` name before the change ('' = module level)."""
    removed: list[str]
    added: list[str]

    @property
    def one_line(self) -> bool:
        """One line replaced by one line: the only change the oracle may show as code (METHOD §3's verbatim rule)."""
        return len(self.removed) == 1 and len(self.added) == 1


def parse_hunks(patch: str) -> list[Hunk]:
    """Hunks of a git diff (protege.patches) with their file, enclosing function and changed lines."""
    hunks: list[Hunk] = []
    for changed in patches.parse(patch):
        for body in changed:
            hunk = Hunk(changed.path, body.target_start, patches.hunk_scope(body), [], [])
            new_line = body.target_start
            for line in body:
                text = line.value.rstrip("\n")
                if line.line_type in "+-" and not hunk.removed and not hunk.added:
                    hunk.line = new_line
                if line.is_added:
                    hunk.added.append(text)
                elif line.is_removed:
                    hunk.removed.append(text)
                new_line += 0 if line.is_removed or line.line_type not in " +" else 1
            if hunk.removed or hunk.added:
                hunks.append(hunk)
    return hunks


def _names(lines: list[str]) -> list[str]:
    """Identifiers of code lines in first-seen order (keywords, comments and string literals dropped)."""
    seen: dict[str, None] = {}
    for line in lines:
        code = _STRING.sub("", line).split("#", 1)[0]
        for name in _NAME.findall(code):
            if name not in _IGNORED_NAMES:
                seen.setdefault(name)
    return list(seen)


def _raised(lines: list[str]) -> list[str]:
    """Exception names of `raise X(...)` lines."""
    return [names[0] for line in lines if line.strip().startswith("raise ") and (names := _names([line]))]


def _kind(lines: list[str], adding: bool) -> str:
    """What the first code line of a change is, in words (`adding`: phrased as something new)."""
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        first = text.split()[0].rstrip(":")
        if first in _KIND_PHRASES:
            return _KIND_PHRASES[first][adding]
        if match := _ASSIGN.match(text):
            return f"{'an' if adding else 'the'} assignment to `{match.group(1)}`"
        break
    return "new code" if adding else "the logic"


def _quote(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names[:ORACLE_MAX_NAMES])


def describe_hunk(hunk: Hunk) -> str:
    """One sentence on what must change in a hunk, in words (identifiers only, never code lines)."""
    where = f"In `{hunk.path}`, " + (f"in `{hunk.scope}`" if hunk.scope else "at module level")
    where += f" around line {hunk.line}"
    removed_names, added_names = _names(hunk.removed), _names(hunk.added)
    raised = [n for n in _raised(hunk.added) if n not in _raised(hunk.removed)]
    new = [n for n in added_names if n not in removed_names and n not in raised]
    gone = [n for n in removed_names if n not in added_names]
    if hunk.removed and hunk.added:
        sentence = f"{where}: {_kind(hunk.removed, adding=False)} is wrong"
        if new:
            sentence += f"; it should take {_quote(new)} into account"
        if gone:
            sentence += f"{' and' if new else '; it should'} stop relying on {_quote(gone)}"
        if not new and not gone and not raised:
            sentence += "; the same names are involved but combined differently (check operators and order)"
    elif hunk.added:
        sentence = f"{where}: something is missing; add {_kind(hunk.added, adding=True)}"
        if new:
            sentence += f", involving {_quote(new)}"
    else:
        sentence = f"{where}: {_kind(hunk.removed, adding=False)} should go"
        if removed_names:
            sentence += f" (it uses {_quote(removed_names)})"
    if raised:
        sentence += f"; it should raise {_quote(raised)} in the bad case"
    if hunk.one_line and (piece := changed_piece(*hunk.removed, *hunk.added)):
        sentence += f"; {piece}"
    return sentence + "."


def changed_piece(before: str, after: str) -> str:
    """The short piece of code that differs between two versions of a line, in words (`<` should be `<=`):
    from the first to the last differing token; '' when that piece is long on either side."""
    old, new = list(_TOKEN.finditer(before)), list(_TOKEN.finditer(after))
    matcher = SequenceMatcher(None, [m[0] for m in old], [m[0] for m in new], autojunk=False)
    blocks = [b for b in matcher.get_opcodes() if b[0] != "equal"]
    if not blocks:
        return ""
    (_, i1, _, j1, _), (_, _, i2, _, j2) = blocks[0], blocks[-1]
    gone = before[old[i1].start() : old[i2 - 1].end()] if i2 > i1 else ""
    put = after[new[j1].start() : new[j2 - 1].end()] if j2 > j1 else ""
    if max(len(gone), len(put)) > ORACLE_MAX_PIECE_CHARS:
        return ""
    if gone and put:
        return f"`{gone}` should be `{put}`"
    if gone:
        return f"`{gone}` should go" + (f" (after `{old[i1 - 1][0]}`)" if i1 else "")
    anchor = f" after `{new[j1 - 1][0]}`" if j1 else f" before `{new[j2][0]}`" if j2 < len(new) else ""
    return f"`{put}` is missing{anchor}"


def quoted_line_change(hunk: Hunk) -> list[str]:
    """A one-line change as an expert who has the fix would quote it: the line as it is and as it should be,
    each in a fenced block with its indentation ([] for any other change: more than one line reads as a paste)."""
    if not hunk.one_line:
        return []
    return [
        f"  Line {hunk.line} reads:",
        "```",
        hunk.removed[0],
        "```",
        "  and should read:",
        "```",
        hunk.added[0],
        "```",
    ]


def edit_call(hunk: Hunk) -> list[str]:
    """A one-line change as an expert asked for the edit would give it: the editor call that makes it, written
    as the protégé's own tool calls are ([] for any other change)."""
    if not hunk.one_line:
        return []
    arguments = {
        "command": "str_replace",
        "path": hunk.path,
        "old_str": hunk.removed[0],
        "new_str": hunk.added[0],
    }
    return ["  The edit that makes it:", tool_call_json("str_replace_editor", arguments)]


def oracle_guidance(task: TaskInstance, quote_line: bool = False, write_call: bool = False) -> str:
    """Guidance derived from the gold patch: files, functions and the change in words, no patch lines;
    `quote_line`: a one-line change also quoted before and after (`quoted_line_change`); `write_call`: and as
    the editor call that makes it (`edit_call`)."""
    hunks = parse_hunks(task.patch)
    files = list(dict.fromkeys(h.path for h in hunks))
    lines = [
        "(oracle guidance, derived offline from the reference fix)",
        f"The fix touches {len(files)} file(s): {_quote(files)}.",
    ]
    for hunk in hunks:
        lines += [
            f"- {describe_hunk(hunk)}",
            *(quoted_line_change(hunk) if quote_line else []),
            *(edit_call(hunk) if write_call else []),
        ]
    scopes = list(dict.fromkeys(h.scope for h in hunks if h.scope))
    target = f"`{scopes[0]}` in `{hunks[0].path}`" if scopes else f"`{files[0]}`" if files else "the code"
    tests = ", ".join(task.FAIL_TO_PASS)
    lines.append(f"Start by reading {target}, make that change, then run the failing tests: {tests}.")
    return "\n".join(lines)


class OracleBackend:
    """Offline expert: answers from the task's gold patch (never from the question); costs nothing."""

    name = "oracle"

    def __init__(self, cfg: ExpertConfig, api_key: str | None = None) -> None:
        if not cfg.allow_oracle:
            raise ValueError(
                "expert backend oracle needs expert.allow_oracle=true (local profile, synthesis)"
            )
        self.cfg = cfg

    @staticmethod
    def payload(cfg: ExpertConfig, request: ExpertRequest) -> dict[str, Any]:
        """What the oracle is given (it sends nothing anywhere)."""
        return {"model": cfg.model, "system": request.system, "user": request.user}

    def complete(self, request: ExpertRequest, task: TaskInstance) -> BackendReply:
        text = oracle_guidance(task, self.cfg.oracle_quotes_line, self.cfg.oracle_writes_call)
        return BackendReply(text, estimate_tokens(request.system + request.user), estimate_tokens(text))


BACKENDS: dict[str, type[AnthropicBackend] | type[OpenAIBackend] | type[OracleBackend]] = {
    "anthropic": AnthropicBackend,
    "openai": OpenAIBackend,
    "oracle": OracleBackend,
}
