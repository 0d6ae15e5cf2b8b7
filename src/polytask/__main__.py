"""`python -m polytask` (also what `torchrun -m polytask` runs)."""

from polytask.cli import main

main()
