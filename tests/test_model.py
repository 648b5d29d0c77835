"""The tiny Qwen2 model: deterministic build, Qwen2.5 chat template with tool calls as TRL sees it,
generation, and resolving base-model references (local dir, tiny, s3 via a directory-backed store, hub)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import protege.agent.qwen_format as qwen_format
import protege.config as config_module
import protege.model as model_module
from protege.agent.qwen_format import split_completion
from protege.cli import main
from protege.config import TinyModelConfig
from protege.model import (
    MANIFEST_NAME,
    ModelResolveError,
    build_tiny_model,
    load_model_and_tokenizer,
    qwen25_chat_template,
    read_manifest,
    resolve_model,
)

TINY = TinyModelConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Run a command.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "ask_expert",
            "description": "Ask the expert.",
            "parameters": {
                "type": "object",
                "properties": {"question": {"type": "string"}},
                "required": ["question"],
            },
        },
    },
]


def _call(name: str, **arguments: object) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATION = [
    {"role": "system", "content": "SYSTEM-PROMPT"},
    {"role": "user", "content": "TASK-TEXT: tests fail in calc.py"},
    {
        "role": "assistant",
        "content": "Look first.",
        "tool_calls": [_call("bash", command='grep -n "def add" calc.py')],
    },
    {"role": "tool", "name": "bash", "content": "TOOL-OBSERVATION 3:def add(a, b):"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call("ask_expert", question="Why does add fail?\nIt's odd.")],
    },
    {"role": "tool", "name": "ask_expert", "content": "EXPERT-GUIDANCE: it subtracts"},
    {
        "role": "assistant",
        "content": "Two commands.",
        "tool_calls": [
            _call("bash", command="sed -i 's/a - b/a + b/' calc.py"),
            _call("bash", command="pytest -q"),
        ],
    },
    {"role": "tool", "name": "bash", "content": "OBS-A"},
    {"role": "tool", "name": "bash", "content": "OBS-B"},
    {"role": "assistant", "content": "Fixed: add now adds."},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed small corpus (a few of our own sources), so builds do not depend on files others edit."""
    root = tmp_path_factory.mktemp("corpus")
    for module in (model_module, qwen_format, config_module):
        shutil.copy(module.__file__, root / Path(module.__file__).name)
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    return build_tiny_model(TINY, tmp_path_factory.mktemp("tiny") / "model", [corpus])


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_build_is_deterministic_and_only_the_seed_changes_the_weights(
    tiny_dir: Path, corpus: Path, tmp_path: Path
):
    again = build_tiny_model(TINY, tmp_path / "again", [corpus])
    assert _digests(again) == _digests(tiny_dir)
    assert {"model.safetensors", "tokenizer.json", "config.json", MANIFEST_NAME} <= set(_digests(again))

    reseeded = _digests(build_tiny_model(TINY.model_copy(update={"seed": 1}), tmp_path / "seed1", [corpus]))
    assert reseeded["tokenizer.json"] == _digests(tiny_dir)["tokenizer.json"]
    assert reseeded["model.safetensors"] != _digests(tiny_dir)["model.safetensors"]


def test_build_has_the_configured_qwen2_shape(tiny_dir: Path, tokenizer):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (1024, 64, 2)
    assert config["num_key_value_heads"] == TINY.num_key_value_heads
    manifest = read_manifest(tiny_dir)
    assert manifest["vocab_size"] == len(tokenizer) == TINY.vocab_size
    assert manifest["corpus_files"] == 3
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_rebuilding_into_a_foreign_directory_is_refused(tmp_path: Path, corpus: Path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a tiny model build"):
        build_tiny_model(TINY, tmp_path, [corpus])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_shape_names_the_fields(tmp_path: Path, corpus: Path):
    with pytest.raises(ValueError, match="num_attention_heads"):
        build_tiny_model(TINY.model_copy(update={"num_attention_heads": 3}), tmp_path / "m", [corpus])


def test_missing_corpus_path_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        build_tiny_model(TINY, tmp_path / "m", [tmp_path / "no-such-dir"])


def test_tokenizer_tokens_match_qwen25(tokenizer):
    assert tokenizer.chat_template == qwen25_chat_template()
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|im_end|>",
        "<|endoftext|>",
        None,
    )
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_response>"):
        assert len(tokenizer(token)["input_ids"]) == 1, token
    ids = tokenizer("<|im_start|>assistant\n<tool_call>{}</tool_call><|im_end|>")["input_ids"]
    # Role markers are special (skipped); tool tags are not, so a parser still sees them after decoding.
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n<tool_call>{}</tool_call>"


def test_chat_template_renders_tool_calls_that_round_trip(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False)
    assert (
        '<tool_call>\n{"name": "bash", "arguments": {"command": "grep -n \\"def add\\" calc.py"}}\n</tool_call>'
        in text
    )
    assert "<tools>\n" + "\n".join(json.dumps(tool) for tool in TOOLS) + "\n</tools>" in text
    assert "<tool_response>\nOBS-A\n</tool_response>\n<tool_response>\nOBS-B\n</tool_response>" in text

    encoding = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS)
    assert tokenizer.decode(encoding["input_ids"]) == text  # byte-level BPE is lossless

    turns = [t.split("<|im_end|>")[0] for t in text.split("<|im_start|>assistant\n")[1:]]
    expected = [m for m in CONVERSATION if m["role"] == "assistant"]
    assert len(turns) == len(expected)
    for turn, message in zip(turns, expected, strict=True):
        content, calls = split_completion(turn)
        assert content == message["content"]
        assert calls == [c["function"] for c in message.get("tool_calls", [])]


def test_trl_recognises_the_template_and_parses_tool_calls(tokenizer):
    from trl.chat_template_utils import (
        add_response_schema,
        is_chat_template_prefix_preserving,
        parse_response,
        supports_tool_calling,
    )

    assert supports_tool_calling(tokenizer) and is_chat_template_prefix_preserving(tokenizer)
    add_response_schema(tokenizer)  # raises ValueError for a template TRL does not know
    prefix = tokenizer.apply_chat_template(CONVERSATION[:2], tools=TOOLS, add_generation_prompt=True)[
        "input_ids"
    ]
    completion = (
        'Plan.\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call><|im_end|>'
    )
    parsed = parse_response(tokenizer, tokenizer(completion)["input_ids"], prefix=prefix)
    assert parsed["content"] == "Plan."
    assert parsed["tool_calls"] == [
        {"type": "function", "function": {"name": "bash", "arguments": {"command": "ls"}}}
    ]


def test_trl_sft_assistant_only_mask_covers_exactly_the_assistant_turns(tokenizer):
    from trl.chat_template_utils import (
        get_training_chat_template,
        is_chat_template_stop_token_trained,
        qwen2_5_training_chat_template,
    )

    training = get_training_chat_template(tokenizer)  # what SFTTrainer swaps in for assistant_only_loss
    assert training == qwen2_5_training_chat_template
    assert is_chat_template_stop_token_trained(tokenizer, chat_template=training)
    out = tokenizer.apply_chat_template(
        CONVERSATION, tools=TOOLS, chat_template=training, return_dict=True, return_assistant_tokens_mask=True
    )
    targets = tokenizer.decode(
        [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    )
    for context in (
        "SYSTEM-PROMPT",
        "TASK-TEXT",
        "TOOL-OBSERVATION",
        "EXPERT-GUIDANCE",
        "OBS-A",
        "<tool_response>",
    ):
        assert context not in targets
    assert targets.count("<|im_end|>") == 4 and targets.count("<tool_call>") == 4
    assert "Fixed: add now adds.<|im_end|>" in targets and "pytest -q" in targets


def test_forward_and_generate_on_cpu(tiny_dir: Path):
    import torch

    model, tokenizer = load_model_and_tokenizer(tiny_dir, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.float32  # half precision is not used on CPU
    batch = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss) and loss.item() > 0
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    prompt_len = batch["input_ids"].shape[1]
    assert generated.shape[1] - prompt_len in (1, 2, 3)
    assert torch.equal(generated[:, :prompt_len], batch["input_ids"])


# --------------------------------------------------------------------------------------------------
# resolve_model
# --------------------------------------------------------------------------------------------------


class DirectoryStore:
    """An artifact store whose bucket is a local directory (the real S3 store has its own tests)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[str] = []

    def download_dir(self, uri: str, local_dir: Path) -> None:
        self.calls.append(uri)
        source = self.root / uri.removeprefix("s3://")
        if source.is_dir():
            shutil.copytree(source, local_dir, dirs_exist_ok=True)


def test_resolve_local_directory_as_is(tiny_dir: Path, tmp_path: Path):
    assert resolve_model(str(tiny_dir), tmp_path) == tiny_dir
    with pytest.raises(ModelResolveError, match="not a model"):
        resolve_model(str(tmp_path), tmp_path / "cache")
    with pytest.raises(ModelResolveError, match="no-such-model"):
        resolve_model("./no-such-model", tmp_path)


def test_resolve_tiny_builds_once_and_reuses(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path):
    monkeypatch.setattr(model_module, "default_corpus", lambda: [corpus])
    first = resolve_model("tiny", tmp_path, tiny=TINY)
    assert first.parent == tmp_path and first.name.startswith("tiny-")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny", tmp_path, tiny=TINY) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    other = resolve_model("tiny", tmp_path, tiny=TINY.model_copy(update={"seed": 7}))
    assert other != first and read_manifest(other)["tiny"]["seed"] == 7
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_resolve_s3_downloads_through_the_store(tiny_dir: Path, tmp_path: Path):
    bucket = tmp_path / "bucket" / "protege" / "checkpoints"
    shutil.copytree(tiny_dir, bucket / "step-10")
    store = DirectoryStore(tmp_path / "bucket")
    local = resolve_model("s3://protege/checkpoints/step-10", tmp_path / "cache", store=store)
    assert local == tmp_path / "cache" / "s3" / "protege" / "checkpoints" / "step-10"
    assert _digests(local) == _digests(tiny_dir)
    assert store.calls == ["s3://protege/checkpoints/step-10"]

    with pytest.raises(ModelResolveError, match="s3://protege/empty.*no config.json"):
        resolve_model("s3://protege/empty", tmp_path / "cache", store=store)
    with pytest.raises(ModelResolveError, match="needs an artifact store"):
        resolve_model("s3://protege/checkpoints/step-10", tmp_path / "cache")


def test_resolve_hub_id_offline_says_what_to_use_instead(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelResolveError) as err:
        resolve_model("Qwen/Qwen2.5-Coder-7B-Instruct", tmp_path)
    assert str(err.value) == (
        "cannot download Qwen/Qwen2.5-Coder-7B-Instruct: offline (HF_HUB_OFFLINE=1) — use a local path, s3:// URI or `tiny`"
    )


def test_cli_init_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "tiny"
    overrides = ["model.tiny.vocab_size=1024", "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=1"]
    assert main(["model", "init-tiny", "--profile", "local", "--out", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    manifest = read_manifest(out)
    assert f"parameters: {manifest['parameters']:,}" in printed
    assert "vocab size: 1024" in printed and f"model dir: {out}" in printed
