"""Suite-wide set-up: 8 fake CPU devices for mesh tests, and a token-store cache of its own.

XLA reads the flag once, when jax is first imported, so it is set here — before any test module
imports jax. Tests that want one device build a one-device mesh explicitly; tests that run
`capidsl` in a subprocess pass their own environment.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Token stores go to one directory per test session (subprocesses inherit it), never to ~/.cache:
# the suite prepares each corpus once and a fresh clone starts from nothing, as CI does.
if "CAPIDSL_CACHE" not in os.environ:
    import tempfile

    os.environ["CAPIDSL_CACHE"] = tempfile.mkdtemp(prefix="capidsl-test-cache-")
