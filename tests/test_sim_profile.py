"""Platform profiles (sim/profile.py): the shipped one loads, bad ones are refused
with a ConfigError naming the key and, where the key is in the text, its line."""

from __future__ import annotations

from importlib import resources

import pytest

from s2sim.errors import ConfigError
from s2sim.sim.costs import CostModel
from s2sim.sim.profile import COST_KEYS, load_profile, parse_profile, shipped_profiles

SHIPPED = resources.files("s2sim.profiles").joinpath("kunpeng920.toml").read_text("utf-8")


def _line(text: str, prefix: str) -> int:
    """1-based number of the line starting with `prefix` (independent of _line_of)."""
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(prefix)]
    assert len(hits) == 1, (prefix, hits)
    return hits[0]


def _replace(old_prefix: str, new_line: str) -> tuple[str, int]:
    """The shipped text with the line starting `old_prefix` replaced; and that line's number."""
    n = _line(SHIPPED, old_prefix)
    lines = SHIPPED.splitlines()
    lines[n - 1] = new_line
    return "\n".join(lines) + "\n", n


def _err(text: str) -> str:
    with pytest.raises(ConfigError) as e:
        parse_profile(text, "bad.toml")
    msg = str(e.value)
    assert "\n" not in msg and "bad.toml" in msg
    return msg


def test_shipped_profile_loads():
    assert "kunpeng920" in shipped_profiles()
    p = load_profile("kunpeng920")
    assert p.name == "kunpeng920" and p.source == "kunpeng920"
    assert (p.fwb, p.ha, p.ttl) == (False, False, False)
    assert (p.tlb_capacity, p.walk_capacity, p.tlb_policy) == (1152, 64, "lru")
    assert set(p.costs) == set(COST_KEYS)
    assert all(isinstance(v, float) and v >= 0 for v in p.costs.values())
    # fitted parameters stay inside their physical bounds (sim/calibrate.py)
    from s2sim.sim.calibrate import FREE
    for k, (lo, hi, _) in FREE.items():
        assert lo <= p.costs[k] <= hi, k
    # the same file by path gives the same profile, and the cost model accepts it
    path = resources.files("s2sim.profiles").joinpath("kunpeng920.toml")
    q = load_profile(str(path))
    assert q.costs == p.costs and q.to_dict()["tlb"] == p.to_dict()["tlb"]
    cm = CostModel(p)
    # n bytes at b B/ns take ceil(n / b) ns
    b = p.costs["cmo_bytes_per_ns"]
    assert cm.access == int(p.costs["guest_access_ns"])
    assert cm.cmo_ns(round(1000 * b)) in (1000, 1001)


def test_unknown_platform_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="nosuch.*unknown.*kunpeng920"):
        load_profile("nosuch")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_profile(str(tmp_path / "missing.toml"))


def test_malformed_toml_reports_line():
    text, n = _replace("exit_ns", "exit_ns = = 1200")
    msg = _err(text)
    assert "not valid TOML" in msg and f"line {n}" in msg


def test_unknown_cost_key_named_with_line():
    text = SHIPPED.replace("[costs]\n", "[costs]\nbogus_ns = 5\n")
    n = _line(text, "bogus_ns")
    msg = _err(text)
    assert "costs.bogus_ns" in msg and f"(line {n})" in msg and "not a known cost" in msg


def test_unknown_platform_key_named_with_line():
    text = SHIPPED.replace("[platform]\n", "[platform]\nturbo = true\n")
    msg = _err(text)
    assert "platform.turbo" in msg and f"(line {_line(text, 'turbo')})" in msg


def test_unknown_section_named():
    msg = _err(SHIPPED + "\n[extras]\nx = 1\n")
    assert "key extras" in msg and "not a known section" in msg


def test_missing_cost_named():
    text, _ = _replace("dsb_ns", "")
    msg = _err(text)
    assert "costs.dsb_ns" in msg and "is missing" in msg
    assert "(line" not in msg  # a missing key has no line


def test_missing_platform_name():
    text, _ = _replace('name = "kunpeng920"', "")
    assert "platform.name" in _err(text)


@pytest.mark.parametrize("prefix, new, key", [
    ("exit_ns", 'exit_ns = "fast"', "costs.exit_ns"),
    ("exit_ns", "exit_ns = true", "costs.exit_ns"),
    ("exit_ns", "exit_ns = nan", "costs.exit_ns"),
    ("fwb", 'fwb = "no"', "platform.fwb"),
    ("capacity", "capacity = 1.5", "tlb.capacity"),
    ("capacity", "capacity = true", "tlb.capacity"),
])
def test_wrong_type_named_with_line(prefix, new, key):
    text, n = _replace(prefix, new)
    msg = _err(text)
    assert key in msg and f"(line {n})" in msg and "must be a" in msg


@pytest.mark.parametrize("prefix, new, key", [
    ("pte_write_ns", "pte_write_ns = -1", "costs.pte_write_ns"),
    ("cmo_bytes_per_ns", "cmo_bytes_per_ns = 0", "costs.cmo_bytes_per_ns"),
    ("host_zero_bytes_per_ns", "host_zero_bytes_per_ns = -19.0", "costs.host_zero_bytes_per_ns"),
    ("guest_access_ns", "guest_access_ns = 0", "costs.guest_access_ns"),
    ("guest_access_ns", "guest_access_ns = 0.5", "costs.guest_access_ns"),
    ("capacity", "capacity = 0", "tlb.capacity"),
    ("policy", 'policy = "random"', "tlb.policy"),
])
def test_out_of_range_named_with_line(prefix, new, key):
    text, n = _replace(prefix, new)
    msg = _err(text)
    assert key in msg and f"(line {n})" in msg


def test_zero_cost_is_allowed_where_it_means_free():
    # A free effect is a valid model (e.g. an ideal CMO-less platform's DSB).
    text, _ = _replace("dsb_ns", "dsb_ns = 0")
    assert parse_profile(text, "free-dsb").costs["dsb_ns"] == 0.0


def test_profile_file_by_path(tmp_path):
    f = tmp_path / "custom.toml"
    f.write_text(SHIPPED.replace('name = "kunpeng920"', 'name = "custom"'), encoding="utf-8")
    p = load_profile(str(f))
    assert p.name == "custom" and p.source == str(f)
