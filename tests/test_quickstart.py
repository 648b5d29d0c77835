"""`protege demo` is `protege run` (protege.cli.pipeline): one end-to-end chain, the pipeline."""

from protege.cli import build_parser
from protege.cli import pipeline as kfp_local


def test_demo_is_the_local_pipeline_run_with_the_same_flags() -> None:
    argv = ["--run-name", "r1", "--param", "base_model=tiny", "sft.max_steps=2"]
    demo = build_parser().parse_args(["demo", *argv])
    run = build_parser().parse_args(["run", *argv])
    assert demo.func is run.func is kfp_local.run_cli
    assert {k: v for k, v in vars(demo).items() if k != "group"} == {
        k: v for k, v in vars(run).items() if k != "group"
    }
    assert (demo.profile, demo.run_name, demo.param, demo.overrides) == (
        "local",
        "r1",
        ["base_model=tiny"],
        ["sft.max_steps=2"],
    )
