"""The code version recorded with runs: environment first, git otherwise."""

from tasks import version


def test_the_environment_wins_even_after_a_git_lookup(monkeypatch):
    monkeypatch.delenv("FORGEFLOW_CODE_VERSION", raising=False)
    from_git = version.code_version()
    assert from_git and from_git != "image-sha"
    monkeypatch.setenv("FORGEFLOW_CODE_VERSION", "image-sha")
    assert version.code_version() == "image-sha"
    monkeypatch.delenv("FORGEFLOW_CODE_VERSION")
    assert version.code_version() == from_git
