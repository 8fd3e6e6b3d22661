"""``trust_remote_code`` reaches lm-eval. Here, beside the other eval tests, so the
lm-eval import is paid once per session."""

from __future__ import annotations


def test_trust_remote_code_reaches_lm_eval(monkeypatch, tmp_path):
    """The eval stage hands ``trust_remote_code`` to lm-eval's HFLM (its model_args)."""
    import lm_eval.models.huggingface as hf

    from kd import evaluate

    seen = []
    monkeypatch.setattr(hf, "HFLM", lambda **kwargs: seen.append(kwargs) or "lm")
    for trust in (True, False):
        assert evaluate.build_language_model(str(tmp_path), "hf", "float32", 1, "cpu",
                                              trust_remote_code=trust) == "lm"
    assert [k["trust_remote_code"] for k in seen] == [True, False]
