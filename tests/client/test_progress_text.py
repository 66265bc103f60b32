"""How progress events read in `status` and `--follow`."""
from xfed.client import progress_text


def test_progress_text_uses_what_the_event_carries():
    assert progress_text({"round": 2, "rounds": 5, "step": 40, "steps": 100, "eta_s": 65.2}) == \
        "round 2/5, step 40/100, eta 1m05s"
    assert progress_text({"fraction": 0.25}) == "25%"
    assert progress_text({"round": 1, "rounds": 3, "fraction": 0.3, "eta_s": 0}) == "round 1/3"
    assert progress_text({}) == ""
