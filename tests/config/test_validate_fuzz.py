"""Random damage to a valid config folder: always exit 0 or 2 with well-formed lines, never a traceback."""
from __future__ import annotations

import json
import random
import re

from xfed.config.validate import validate_command

JUNK = [None, True, 0, -1, 1.5, "", "x", "[BAD]", [], [1], {}, {"k": 1}, "NaN", 10**30]
LINE = re.compile(r"^(fed_conf\.json|trainer_config_[^:]+\.json)(: stage \d+)?(: [^:]+)?: .+$")


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _damage(rng: random.Random, value):
    paths = [p for p in _paths(value) if p]
    path = rng.choice(paths)
    parent = value
    for part in path[:-1]:
        parent = parent[part]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(JUNK)


def test_random_damage_never_crashes_validation(config_set, capsys):
    rng = random.Random(1234)
    cs = config_set("3party_lora")
    files = sorted(p.name for p in cs.folder.glob("*.json"))
    originals = {name: cs.read(name) for name in files}
    for _ in range(80):
        for name, value in originals.items():
            cs.write(name, value)
        name = rng.choice(files)
        value = json.loads(json.dumps(originals[name]))
        for _ in range(rng.randint(1, 3)):
            _damage(rng, value)
        cs.write(name, value)
        code = validate_command(cs.folder)
        out, err = capsys.readouterr()
        assert code in (0, 2) and "Traceback" not in out + err and "unexpectedly" not in err, (name, value, err)
        if code == 2:
            lines = out.splitlines()
            assert lines and all(LINE.match(line) for line in lines), out
