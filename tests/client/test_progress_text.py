"""How progress events read in `status` and `--follow`."""
from xfed.job_text import progress_text


def test_progress_text_uses_what_the_event_carries():
    assert progress_text({"round": 2, "rounds": 5, "step": 40, "steps": 100, "eta_s": 65.2}) == \
        "round 2/5, step 40/100, eta 1m05s"
    assert progress_text({"fraction": 0.25}) == "25%"
    assert progress_text({"round": 1, "rounds": 3, "fraction": 0.3, "eta_s": 0}) == "round 1/3"
    assert progress_text({}) == ""


def test_progress_text_shows_the_privacy_budget_spent():
    assert progress_text({"round": 3, "rounds": 4, "dp_epsilon": 6.92, "dp_delta": 1e-5}) == \
        "round 3/4, dp eps 6.92 (delta 1e-05)"
