"""Registry, configs and atomic writes: the shared mechanisms every family uses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from defectlab.config import from_dict, load_yaml, to_dict, write_json, write_yaml
from defectlab.errors import BadInputError, ConfigError
from defectlab.registry import Registry


def test_registry_refuses_duplicates_and_suggests_close_names() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("patchcore")
    class A:  # noqa: D401
        pass

    with pytest.raises(ValueError, match="registered twice"):
        reg.register("patchcore")(A)
    assert reg.get("patchcore") is A
    with pytest.raises(ConfigError, match="did you mean 'patchcore'"):
        reg.get("patchcor")
    assert reg.names("patch*") == ["patchcore"] and "patchcore" in reg


@dataclass
class Inner:
    lr: float = 0.1


@dataclass
class Outer:
    name: str = "x"
    size: tuple[int, int] = (8, 8)
    inner: Inner = field(default_factory=Inner)
    out: Path = Path("runs")


def test_from_dict_converts_nested_and_refuses_unknown_keys() -> None:
    cfg = from_dict(Outer, {"size": [4, 6], "inner": {"lr": 1}, "out": "a/b"})
    assert cfg.size == (4, 6) and cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.out == Path("a/b")
    assert to_dict(cfg) == {"name": "x", "size": [4, 6], "inner": {"lr": 1.0}, "out": "a/b"}
    with pytest.raises(ConfigError, match=r"config.inner: unknown option\(s\) \['lrr'\]"):
        from_dict(Outer, {"inner": {"lrr": 2}})


def test_yaml_round_trip_and_bad_yaml(tmp_path: Path) -> None:
    write_yaml(tmp_path / "c.yaml", Outer())
    assert from_dict(Outer, load_yaml(tmp_path / "c.yaml")) == Outer()
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(BadInputError, match="bad.yaml: invalid YAML"):
        load_yaml(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(BadInputError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(BadInputError, match="cannot read config"):
        load_yaml(tmp_path / "missing.yaml")


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", {"a": Path("x")})
    write_json(tmp_path / "r.json", {"a": 2})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
