"""requirements.txt pins what pyproject.toml allows, and leaves torch to the test extra."""

import os
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pins() -> dict:
  """requirements.txt as {canonical name: (version, requirement line)}."""
  pinned = {}
  with open(os.path.join(REPO, "requirements.txt")) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      requirement = Requirement(line)
      (specifier,) = requirement.specifier
      assert specifier.operator == "==", f"requirements.txt: {line} is not an exact pin"
      name = canonicalize_name(requirement.name)
      assert name not in pinned, f"requirements.txt pins {name} twice"
      pinned[name] = (specifier.version, line)
  return pinned


def project() -> dict:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def test_every_dependency_is_pinned_inside_its_range():
  pinned = pins()
  for line in project()["dependencies"]:
    requirement = Requirement(line)
    name = canonicalize_name(requirement.name)
    assert name in pinned, f"pyproject.toml depends on {name}, which requirements.txt does not pin"
    version = pinned[name][0]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"requirements.txt pins {name}=={version}, outside pyproject.toml's {requirement}")


def test_test_only_packages_are_not_pinned():
  pinned = pins()
  for line in project()["optional-dependencies"]["test"]:
    name = canonicalize_name(Requirement(line).name)
    assert name not in pinned, (f"{name} is test-only: it belongs in pyproject.toml's test "
                                "extra, not in requirements.txt")
  assert "neft-jax" not in pinned
