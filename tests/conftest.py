"""Shared test configuration: Hypothesis profiles (select with HYPOTHESIS_PROFILE)."""

import os

from hypothesis import settings

# No per-example deadline: a loaded CI machine must not turn slow examples into
# failures. Derandomized so every run explores the same examples.
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
