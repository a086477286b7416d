from __future__ import annotations

import hypothesis

hypothesis.settings.register_profile("ci", deadline=None, max_examples=100)
hypothesis.settings.register_profile("dev", deadline=None, max_examples=50)
hypothesis.settings.load_profile("ci")
