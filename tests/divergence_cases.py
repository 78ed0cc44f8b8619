"""The divergences every parametrised test runs over, derived from fdiv_ops.DIVERGENCES (the C++ table).

A divergence without a parameter is one case; a parametric one is one case per value in PARAMETER_VALUES,
the only list a new divergence may need here (its endpoints, its default and an interior value are good
picks). A parametric divergence missing from it fails at import, so it cannot go untested by accident.
"""

import fdiv_ops

# Values to test for each parametric divergence (the union of what the op tests have always covered).
PARAMETER_VALUES: dict[str, tuple[float, ...]] = {
    "gkd_jsd": (0.0, 0.1, 0.3, 0.5, 0.9, 1.0),  # 0 and 1 are TRL's forward_kl / reverse_kl endpoints
    "alpha": (-0.5, 0.5, 2.0),
    "skew_forward_kl": (0.0, 0.1, 0.7, 1.0),
    "skew_reverse_kl": (0.0, 0.1, 0.7, 1.0),
}


def takes_parameter(name: str) -> bool:
    """Whether the divergence `name` has a parameter (fdiv_ops.Divergence refuses it without one)."""
    try:
        fdiv_ops.Divergence(name)
    except ValueError:
        return True
    return False


def _cases() -> list[str | fdiv_ops.Divergence]:
    missing = [name for name in fdiv_ops.DIVERGENCES if takes_parameter(name) and name not in PARAMETER_VALUES]
    if missing:
        raise AssertionError(f"tests/divergence_cases.py: add the parameter values to test for {missing}")
    cases: list[str | fdiv_ops.Divergence] = []
    for name in fdiv_ops.DIVERGENCES:
        if not takes_parameter(name):
            cases.append(name)
        else:
            cases.extend(fdiv_ops.Divergence(name, value) for value in PARAMETER_VALUES[name])
    return cases


ALL = _cases()
IDS = [str(d) for d in ALL]
