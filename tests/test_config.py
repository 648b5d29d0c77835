"""Config: profiles load, METHOD.md values, overrides, and errors that name the file and field."""

from pathlib import Path

import pytest

from protege.cli import main
from protege.config import PROFILES_DIR, ConfigError, flatten, load_config, parse_override, public_dict


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_every_profile_loads(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile


def test_cluster_profile_holds_method_values():
    cfg = load_config("cluster")
    assert cfg.model.base == "Qwen/Qwen2.5-Coder-7B-Instruct"
    assert (cfg.rl.group_size, cfg.rl.epsilon_low, cfg.rl.epsilon_high, cfg.rl.beta) == (6, 0.20, 0.28, 0.001)
    assert (cfg.rl.total_steps, cfg.rl.stage_one_steps) == (160, 80)
    assert (cfg.agent.step_limit, cfg.agent.expert_quota, cfg.agent.cost_limit_usd) == (75, 6, 2.0)
    assert (cfg.expert.context_messages, cfg.expert.max_output_tokens) == (5, 2048)
    assert (cfg.sft.max_length, cfg.sft.global_batch_size, cfg.sft.learning_rate) == (32768, 32, 1e-5)
    loop = cfg.rl.stage1.loop
    assert (loop.first_run_threshold, loop.later_run_threshold, loop.penalty_per_step, loop.floor) == (
        15,
        8,
        0.5,
        -10,
    )


def test_curriculum_stages_differ_as_in_method_table():
    for profile in ("cluster", "local"):
        rl = load_config(profile).rl
        assert (rl.stage1.w_follow, rl.stage1.w_expert, rl.stage1.gate_follow, rl.stage1.no_call_penalty) == (
            0.5,
            0.1,
            False,
            0.0,
        )
        assert (rl.stage2.w_follow, rl.stage2.w_expert, rl.stage2.gate_follow, rl.stage2.no_call_penalty) == (
            2.0,
            0.3,
            True,
            -10.0,
        )
        assert rl.stage2.p_follow_low == -2.0


def test_dotted_overrides_apply_last_and_parse_types():
    cfg = load_config(
        "local", overrides=["rl.group_size=4", "tasks.train_ids=[a, b]", "expert.cache_mode=replay"]
    )
    assert cfg.rl.group_size == 4
    assert cfg.tasks.train_ids == ["a", "b"]
    assert cfg.expert.cache_mode == "replay"
    assert parse_override("a.b.c=1.5") == {"a": {"b": {"c": 1.5}}}


def test_unknown_key_in_file_names_file_and_field(tmp_path: Path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("rl:\n  group_sise: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config("local", config_file=bad)
    assert str(bad) in str(err.value)
    assert "rl.group_sise: unknown field" in str(err.value)


def test_bad_value_names_field_and_reason():
    with pytest.raises(ConfigError, match=r"rl.stage_one_steps.*|rl: .*stage_one_steps"):
        load_config("local", overrides=["rl.stage_one_steps=10", "rl.total_steps=5"])
    with pytest.raises(ConfigError, match="agent.step_limit"):
        load_config("local", overrides=["agent.step_limit=0"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config("local", overrides=["nonsense"])
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_config("nope")


def test_oracle_expert_needs_explicit_opt_in():
    with pytest.raises(ConfigError, match="allow_oracle"):
        load_config("local", overrides=["expert.allow_oracle=false"])


def test_secrets_are_masked_and_env_is_used(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    cfg = load_config("cluster")
    assert cfg.store.secret_key.get_secret_value() == "very-secret"
    assert cfg.tracking.uri == "http://mlflow.example:5000"
    assert "very-secret" not in str(public_dict(cfg))


def test_endpoint_scheme_sets_secure():
    cfg = load_config("local", overrides=["store.endpoint=https://minio.example:9000"])
    assert (cfg.store.endpoint, cfg.store.secure) == ("minio.example:9000", True)


def test_flatten_and_digest_are_stable():
    cfg = load_config("local")
    flat = flatten(public_dict(cfg))
    assert flat["rl.stage2.w_follow"] == 2.0
    assert cfg.digest() == load_config("local").digest()
    assert cfg.digest() != load_config("local", overrides=["rl.beta=0.01"]).digest()


def test_cli_config_show(capsys):
    assert main(["config", "show", "--profile", "cluster"]) == 0
    out = capsys.readouterr().out
    assert "group_size: 6" in out and "Qwen/Qwen2.5-Coder-7B-Instruct" in out and "step_limit: 75" in out
    assert main(["config", "show", "--profile", "local", "rl.nope=1"]) == 2
    assert "rl.nope: unknown field" in capsys.readouterr().err


def test_vllm_server_mode_needs_its_url():
    with pytest.raises(ConfigError, match="rl: .*vllm_mode 'server' needs vllm_server_base_url"):
        load_config("cluster", overrides=["rl.vllm_mode=server"])
    cfg = load_config(
        "cluster", overrides=["rl.vllm_mode=server", "rl.vllm_server_base_url=http://vllm:8000"]
    )
    assert cfg.rl.vllm_server_base_url == "http://vllm:8000"
