"""Set `OMP_WAIT_POLICY=PASSIVE` before torch loads its OpenMP runtime, unless the user set it.

OpenMP reads the variable once, when torch is first imported. By default its idle threads
spin while they wait for work, which on a shared or small machine steals the cores the other
threads need; passive threads sleep instead. polytask's `__init__` imports this module before
anything that imports torch, so it only takes effect when polytask is imported first (as the
`polytask` command does); export the variable yourself otherwise.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
