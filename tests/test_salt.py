"""The pseudonym salt comes from HER2STUDY_SALT only: on the command line or in a config file it
would be a secret in plain text (``.hydra/*.yaml``, shell history); such a run stops first."""

import logging

from conftest import CONF, run_cli
from omegaconf import OmegaConf, open_dict

from her2study.__main__ import run
from her2study.privacy import salt_override, salt_problem

SALT = "s3cret-salt-4711"


def test_salt_override_detection(monkeypatch):
    monkeypatch.delenv("HER2STUDY_SALT", raising=False)
    assert salt_override([f"data.pseudonym_salt={SALT}"])
    assert salt_override([f"+data.pseudonym_salt={SALT}", "task=paper"])
    assert salt_override([f"++data.pseudonym_salt={SALT}"])
    assert not salt_override(["data.pseudonym_salt=null", "data.pseudonymise=true"])
    assert salt_problem(None) is None
    monkeypatch.setenv("HER2STUDY_SALT", SALT)
    assert salt_problem(SALT) is None  # from the environment: fine
    assert "export HER2STUDY_SALT" in salt_problem(SALT, [f"data.pseudonym_salt={SALT}"])
    assert "export HER2STUDY_SALT" in salt_problem("other")
    assert SALT not in salt_problem(SALT, [f"data.pseudonym_salt={SALT}"])


def test_salt_in_hydra_overrides_is_refused_and_redacted(tmp_path, monkeypatch, caplog):
    """Inside a Hydra job (HydraConfig set): refused before the task, and the copies Hydra
    already wrote to .hydra/ are redacted."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.delenv("HER2STUDY_SALT", raising=False)
    monkeypatch.chdir(tmp_path)
    overrides = ["tracking=off", "data.pseudonymise=true", f"data.pseudonym_salt={SALT}"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    hydra_dir = tmp_path / "run" / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(f"- data.pseudonym_salt={SALT}\n")
    (hydra_dir / "config.yaml").write_text(f"data:\n  pseudonym_salt: {SALT}\n")
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    try:
        job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        with caplog.at_level(logging.ERROR, logger="her2study"):
            assert run(job_cfg) == 2
    finally:
        HydraConfig.instance().cfg = None
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "export HER2STUDY_SALT=... instead" in errors[0], errors
    assert SALT not in errors[0]
    for path in hydra_dir.iterdir():
        assert SALT not in path.read_text(), path
    assert not (tmp_path / "outputs").exists()  # no work done


def test_salt_on_the_command_line_stops_before_hydra_writes(tmp_path, monkeypatch):
    env = {k: v for k, v in __import__("os").environ.items() if k != "HER2STUDY_SALT"}
    res = run_cli(
        [
            "task=extract",
            "tracking=off",
            "data.pseudonymise=true",
            f"data.pseudonym_salt={SALT}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        code=2,
        timeout=300,
        env=env,
    )
    out = res.stderr + res.stdout
    assert "export HER2STUDY_SALT=... instead" in out and "Traceback" not in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1, out
    assert SALT not in out
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no .hydra/*.yaml, no outputs
