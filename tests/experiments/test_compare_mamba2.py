"""`mambalab compare --models mamba mamba2` at the smoke size: Mamba-2 trains, decodes and is named."""

from __future__ import annotations

from mambalab.experiments.compare import compare
from mambalab.experiments.presets import get_compare_preset


def test_smoke_compare_with_mamba2_names_it_in_the_report_and_findings(tmp_path):
    results = compare("smoke", models=["mamba", "mamba2"], tasks=["mqar"], studies=["cost", "efficiency"],
                      out_dir=tmp_path, device="cpu", progress=False)
    assert [r for r in results["runs"] if r["status"] != "ok"] == []
    mamba2 = [r for r in results["runs"] if r["spec"]["family"] == "mamba2"]
    assert {r["group"] for r in mamba2} == {"main", "efficiency"}
    assert all(set(r["config"]["layer_pattern"]) == {"mamba2"} for r in mamba2)
    assert results["cost"]["mamba2"]["status"] == "ok"
    report = (tmp_path / "report.md").read_text()
    assert "Mamba-2" in report
    config = next(r["config"] for r in mamba2 if r["group"] == "main")
    shape = f"| mamba2 | {config['n_layer']} × d{config['d_model']}, N={config['mamba2']['d_state']} |"
    assert shape in report  # the task table names the matched Mamba-2's depth, width and state size
    assert any(f["id"] == "mqar_state" for f in results["findings"])
    assert any(f["id"] == "decode_mamba2" for f in results["findings"])


def test_mamba2_is_a_default_of_standard_and_paper_only():
    assert "mamba2" not in get_compare_preset("quick").models  # the README's ≤10-minute job stays as it was
    for name in ("standard", "paper"):
        preset = get_compare_preset(name)
        assert "mamba2" in preset.models and "mamba2" in preset.state.families, name
