"""requirements.lock pins every package of requirements.txt at a version inside its range (`make lock` after a change)."""

from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]


def lines(name: str) -> list[str]:
    return [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()
            if line.split("#")[0].strip()]


def test_the_lock_pins_every_requirement_inside_its_range():
    locked = {}
    for line in lines("requirements.lock"):
        name, _, version = line.partition("==")
        assert version, f"requirements.lock: {line!r} is not an exact pin"
        locked[canonicalize_name(name)] = version
    for line in lines("requirements.txt"):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is in requirements.txt but not in requirements.lock: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock has {name}=={locked[name]}, outside requirements.txt's {requirement}: run make lock")
