"""The study's tests run with the library's test set-up, alone (``pytest study/tests``) or with the library's
(``pytest tests study/tests``, in either order):

* the repository's ``tests/`` is on ``sys.path``, so test modules here ``from helpers import ...`` as there;
* ``tests/conftest.py``'s hooks (``--assume-native-bf16``, the ``once`` / ``fp32_only`` marks) are active once:
  if pytest has not loaded that conftest yet, it is registered here under the name pytest gives a conftest
  (its path), so pytest finds it registered when it reaches ``tests/`` and does not load it a second time;
* its fixtures (``tiny_vit``, ``embedded``, ``tiny_weights``, the isolated ``PGN_HOME`` ...) are visible here too.
"""
import importlib.util
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2] / "tests"
ROOT_CONFTEST = TESTS / "conftest.py"

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_root = _load(ROOT_CONFTEST, "pgn_tests_conftest")


def pytest_addoption(parser, pluginmanager):
    if pluginmanager.get_plugin(str(ROOT_CONFTEST)) is None:
        pluginmanager.register(_root, name=str(ROOT_CONFTEST))  # its own pytest_addoption runs now


# tests/conftest.py's fixtures, autouse ones included (a conftest's fixtures are visible only below its folder,
# so they are defined here again): everything it defines but its hooks, which are registered once, above.
globals().update({name: value for name, value in vars(_root).items()
                  if not name.startswith(("pytest_", "__")) and name not in globals()})
