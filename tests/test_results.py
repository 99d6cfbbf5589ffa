"""ssm_edu.results: the measured results the chapters quote (benchmark rows and recorded chapter runs)."""

import json

from ssm_edu import results


def test_record_is_a_no_op_for_readers(tmp_path, monkeypatch):
    monkeypatch.delenv("SSM_EDU_RECORD_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    results.record("99_chapter", accuracy=0.5)
    assert not list(tmp_path.rglob("*.json"))


def test_record_then_recorded(tmp_path, monkeypatch):
    """A recorded run (benchmarks/notebooks.py sets the variable) merges values; the committed form reads back."""
    monkeypatch.setenv("SSM_EDU_RECORD_DIR", str(tmp_path / "records"))
    results.record("99_chapter", accuracy={"2": 0.5})
    results.record("99_chapter", steps=100)
    doc = json.loads((tmp_path / "records" / "99_chapter.json").read_text())
    assert doc["values"] == {"accuracy": {"2": 0.5}, "steps": 100}
    assert doc["device"] and doc["torch"] and doc["date"]
    # the committed file: one per device, chapters as keys (as benchmarks/notebooks.py combines them)
    runs = tmp_path / "chapter_runs"
    runs.mkdir()
    (runs / "some-gpu.json").write_text(json.dumps(
        {"device": "Some GPU", "chapters": {"99_chapter": {k: v for k, v in doc.items() if k != "device"}}}))
    monkeypatch.setattr(results, "CHAPTER_RUNS", runs)
    (got,) = results.recorded("99_chapter")
    assert got["device"] == "Some GPU" and got["values"]["steps"] == 100
    assert results.recorded("98_other") == []
