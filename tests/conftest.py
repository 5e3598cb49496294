"""Four fake CPU devices for every test (2-4 keeps XLA's CPU collectives reliable on 2 cores)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
