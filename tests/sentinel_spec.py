"""Microsoft's Sentinel OpenAPI files, which the contract tests read: where they are expected.

They live outside the repository, in ``shared/api/sentinel-openapi`` beside it (REFERENCE "Main
sources"). A test that needs them uses the ``sentinel_spec`` fixture (or :data:`needs_spec`),
which fails the test when they are missing: a contract test that skips proves nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

API_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "api"
SPEC_ROOT = API_FOLDER / "sentinel-openapi" / "specification"
STABLE = SPEC_ROOT / "securityinsights" / "resource-manager" / "Microsoft.SecurityInsights" / "stable"

needs_spec = pytest.mark.usefixtures("sentinel_spec")


def require_spec() -> Path:
    """The ``stable`` folder of the Sentinel specification; fails the calling test if it is missing."""
    if not STABLE.is_dir():
        pytest.fail(
            f"Microsoft's Sentinel OpenAPI files are missing: expected the folder {STABLE} "
            "(shared/api/sentinel-openapi beside the repository)",
            pytrace=False,
        )
    return STABLE
