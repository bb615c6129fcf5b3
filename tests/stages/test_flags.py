"""Config at the edges: flags generated from the config dataclasses, JSON with clear errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from vqrec.cli import main as vqrec
from vqrec.core.model import ModelConfig
from vqrec.core.trainer import TrainConfig, finetune_config
from vqrec.orchestration import pipeline
from vqrec.stages import train
from vqrec.stages.codes import CodesConfig, build_parser
from vqrec.stages.flags import add_config_flags, config_from_dict, config_kwargs

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Toy:
    count: int = field(default=3, metadata={"help": "how many"})
    rate: float = field(default=0.5, metadata={"help": "how fast"})
    name: str | None = field(default=None, metadata={"help": "a name (default: none)"})
    tags: tuple[str, ...] = field(default=("a", "b"), metadata={"help": "comma-separated"})
    kind: str = field(default="x", metadata={"help": "which", "choices": ("x", "y")})
    fast: bool = field(default=False, metadata={"help": "go fast"})
    checked: bool = field(default=True, metadata={"help": "check"})


def _toy_parser(**kw) -> tuple[argparse.ArgumentParser, list[str]]:
    parser = argparse.ArgumentParser(prog="toy")
    return parser, add_config_flags(parser, Toy, **kw)


def test_flags_carry_the_dataclass_types_defaults_and_help() -> None:
    parser, names = _toy_parser()
    assert names == ["count", "rate", "name", "tags", "kind", "fast", "checked"]
    assert Toy(**config_kwargs(parser.parse_args([]), names)) == Toy()
    args = parser.parse_args(
        ["--count", "7", "--rate", "2", "--name", "n", "--tags", "p, q,,r", "--kind", "y"]
        + ["--fast", "--no-checked"]
    )
    assert Toy(**config_kwargs(args, names)) == Toy(7, 2.0, "n", ("p", "q", "r"), "y", True, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "z"])  # choices from the field's metadata
    text = " ".join(parser.format_help().split())
    for shown in (
        "how many (default: 3)",
        "--rate RATE how fast (default: 0.5)",
        "a name (default: none)",
        "comma-separated (default: a,b)",
        "which (default: x)",
        "go fast (default: False)",
        "--checked, --no-checked check (default: True)",
    ):
        assert shown in text, shown
    assert "(default: None)" not in text  # None is explained by the field's own help


def test_defaults_only_skip_and_overrides() -> None:
    parser, names = _toy_parser(
        defaults={"count": 9}, only=["kind", "count", "fast"], skip=["fast"],
        overrides={"kind": {"choices": ["y"]}},
    )  # fmt: skip
    assert names == ["kind", "count"]
    assert config_kwargs(parser.parse_args([]), names) == {"kind": "x", "count": 9}
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "x"])
    with pytest.raises(ValueError, match=r"Toy has no fields \['nope'\]"):
        _toy_parser(only=["nope"])


def test_unknown_json_keys_are_a_value_error_naming_them_and_the_known_ones() -> None:
    assert config_from_dict(Toy, {"count": 1}, "--toy") == Toy(count=1)
    with pytest.raises(ValueError) as err:
        config_from_dict(TrainConfig, {"lr": 0.1, "nope": 1, "epoch": 2}, "hyper.finetune")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("hyper.finetune: unknown TrainConfig key(s) ['epoch', 'nope']")
    assert "known: mode, epochs, batch_size, lr" in message
    with pytest.raises(ValueError, match=r"--model-config must be a JSON object, not \[1\]"):
        config_from_dict(ModelConfig, [1], "--model-config")
    with pytest.raises(ValueError, match=r"\['item_encoder'\] cannot be set here"):
        config_from_dict(ModelConfig, {"item_encoder": "id"}, "--model-config", item_encoder="vq")


def _one_line_error(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"vqrec {command}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_bad_model_config_key_exits_2_with_one_line(tmp_path, capsys) -> None:
    common = ["--lake", str(tmp_path / "lake"), "--no-progress"]
    argv = ["finetune", *common, "--domain", "d", "--model-config", json.dumps({"nope": 1})]
    assert vqrec(argv) == 2
    assert "--model-config: unknown ModelConfig key(s) ['nope']" in _one_line_error(
        capsys, "finetune"
    )
    assert vqrec(["pretrain", *common, "--domains", "d", "--model-config", '{"hiden": 8}']) == 2
    assert "['hiden']; known: item_encoder" in _one_line_error(capsys, "pretrain")
    argv = ["finetune", *common, "--domain", "d", "--model-config", '{"item_encoder": "id"}']
    assert vqrec(argv) == 2  # --item-encoder is its own flag
    assert "['item_encoder'] cannot be set here" in _one_line_error(capsys, "finetune")
    assert not (tmp_path / "lake").exists()  # refused before anything is written


def _help(capsys: pytest.CaptureFixture, command: str) -> str:
    with pytest.raises(SystemExit) as done:
        vqrec([command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_each_commands_defaults(capsys) -> None:
    text = _help(capsys, "finetune")
    for shown in (
        "Adam learning rate (default: by --mode, transfer 0.1, full 0.003, scratch 0.001)",
        "(default: all)",
        "--permutation {matched,learned,identity,random}",
        "(default: matched)",
        "--mode {transfer,full,scratch}",
        "(default: transfer)",
        "--bucket, --no-bucket",
        "--epochs EPOCHS upper bound; early stopping usually ends first (default: 300)",
    ):
        assert shown in text, shown
    text = _help(capsys, "pretrain")
    assert "Adam learning rate (default: 0.001)" in text and "(default: 0.75)" in text
    assert "(default: last)" in text and "--permutation " not in text


def _captured_configs(monkeypatch, argv: list[str]) -> dict:
    seen: dict = {}

    def fake_finetune(lake, version, domain, cfg, model_cfg, **kw):
        seen.update(cfg=cfg, model=model_cfg)
        return SimpleNamespace(metrics={"test": {}})

    def fake_pretrain(lake, version, domains, cfg, model_cfg, *rest):
        seen.update(cfg=cfg, model=model_cfg, domains=domains)
        return None  # as a DDP rank other than 0: nothing printed

    monkeypatch.setattr(train, "finetune_to_lake", fake_finetune)
    monkeypatch.setattr(train, "pretrain_to_lake", fake_pretrain)
    assert vqrec([*argv, "--no-mlflow"]) == 0  # nothing is trained: no run to log
    return seen


def test_cli_configs_keep_their_defaults_and_old_flags(tmp_path, monkeypatch, capsys) -> None:
    lake = ["--lake", str(tmp_path)]
    seen = _captured_configs(monkeypatch, ["finetune", *lake, "--domain", "d"])
    assert seen["cfg"] == finetune_config()
    assert seen["model"] == ModelConfig()
    argv = ["finetune", *lake, "--domain", "d", "--no-bucket", "--no-progress", "--amp"]
    argv += ["--mode", "full", "--permutation", "learned", "--model-config", '{"hidden": 64}']
    argv += ["--item-encoder", "id", "--time-budget-min", "1.5", "--valid-rows", "100"]
    seen = _captured_configs(monkeypatch, argv)
    assert seen["cfg"] == finetune_config(
        mode="full", permutation="learned", bucket=False, progress=False, amp=True,
        time_budget_min=1.5, valid_rows=100,
    )  # fmt: skip
    assert seen["model"] == ModelConfig(hidden=64, item_encoder="id")
    seen = _captured_configs(monkeypatch, ["pretrain", *lake, "--domains", "a, b"])
    assert seen["cfg"] == TrainConfig() and seen["domains"] == ["a", "b"]
    argv = ["pretrain", *lake, "--domains", "a", "--rho", "0.5", "--valid-rows", "10"]
    seen = _captured_configs(monkeypatch, argv)
    assert seen["cfg"] == TrainConfig(rho=0.5, valid_rows=10)


def test_codes_flags_are_codes_config_fields() -> None:
    parser = build_parser()
    argv = ["--pretrain-domains", "b,a", "--target-domains", "c", "--no-strict", "--normalize"]
    cfg = CodesConfig(**vars(parser.parse_args(argv + ["--niter", "4", "--bits", "4"])))
    assert cfg == CodesConfig(
        pretrain_domains=("a", "b"), target_domains=("c",), strict=False, normalize=True,
        niter=4, bits=4,
    )  # fmt: skip
    defaults = CodesConfig(**{**vars(parser.parse_args([])), "pretrain_domains": ("a",)})
    assert defaults == CodesConfig(pretrain_domains=("a",))


def _plan(tmp_path, hyper: dict) -> pipeline.RunPlan:
    return pipeline.RunPlan(
        lake=str(tmp_path), raw_root=str(tmp_path), version="v1", domains=["a"],
        pretrain_domains=["a"], target_domains=["a"], hyper=hyper,
    )  # fmt: skip


def test_bad_hyper_keys_are_one_line_errors(tmp_path) -> None:
    plan = _plan(tmp_path, {"finetune": {"lr": 0.1}, "model": {"hidden": 64}})
    cfg, model = pipeline._train_configs(plan, "finetune", defaults={"mode": "transfer"})
    assert (cfg.lr, cfg.progress, model.hidden) == (0.1, False, 64)
    for hyper, what, key in (
        ({"finetune": {"nope": 1}}, "hyper.finetune", "nope"),
        ({"model": {"hiden": 64}}, "hyper.model", "hiden"),
    ):
        with pytest.raises(ValueError) as err:
            pipeline._train_configs(_plan(tmp_path, hyper), "finetune")
        assert str(err.value).startswith(f"{what}: unknown ") and f"['{key}']" in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^hyper.codes: unknown CodesConfig key\(s\) \['bitz'\]"):
        pipeline._code_stage(_plan(tmp_path, {"codes": {"bitz": 4}}), ["a"], [])
    with pytest.raises(ValueError, match=r"^hyper.codes: \['lake'\] cannot be set here"):
        pipeline._code_stage(_plan(tmp_path, {"codes": {"lake": "/x"}}), ["a"], [])


def test_encode_and_clean_take_domains_comma_separated_only(monkeypatch, capsys) -> None:
    encode = pytest.importorskip("vqrec.spark.encode")
    clean = pytest.importorskip("vqrec.spark.clean")
    seen: list = []

    class Stop(Exception):
        pass

    def fake_config(**kw):
        seen.append(kw["domains"])
        raise Stop

    monkeypatch.setattr(encode, "EncodeConfig", fake_config)
    monkeypatch.setattr(clean, "CleanConfig", fake_config)
    for argv in (["--domains", "A,B"], ["--domains", " A, B,"], []):
        with pytest.raises(Stop):
            encode.main(argv)
        with pytest.raises(Stop):
            clean.main(["--raw", "r", *argv])
    assert seen == [["A", "B"]] * 4 + [None] * 2
    # One form: a space-separated second name is refused, not half-read.
    with pytest.raises(SystemExit) as exit_info:
        encode.main(["--domains", "A", "B"])
    assert exit_info.value.code == 2 and "unrecognized arguments: B" in capsys.readouterr().err


COMMANDS = ("pretrain", "finetune", "codes", "evaluate", "baselines", "register")


def test_help_imports_neither_torch_nor_faiss_nor_mlflow() -> None:
    """`vqrec <command> --help` answers without loading the heavy libraries: judged in a
    fresh interpreter by what is in sys.modules after each command's --help, not by time."""
    script = """
import json, sys
from vqrec.cli import main
loaded = {}
for command in sys.argv[1:]:
    try:
        main([command, "--help"])
    except SystemExit as done:
        assert done.code == 0, command
    loaded[command] = sorted(
        m for m in sys.modules if m.split(".")[0] in ("torch", "faiss", "mlflow")
    )
print(json.dumps(loaded))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, *COMMANDS],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=True,
    )  # fmt: skip
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {command: [] for command in COMMANDS}


def test_every_flag_says_what_it_is_and_its_default(monkeypatch) -> None:
    parsers: dict[str, argparse.ArgumentParser] = {}

    def capture(self, args=None, namespace=None):
        parsers[self.prog] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            vqrec([command])
    assert sorted(parsers) == sorted(f"vqrec {c}" for c in COMMANDS)
    for prog, parser in parsers.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text, flag = action.help or "", f"{prog} {action.option_strings[0]}"
            assert text and not text.startswith("(default"), f"{flag}: no help text"
            assert "(default" in text or action.required, f"{flag}: no default shown"
            assert "(required)" in text or not action.required, f"{flag}: not said required"


def test_a_config_field_without_help_is_refused() -> None:
    @dataclass
    class Bare:
        count: int = 1

    with pytest.raises(TypeError, match="Bare.count has no metadata help"):
        add_config_flags(argparse.ArgumentParser(), Bare)


def test_evaluate_batch_size_default_is_eval_configs() -> None:
    from vqrec.core.metrics import EvalConfig
    from vqrec.stages import evaluate

    assert evaluate.EVAL_BATCH_SIZE == EvalConfig.batch_size
    assert evaluate.build_parser().parse_args(["--domain", "d"]).batch_size == EvalConfig.batch_size
