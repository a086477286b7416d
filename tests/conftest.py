from __future__ import annotations

import os

import hypothesis

# CI tests the same examples on every run (derandomize), so a red run always means a change;
# HYPOTHESIS_PROFILE=deep explores ten times more, from a fresh random seed each time.
hypothesis.settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True)
hypothesis.settings.register_profile("deep", deadline=None, max_examples=1000)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
