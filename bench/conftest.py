import os
import sys

# baselines come from the tests (Liger-Kernel style)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
