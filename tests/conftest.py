import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)


def pytest_collection_modifyitems(items):
    # Fast tests first; the testbed lifecycle test (which takes the testbed down) before the
    # end-to-end tests (which bring it up and leave it for the next test in the same session).
    def rank(item):
        return 2 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("testbed") else 0
    items.sort(key=rank)
