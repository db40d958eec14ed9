import os
import sys

# tests/naive.py (the slow references) is imported as `naive` by the test modules.
sys.path.insert(0, os.path.dirname(__file__))
