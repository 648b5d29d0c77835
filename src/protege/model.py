"""Models: build the tiny local model, resolve a base model to a local directory, load it.

No weights can be downloaded on the local machine, so `build_tiny_model` makes a small model from
`TinyModelConfig` (seeded init) with a byte-level BPE tokenizer trained here on the bundled demo
repositories plus agent-style tool-calling chats. `model.tiny.family` picks the base family it stands in
for: `qwen2.5` (Qwen2 architecture, Qwen2.5's chat template: Qwen2.5-Coder-7B-Instruct, the paper's base) or
`qwen3` (Qwen3 architecture, Qwen3's chat template with `<think>` reasoning and `<think>`/`</think>` as
single tokens). The tokenizer carries TRL's bundled copy of that family's published chat template
verbatim: TRL recognises templates by exact string, which gives it the `{% generation %}` training template
for assistant-only SFT loss (protege.agent.chat_format reads the family off the template). Everything
downstream (SFT, RL, the in-process policy) therefore sees the same interface as the real model on a cluster.

    protege model init-tiny --profile local [--out DIR] [model.tiny.vocab_size=1024 model.tiny.family=qwen3 ...]

Simplified relative to a real Qwen tokenizer: a small vocabulary, no FIM/vision tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

from protege.config import TinyModelConfig

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).parent
DEMO_REPOS_DIR = PACKAGE_DIR / "demo" / "repos"
MANIFEST_NAME = "protege_tiny.json"
"""Written last into a tiny model directory: its config, corpus digest, sizes (marks a complete build)."""
BUILD_FORMAT = 1
"""Part of the cache key: bump when the build recipe changes so cached tiny models are rebuilt."""

# Real Qwen2.5 marks these three special (skipped by decode(skip_special_tokens=True)) and lists im_start/
# im_end as additional special tokens; the tool tags are plain added tokens so they survive decoding
# (Qwen2.5 has <tool_call> as a single token; <tool_response> is a single token from Qwen3 on, added here
# so tool observations are framed by one token each).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
THINK_TOKENS = ["<think>", "</think>"]
"""Qwen3's reasoning tags, plain added tokens there too."""
# Per tiny family: its plain added tokens and its architecture (the chat template is `chat_template(family)`).
TINY_FAMILIES: dict[str, tuple[list[str], str]] = {
    "qwen2.5": (TOOL_TOKENS, "Qwen2"),
    "qwen3": (TOOL_TOKENS + THINK_TOKENS, "Qwen3"),
}
EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"
# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2.5): digits one by one, words with a leading space.
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Tool schemas of the agent's kind, used only to render tokenizer-training chats (JSON, tags, role words).
_SAMPLE_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {arg: {"type": "string", "description": arg} for arg in args},
                "required": list(args),
            },
        },
    }
    for name, description, args in [
        ("bash", "Run a shell command in the repository.", ("command",)),
        ("str_replace_editor", "Replace old_str by new_str in a file.", ("path", "old_str", "new_str")),
        ("ask_expert", "Ask a stronger expert model for guidance.", ("question",)),
        ("submit", "Submit the current diff as the solution.", ()),
    ]
]


class ArtifactStore(Protocol):
    """What `resolve_model` needs from the artifact store (protege.store implements it)."""

    def download_dir(self, uri: str, local_dir: Path) -> Any:
        """Copy the model tree under the s3:// prefix `uri` into `local_dir`, keeping relative paths."""
        ...


class ModelResolveError(ValueError):
    """A base model reference cannot be turned into a local model directory; the message says which and why."""


# --------------------------------------------------------------------------------------------------
# Tiny model
# --------------------------------------------------------------------------------------------------


def qwen25_chat_template() -> str:
    """TRL's bundled Qwen2.5 chat template, byte for byte (TRL matches templates by exact string)."""
    return chat_template("qwen2.5")


def chat_template(family: str) -> str:
    """TRL's bundled copy of `family`'s published chat template, byte for byte."""
    from trl.chat_template_utils import qwen2_5_chat_template, qwen3_chat_template

    return {"qwen2.5": qwen2_5_chat_template, "qwen3": qwen3_chat_template}[family]


def default_corpus() -> list[Path]:
    """The bundled demo repositories, or this package's own sources while none are bundled."""
    if DEMO_REPOS_DIR.is_dir() and any(DEMO_REPOS_DIR.rglob("*.py")):
        return [DEMO_REPOS_DIR]
    return [PACKAGE_DIR]


def read_corpus(corpus: list[Path]) -> list[tuple[str, str]]:
    """(name, text) of every file in `corpus`, sorted by name: a directory contributes its `**/*.py`
    (names relative to it, so a build does not depend on where the checkout lives), a file itself."""
    files: dict[str, str] = {}
    for root in corpus:
        root = Path(root)
        if root.is_dir():
            paths = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*.py") if p.is_file()]
        elif root.is_file():
            paths = [(root.name, root)]
        else:
            raise FileNotFoundError(f"tokenizer corpus path does not exist: {root}")
        for name, path in paths:
            files[name if name not in files else f"{root.name}/{name}"] = path.read_text(errors="replace")
    if not any(text.strip() for text in files.values()):
        raise ValueError(f"tokenizer corpus is empty: no text in {[str(p) for p in corpus]}")
    return sorted(files.items())


def _sample_chat(name: str, text: str) -> list[dict[str, Any]]:
    """An agent-style episode on one corpus file: inspect, edit, ask the expert, submit."""
    first_line = next((line for line in text.splitlines() if line.strip()), "")

    def call(tool: str, **arguments: str) -> dict[str, Any]:
        tool_call = {"type": "function", "function": {"name": tool, "arguments": arguments}}
        return {"role": "assistant", "content": f"Next I use {tool}.", "tool_calls": [tool_call]}

    return [
        {"role": "system", "content": "You are a software engineering agent working in /testbed."},
        {"role": "user", "content": f"Tests fail in {name}. Fix the bug."},
        call("bash", command=f"cat {name}"),
        {"role": "tool", "name": "bash", "content": text},
        call("ask_expert", question=f"Where is the bug in {name}?"),
        {"role": "tool", "name": "ask_expert", "content": f"Look at `{first_line.strip()}` first."},
        call("str_replace_editor", path=name, old_str=first_line, new_str=first_line + "  # fixed"),
        {"role": "tool", "name": "str_replace_editor", "content": f"Edited {name}."},
        call("submit"),
    ]


def _training_texts(files: list[tuple[str, str]], template: str, added: list[str]) -> list[str]:
    """Raw sources plus one rendered tool-calling chat per file, special-token strings cut out (they are
    added tokens, never split by the pre-tokenizer, so BPE must not spend merges on their pieces)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    chats, _ = render_jinja_template(
        [_sample_chat(n, t) for n, t in files], tools=_SAMPLE_TOOLS, chat_template=template
    )
    cut = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + added))
    return [text for _, text in files] + [cut.sub("\n", chat) for chat in chats]


def _train_tokenizer(texts: list[str], vocab_size: int, added_tokens: list[str]) -> Any:
    """Byte-level BPE with Qwen2's pre-tokenizer; added tokens take the last ids, as in Qwen2.5."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    added = len(SPECIAL_TOKENS) + len(added_tokens)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - added,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    return tokenizer


def _check_shape(cfg: TinyModelConfig) -> None:
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(
            f"model.tiny.hidden_size ({cfg.hidden_size}) must be divisible by "
            f"model.tiny.num_attention_heads ({cfg.num_attention_heads})"
        )
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(
            f"model.tiny.num_attention_heads ({cfg.num_attention_heads}) must be divisible by "
            f"model.tiny.num_key_value_heads ({cfg.num_key_value_heads})"
        )


def _build_model(cfg: TinyModelConfig, tokenizer: Any) -> Any:
    """Qwen2ForCausalLM (Qwen3ForCausalLM for the qwen3 family) sized by `cfg`, initialised under `cfg.seed`
    without touching the global RNG."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    eos, pad = tokenizer.convert_tokens_to_ids([EOS_TOKEN, PAD_TOKEN])
    config_class, model_class = {
        "Qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "Qwen3": (Qwen3Config, Qwen3ForCausalLM),
    }[TINY_FAMILIES[cfg.family][1]]
    shape = {"head_dim": cfg.hidden_size // cfg.num_attention_heads} if config_class is Qwen3Config else {}
    config = config_class(
        **shape,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,  # as in the small Qwen2.5 models; halves the parameters of a tiny model
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = model_class(config)
    # Like Qwen2.5-Instruct: generation stops at the end of the turn or the end of the text.
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    return model


def tiny_digest(cfg: TinyModelConfig, files: list[tuple[str, str]]) -> str:
    """sha256 over the build recipe version, the tiny config, the chat template and the corpus: equal
    digests, equal builds."""
    recipe = {"format": BUILD_FORMAT, "tiny": cfg.model_dump(), "chat_template": chat_template(cfg.family)}
    if cfg.copy_warmup_steps:  # only warm-started builds change with the warm start's recipe
        from protege.tiny_warmup import RECIPE

        recipe["copy_warm_start"] = RECIPE
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for name, text in files:
        h.update(f"\0{name}\0{len(text)}\0".encode())
        h.update(text.encode())
    return h.hexdigest()


def _prepare_out_dir(out_dir: Path) -> None:
    # Only ever wipe a directory that holds a previous tiny build; anything else is the user's.
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST_NAME).is_file():
            raise FileExistsError(
                f"{out_dir} is not empty and is not a tiny model build; choose another --out"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def build_tiny_model(cfg: TinyModelConfig, out_dir: Path, corpus: list[Path] | None = None) -> Path:
    """Build the tiny model and its tokenizer into `out_dir` (created; a previous tiny build there is
    replaced). Deterministic: the same config and corpus give byte-identical files. Returns `out_dir`.

    `corpus`: files and directories (their `**/*.py`) to train the tokenizer on; default `default_corpus()`.
    """
    files = read_corpus(corpus if corpus is not None else default_corpus())
    return _build(cfg, Path(out_dir), files)


def _build(cfg: TinyModelConfig, out_dir: Path, files: list[tuple[str, str]]) -> Path:
    from transformers import PreTrainedTokenizerFast

    _check_shape(cfg)
    template, added = chat_template(cfg.family), TINY_FAMILIES[cfg.family][0]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(_training_texts(files, template, added), cfg.vocab_size, added),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=template,
        model_max_length=cfg.max_position_embeddings,
    )
    model = _build_model(cfg, tokenizer)
    warm_start = {}
    if cfg.copy_warmup_steps:
        from protege.tiny_warmup import copy_warm_start

        # Ordinary tokens only: the special and added (tool-call) tokens take the last ids.
        ordinary = min(tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS))
        warm_start = copy_warm_start(model, ordinary, cfg.copy_warmup_steps, cfg.seed)
    _prepare_out_dir(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    manifest = {
        "digest": tiny_digest(cfg, files),
        "tiny": cfg.model_dump(),
        "corpus_files": len(files),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "chat_template": f"trl/chat_templates/{cfg.family.replace('.', '_')}.jinja",
        **({"copy_warm_start": warm_start} if warm_start else {}),
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The manifest of a tiny build (digest, tiny config, parameters, vocab_size, corpus_files)."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a tiny model build (no {MANIFEST_NAME})")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------------
# Resolving a base model reference to a local directory
# --------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "on", "yes", "true"}


def _resolve_tiny(cache_dir: Path, tiny: TinyModelConfig) -> Path:
    files = read_corpus(default_corpus())
    digest = tiny_digest(tiny, files)
    final = cache_dir / f"tiny-{digest[:16]}"
    if (final / MANIFEST_NAME).is_file() and read_manifest(final)["digest"] == digest:
        return final
    # Build beside the final name and rename, so a crash never leaves a half-built cache entry.
    staging = cache_dir / f".{final.name}.{os.getpid()}.building"
    shutil.rmtree(staging, ignore_errors=True)
    _build(tiny, staging, files)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    return final


def _resolve_s3(uri: str, cache_dir: Path, store: ArtifactStore | None) -> Path:
    if store is None:
        raise ModelResolveError(f"cannot resolve {uri}: an s3:// base model needs an artifact store")
    key = uri.removeprefix("s3://").strip("/")
    if not key:
        raise ModelResolveError(f"cannot resolve {uri}: no bucket in the URI")
    final = cache_dir / "s3" / key
    # Always fetch afresh into a staging dir: an s3 prefix may have been rewritten since the last fetch.
    staging = final.with_name(f".{final.name}.{os.getpid()}.download")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    from protege.store import IncompleteUploadError

    try:
        store.download_dir(uri, staging)
        if not (staging / "config.json").is_file():
            raise ModelResolveError(f"{uri} does not hold a model: no config.json under that prefix")
    except IncompleteUploadError as err:  # a wrong path, said as one (a store outage stays a StoreError)
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelResolveError(f"no model at {uri}: {err}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    return final


def _hub_offline() -> bool:
    import huggingface_hub.constants

    return huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def _resolve_hub(repo_id: str, cache_dir: Path) -> Path:
    hint = "use a local path, s3:// URI or `tiny`"
    if _hub_offline():
        raise ModelResolveError(f"cannot download {repo_id}: offline (HF_HUB_OFFLINE=1) — {hint}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir / "hub"))
    except Exception as err:  # network, auth, missing repo: all end the same way for the caller
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelResolveError(f"cannot download {repo_id}: {reason} — {hint}") from err


def resolve_model(
    base: str, cache_dir: Path, store: ArtifactStore | None = None, tiny: TinyModelConfig | None = None
) -> Path:
    """A local directory holding the model named by `base`:

    - an existing local directory: returned as is (it must hold config.json or adapter_config.json);
    - `s3://bucket/prefix`: downloaded with `store.download_dir` into `cache_dir/s3/bucket/prefix`;
    - `tiny`: built from `tiny` (default `TinyModelConfig()`) into `cache_dir/tiny-<digest>`, reused when a
      build with the same config and corpus is already there;
    - otherwise an HF hub id, fetched with `huggingface_hub.snapshot_download` into `cache_dir/hub`.

    Raises `ModelResolveError` naming `base` when none of these works.
    """
    cache_dir = Path(cache_dir)
    local = Path(base).expanduser()
    if local.is_dir():
        if not any((local / name).is_file() for name in ("config.json", "adapter_config.json")):
            raise ModelResolveError(f"{base} is a directory but not a model (no config.json)")
        return local
    if base.startswith("s3://"):
        return _resolve_s3(base, cache_dir, store)
    if base == "tiny":
        return _resolve_tiny(cache_dir, tiny or TinyModelConfig())
    if base.startswith(("/", ".", "~")) or not _HUB_ID.match(base):
        raise ModelResolveError(
            f"model {base!r}: no such directory, and not an s3:// URI, `tiny` or a hub id"
        )
    return _resolve_hub(base, cache_dir)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def pick_device(device: str) -> str:
    """`auto` -> cuda when a GPU is visible, else cpu; `cuda` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is visible")
    return device


def load_model_and_tokenizer(
    path: Path | str, dtype: str = "auto", device: str = "auto", attn_implementation: str = "sdpa"
) -> tuple[Any, Any]:
    """(model, tokenizer) from a local model directory, on `device`.

    On CPU the weights are float32 whatever `dtype` says (half precision is slow or unsupported there)
    and `flash_attention_2` falls back to `sdpa`. On GPU `auto` means bfloat16 where supported.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    if device == "cpu":
        if dtype not in ("auto", "float32"):
            log.info("dtype %s requested on CPU; loading float32", dtype)
        torch_dtype = torch.float32
        if attn_implementation == "flash_attention_2":
            log.info("flash_attention_2 needs a GPU; using sdpa on CPU")
            attn_implementation = "sdpa"
    elif dtype == "auto":
        torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        # Batched generation and padding-based collators need a pad id; the end-of-text token is the usual one.
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype, attn_implementation=attn_implementation
    )
    return model.to(device), tokenizer
