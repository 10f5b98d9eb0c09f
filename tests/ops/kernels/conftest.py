"""Run the Triton kernels on the CPU through Triton's interpreter.

``TRITON_INTERPRET`` must be set before the kernel modules are imported (``triton.jit`` reads it when it
decorates). No other test directory uses Triton, so setting it here for the process is harmless.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
