"""The reference divergences, one small object per divergence: the float64 truth of docs/math.md §1.

Each object gives, for its parameter ``a`` (beta, alpha or lambda; ignored by the others):

- ``definition``: f(r) exactly as docs/math.md writes it, as a function of r;
- ``f``, ``psi``, ``h`` as functions of the log-ratio l = log r = log p - log q, for finite l;
- ``limits``: their values at r -> 0 (l = -inf) and r -> inf (l = +inf);
- ``qf``: the categorical term q f(p/q) from (log q, log p), both finite.

Written from the mathematics, not from the kernels (csrc/include/fdiv_ops/divergences.h): the tests hold
f, psi, h, their limits and qf to ``definition`` evaluated in 50-digit arithmetic (psi = F - F', h = F'' - F'
with F(l) = f(e^l); tests/test_reference.py), psi and h to autograd of f (tests/test_divergences.py), and the
kernels to these objects.

Forms. Every formula is arranged so that no exponential overflows before the algebra is done and no inf
meets a 0 or another inf, so any finite float64 log-ratio (|l| > 709 included) gives the value rounded to
float64, inf only where the value itself is beyond float64: logs of sums by logaddexp, expm1 where r is near
1, and categorical terms written on the side (q or p) whose exponent cannot overflow. What remains
inexact is cancellation where the value is tiny: f(r) ~ f''(1)(r - 1)^2 / 2 near r = 1 is resolved to about
1e-16 absolutely, not relatively.

Adding a divergence: one subclass here, whose `name` enters it in TABLE (CONTRIBUTING.md has the list of
places a new divergence touches).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Tensor = torch.Tensor
LOG2 = math.log(2.0)
INF = math.inf


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x), exact to rounding for every x (F.softplus switches to x at 20, a 2e-9 error)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + e^-x) without the overflow of e^-x (so e^x stays exact in the subnormal range)."""
    return torch.exp(-softplus(-x))


def exp_mul(x: Tensor, g: Tensor | float) -> Tensor:
    """e^x g, finite wherever the product is: e^(x/2) (e^(x/2) g), so e^x may exceed float64 (x > 709.78)
    while |g| < 1 brings the product back in range (js's f at l = 710 is 0.69 e^710 = 1.5e308)."""
    half = torch.exp(0.5 * x)
    return half * (half * g)


def log_mix(l: Tensor, log_a: float, log_b: float) -> Tensor:
    """log(a r + b) = logaddexp(log a + l, log b): the log of a mixture, with r = e^l never formed."""
    return torch.logaddexp(l + log_a, torch.full_like(l, log_b))


def split(cond: Tensor, left: Callable, right: Callable, *args: Tensor) -> Tensor:
    """left(*args) where cond, right(*args) elsewhere. Each side sees only its own entries (the others are
    replaced by 0), so the overflow of one side's form never reaches the other's value or gradient."""
    zero = torch.zeros_like(args[0])
    a = left(*(torch.where(cond, x, zero) for x in args))
    b = right(*(torch.where(cond, zero, x) for x in args))
    return torch.where(cond, a, b)


# name -> object, for every divergence of fdiv_ops.DIVERGENCES: filled by defining a subclass with a name
# (RefDivergence.__init_subclass__), so adding a divergence here is writing its class and nothing else.
# tests/test_reference.py checks that the names are exactly fdiv_ops.DIVERGENCES.
TABLE: dict[str, RefDivergence] = {}


class RefDivergence:
    """One divergence. Subclasses write f, psi, h for finite l, qf for finite (log q, log p), and limits."""

    name = ""  # the name in fdiv_ops.DIVERGENCES; a subclass without one is not a table entry

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            TABLE[cls.name] = cls()

    def canonical(self, a: float) -> tuple[RefDivergence, float]:
        """The object and parameter that evaluate this divergence at `a` (a parametric family may hand its
        endpoints to another object, e.g. gkd_jsd(0) to forward_kl)."""
        return self, a

    def definition(self, r, a: float, m):
        """f(r) as docs/math.md defines it, written with the functions of the module `m` (math, or mpmath for
        the tests' 50-digit closed forms): the formula every other method here is held to."""
        raise NotImplementedError

    def limits(self, a: float) -> dict[str, tuple[float, float]]:
        """{"f" | "psi" | "h": (value at r -> 0, value at r -> inf)}."""
        raise NotImplementedError

    def f(self, l: Tensor, a: float) -> Tensor:
        raise NotImplementedError

    def psi(self, l: Tensor, a: float) -> Tensor:
        raise NotImplementedError

    def h(self, l: Tensor, a: float) -> Tensor:
        raise NotImplementedError

    def log_h(self, l: Tensor, a: float) -> Tensor:
        """log h for finite l; overridden where h itself can overflow at moderate l (alpha)."""
        return torch.log(self.h(l, a))

    def qf(self, lq: Tensor, lp: Tensor, a: float) -> Tensor:
        raise NotImplementedError


class Zero(RefDivergence):
    """f = 0: the skew divergences at lambda = 1 compare a distribution with itself (not a table entry)."""

    def definition(self, r, a, m):
        return 0 * r

    def limits(self, a):
        return {"f": (0.0, 0.0), "psi": (0.0, 0.0), "h": (0.0, 0.0)}

    def f(self, l, a):
        return 0.0 * l  # still a function of l, so autograd sees a (zero) gradient

    psi = h = f

    def qf(self, lq, lp, a):
        return 0.0 * (lq + lp)


class ForwardKL(RefDivergence):
    """f = r log r: KL(p || q)."""

    name = "forward_kl"

    def definition(self, r, a, m):
        return r * m.log(r)

    def limits(self, a):
        return {"f": (0.0, INF), "psi": (0.0, -INF), "h": (0.0, INF)}

    def f(self, l, a):
        return torch.exp(l) * l

    def psi(self, l, a):
        return -torch.exp(l)

    def h(self, l, a):
        return torch.exp(l)

    def log_h(self, l, a):
        return l

    def qf(self, lq, lp, a):  # q r log r = p (log p - log q)
        return torch.exp(lp) * (lp - lq)


class ReverseKL(RefDivergence):
    """f = -log r: KL(q || p)."""

    name = "reverse_kl"

    def definition(self, r, a, m):
        return -m.log(r)

    def limits(self, a):
        return {"f": (INF, -INF), "psi": (INF, -INF), "h": (1.0, 1.0)}

    def f(self, l, a):
        return -l

    def psi(self, l, a):
        return 1 - l

    def h(self, l, a):
        return torch.ones_like(l)

    def qf(self, lq, lp, a):
        return torch.exp(lq) * (lq - lp)


class JS(RefDivergence):
    """f = r log r - (r + 1) log((r + 1)/2): KL(p || m) + KL(q || m), m = (p + q)/2."""

    name = "js"

    def definition(self, r, a, m):
        return r * m.log(r) - (r + 1) * m.log((r + 1) / 2)

    def limits(self, a):
        return {"f": (LOG2, INF), "psi": (LOG2, -INF), "h": (0.0, 1.0)}

    def f(self, l, a):  # r log(2r/(r+1)) + log(2/(r+1)), each log in softplus form
        return exp_mul(l, LOG2 - softplus(-l)) + (LOG2 - softplus(l))

    def psi(self, l, a):
        return LOG2 - softplus(l)

    def h(self, l, a):
        return sigmoid(l)

    def log_h(self, l, a):
        return -softplus(-l)

    def qf(self, lq, lp, a):
        lm = torch.logaddexp(lp, lq) - LOG2
        return torch.exp(lp) * (lp - lm) + torch.exp(lq) * (lq - lm)


class GkdJsd(RefDivergence):
    """GKD's generalised JSD: b KL(p || m) + (1 - b) KL(q || m), m = b p + (1 - b) q, i.e. with
    M = m/q = b r + 1 - b, f = b r log(r/M) - (1 - b) log M. TRL's endpoints: b = 0 is forward_kl, b = 1 is
    reverse_kl (the formula itself tends to 0 at both)."""

    name = "gkd_jsd"

    def definition(self, r, a, m):
        mix = a * r + 1 - a
        return a * r * m.log(r / mix) - (1 - a) * m.log(mix)

    def canonical(self, a):
        if a == 0.0:
            return FORWARD_KL, 0.0
        if a == 1.0:
            return REVERSE_KL, 0.0
        return self, a

    def limits(self, b):
        at_zero = -(1 - b) * math.log1p(-b)
        return {"f": (at_zero, INF), "psi": (at_zero, -INF), "h": (0.0, 1 - b)}

    def f(self, l, b):  # log(r/M) = -log(b + (1 - b)/r): no cancellation of two large logs
        log_m, log_r_over_m = log_mix(l, math.log(b), math.log1p(-b)), -log_mix(-l, math.log1p(-b), math.log(b))
        return exp_mul(l, b * log_r_over_m) - (1 - b) * log_m

    def psi(self, l, b):
        return -(1 - b) * log_mix(l, math.log(b), math.log1p(-b))

    def h(self, l, b):  # b (1 - b) r / M
        return b * (1 - b) * torch.exp(-log_mix(-l, math.log1p(-b), math.log(b)))

    def qf(self, lq, lp, b):
        lm = torch.logaddexp(lp + math.log(b), lq + math.log1p(-b))
        return b * torch.exp(lp) * (lp - lm) + (1 - b) * torch.exp(lq) * (lq - lm)


class SquaredHellinger(RefDivergence):
    """f = 1 - sqrt(r): 1 - sum sqrt(p q)."""

    name = "squared_hellinger"

    def definition(self, r, a, m):
        return 1 - m.sqrt(r)

    def limits(self, a):
        return {"f": (1.0, -INF), "psi": (1.0, -INF), "h": (0.0, INF)}

    def f(self, l, a):
        return -torch.expm1(0.5 * l)

    def psi(self, l, a):
        return 1 - exp_mul(0.5 * l, 0.5)

    def h(self, l, a):
        return exp_mul(0.5 * l, 0.25)

    def log_h(self, l, a):
        return 0.5 * l - math.log(4.0)

    def qf(self, lq, lp, a):  # q - sqrt(pq) = -q expm1(l/2) = sqrt(pq) expm1(-l/2)
        return split(
            lp <= lq,
            lambda lq, lp: -torch.exp(lq) * torch.expm1(0.5 * (lp - lq)),
            lambda lq, lp: torch.exp(0.5 * (lp + lq)) * torch.expm1(0.5 * (lq - lp)),
            lq,
            lp,
        )


class SoftenedRKL(RefDivergence):
    """f = (r + 1) log((r + 1)/(2r)): 2 KL(m || p), m = (p + q)/2."""

    name = "softened_rkl"

    def definition(self, r, a, m):
        return (r + 1) * m.log((r + 1) / (2 * r))

    def limits(self, a):
        return {"f": (INF, -INF), "psi": (INF, 1 - LOG2), "h": (1.0, 0.0)}

    def f(self, l, a):  # log((r+1)/(2r)) = softplus(-l) - log 2
        g = softplus(-l) - LOG2
        return exp_mul(l, g) + g

    def psi(self, l, a):
        return softplus(-l) - LOG2 + 1

    def h(self, l, a):
        return sigmoid(-l)

    def log_h(self, l, a):
        return -softplus(l)

    def qf(self, lq, lp, a):  # (p + q) log((p + q)/(2p)) = 2 m (log m - log p)
        lm = torch.logaddexp(lp, lq) - LOG2
        return 2 * torch.exp(lm) * (lm - lp)


class Jeffreys(RefDivergence):
    """f = (r - 1) log r: KL(p || q) + KL(q || p)."""

    name = "jeffreys"

    def definition(self, r, a, m):
        return (r - 1) * m.log(r)

    def limits(self, a):
        return {"f": (INF, INF), "psi": (INF, -INF), "h": (1.0, INF)}

    def f(self, l, a):
        return torch.expm1(l) * l

    def psi(self, l, a):
        return -l - torch.expm1(l)

    def h(self, l, a):
        return torch.exp(l) + 1

    def log_h(self, l, a):
        return softplus(l)

    def qf(self, lq, lp, a):  # (p - q) l with p - q = q expm1(l) = -p expm1(-l)
        return split(
            lp <= lq,
            lambda lq, lp: torch.exp(lq) * torch.expm1(lp - lq) * (lp - lq),
            lambda lq, lp: -torch.exp(lp) * torch.expm1(lq - lp) * (lp - lq),
            lq,
            lp,
        )


class TotalVariation(RefDivergence):
    """f = |r - 1| / 2: sum |p - q| / 2. psi = -sign(r - 1)/2 with sign(0) = 0; h = 0."""

    name = "total_variation"

    def definition(self, r, a, m):
        return abs(r - 1) / 2

    def limits(self, a):
        return {"f": (0.5, INF), "psi": (0.5, -0.5), "h": (0.0, 0.0)}

    def f(self, l, a):
        return split(l <= 0, lambda l: -0.5 * torch.expm1(l), lambda l: exp_mul(l, -0.5 * torch.expm1(-l)), l)

    def psi(self, l, a):
        return -0.5 * torch.sign(l)

    def h(self, l, a):
        return torch.zeros_like(l)

    def qf(self, lq, lp, a):  # |p - q| / 2
        return split(
            lp <= lq,
            lambda lq, lp: 0.5 * torch.exp(lq) * torch.abs(torch.expm1(lp - lq)),
            lambda lq, lp: 0.5 * torch.exp(lp) * torch.abs(torch.expm1(lq - lp)),
            lq,
            lp,
        )


class PearsonChi2(RefDivergence):
    """f = (r - 1)^2: sum (p - q)^2 / q."""

    name = "pearson_chi2"

    def definition(self, r, a, m):
        return (r - 1) ** 2

    def limits(self, a):
        return {"f": (1.0, INF), "psi": (1.0, -INF), "h": (0.0, INF)}

    def f(self, l, a):
        return torch.expm1(l) ** 2

    def psi(self, l, a):
        return -torch.expm1(2 * l)

    def h(self, l, a):
        return 2 * torch.exp(2 * l)

    def log_h(self, l, a):
        return LOG2 + 2 * l

    def qf(self, lq, lp, a):  # (p - q)^2 / q = q expm1(l)^2 = (p^2 / q) expm1(-l)^2
        return split(
            lp <= lq,
            lambda lq, lp: torch.exp(lq) * torch.expm1(lp - lq) ** 2,
            lambda lq, lp: torch.exp(2 * lp - lq) * torch.expm1(lq - lp) ** 2,
            lq,
            lp,
        )


class NeymanChi2(RefDivergence):
    """f = (r - 1)^2 / r: sum (p - q)^2 / p."""

    name = "neyman_chi2"

    def definition(self, r, a, m):
        return (r - 1) ** 2 / r

    def limits(self, a):
        return {"f": (INF, INF), "psi": (INF, -2.0), "h": (INF, 0.0)}

    def f(self, l, a):  # (r - 1)(1 - 1/r): neither factor overflows into inf * 0
        return -torch.expm1(l) * torch.expm1(-l)

    def psi(self, l, a):
        return 2 * torch.expm1(-l)

    def h(self, l, a):
        return 2 * torch.exp(-l)

    def log_h(self, l, a):
        return LOG2 - l

    def qf(self, lq, lp, a):  # (p - q)^2 / p = p expm1(-l)^2 = (q^2 / p) expm1(l)^2
        return split(
            lp >= lq,
            lambda lq, lp: torch.exp(lp) * torch.expm1(lq - lp) ** 2,
            lambda lq, lp: torch.exp(2 * lq - lp) * torch.expm1(lp - lq) ** 2,
            lq,
            lp,
        )


class Alpha(RefDivergence):
    """Amari's alpha: f = (r^a - a r - (1 - a)) / (a (a - 1)), a not in {0, 1} (the limits are reverse_kl
    and forward_kl)."""

    name = "alpha"

    def definition(self, r, a, m):
        return (r**a - a * r - (1 - a)) / (a * (a - 1))

    # Below this exponent the expm1 form (exact near r = 1) is used; beyond it the three powers separately.
    NEAR = 30.0

    def limits(self, a):
        if a > 0:
            return {"f": (1 / a, INF), "psi": (1 / a, -INF), "h": (0.0, INF)}
        return {"f": (INF, INF), "psi": (INF, 1 / a), "h": (INF, 0.0)}

    def f(self, l, a):
        m = max(a, 1.0)  # the fastest growth of the three powers as l -> +inf

        def near(l):
            return (torch.expm1(a * l) - a * torch.expm1(l)) / (a * (a - 1))

        def far(l):  # e^(m l) times powers scaled by e^(-m l): the bracket tends to a nonzero constant,
            # so nothing overflows before the final product and that product is never inf * 0
            bracket = torch.exp((a - m) * l) - a * torch.exp((1 - m) * l) - (1 - a) * torch.exp(-m * l)
            return exp_mul(m * l, bracket / (a * (a - 1)))

        return split(l * m <= self.NEAR, near, far, l)

    def psi(self, l, a):
        return split(
            a * l <= 0, lambda l: -torch.expm1(a * l) / a, lambda l: exp_mul(a * l, torch.expm1(-a * l) / a), l
        )

    def h(self, l, a):
        return torch.exp(a * l)

    def log_h(self, l, a):
        return a * l

    def qf(self, lq, lp, a):  # (p^a q^(1-a) - a p - (1 - a) q) / (a (a - 1))
        def near(lq, lp):
            l = lp - lq
            return torch.exp(lq) * (torch.expm1(a * l) - a * torch.expm1(l)) / (a * (a - 1))

        def far(lq, lp):
            return (torch.exp(a * lp + (1 - a) * lq) - a * torch.exp(lp) - (1 - a) * torch.exp(lq)) / (a * (a - 1))

        l = lp - lq
        return split((l.abs() <= self.NEAR) & ((a * l).abs() <= self.NEAR), near, far, lq, lp)


class SkewForwardKL(RefDivergence):
    """DistiLLM's SKL: KL(p || lam p + (1 - lam) q); with M = lam r + 1 - lam, f = r log(r / M).
    lam = 0 is forward_kl, lam = 1 is 0."""

    name = "skew_forward_kl"

    def definition(self, r, a, m):
        return r * m.log(r / (a * r + 1 - a))

    def canonical(self, lam):
        if lam == 0.0:
            return FORWARD_KL, 0.0
        if lam == 1.0:
            return ZERO, 0.0
        return self, lam

    def limits(self, lam):
        return {"f": (0.0, INF), "psi": (0.0, -(1 - lam) / lam), "h": (0.0, 0.0)}

    @staticmethod
    def _log_r_over_m(l, lam):  # -log(lam + (1 - lam)/r)
        return -log_mix(-l, math.log1p(-lam), math.log(lam))

    def f(self, l, lam):
        return exp_mul(l, self._log_r_over_m(l, lam))

    def psi(self, l, lam):  # -(1 - lam) r / M
        return -(1 - lam) * torch.exp(self._log_r_over_m(l, lam))

    def h(self, l, lam):  # (1 - lam)^2 r / M^2
        log_m = log_mix(l, math.log(lam), math.log1p(-lam))
        return (1 - lam) ** 2 * torch.exp(self._log_r_over_m(l, lam) - log_m)

    def qf(self, lq, lp, lam):  # p (log p - log(lam p + (1 - lam) q))
        lm = torch.logaddexp(lp + math.log(lam), lq + math.log1p(-lam))
        return torch.exp(lp) * (lp - lm)


class SkewReverseKL(RefDivergence):
    """DistiLLM's SRKL: KL(q || (1 - lam) p + lam q); with N = (1 - lam) r + lam, f = -log N.
    lam = 0 is reverse_kl, lam = 1 is 0."""

    name = "skew_reverse_kl"

    def definition(self, r, a, m):
        return -m.log((1 - a) * r + a)

    def canonical(self, lam):
        if lam == 0.0:
            return REVERSE_KL, 0.0
        if lam == 1.0:
            return ZERO, 0.0
        return self, lam

    def limits(self, lam):
        at_zero = -math.log(lam)
        return {"f": (at_zero, -INF), "psi": (at_zero, -INF), "h": (0.0, 1.0)}

    @staticmethod
    def _log_n(l, lam):
        return log_mix(l, math.log1p(-lam), math.log(lam))

    @staticmethod
    def _u(l, lam):  # (1 - lam) r / N
        return sigmoid(l + math.log1p(-lam) - math.log(lam))

    def f(self, l, lam):
        return -self._log_n(l, lam)

    def psi(self, l, lam):
        return -self._log_n(l, lam) + self._u(l, lam)

    def h(self, l, lam):
        return self._u(l, lam) ** 2

    def qf(self, lq, lp, lam):  # q (log q - log((1 - lam) p + lam q))
        ln = torch.logaddexp(lp + math.log1p(-lam), lq + math.log(lam))
        return torch.exp(lq) * (lq - ln)


ZERO = Zero()
FORWARD_KL = TABLE["forward_kl"]
REVERSE_KL = TABLE["reverse_kl"]


def lookup(name: str, param: float | None) -> tuple[RefDivergence, float]:
    """The object (and parameter) that evaluates divergence `name` at `param` (None: no parameter)."""
    return TABLE[name].canonical(0.0 if param is None else float(param))


def _log_or_minus_inf(x: float) -> float:
    return -INF if x == 0 else math.log(x)


def elementwise(obj: RefDivergence, which: str, l: Tensor, a: float) -> Tensor:
    """f, psi, h or log_h (`which`) at every entry of l: the finite formula where l is finite, the limits
    at l = -inf and +inf, and NaN where l is NaN (never a silent number from a NaN)."""
    x = torch.where(torch.isfinite(l), l, torch.zeros_like(l))
    value = getattr(obj, which)(x, a)
    at_zero, at_inf = obj.limits(a)["h" if which == "log_h" else which]
    if which == "log_h":
        at_zero, at_inf = _log_or_minus_inf(at_zero), _log_or_minus_inf(at_inf)
    value = torch.where(l == -INF, at_zero, value)
    value = torch.where(l == INF, at_inf, value)
    return torch.where(torch.isnan(l), l, value)


def categorical(obj: RefDivergence, log_q: Tensor, log_p: Tensor, a: float) -> Tensor:
    """The terms q_v f(p_v/q_v) (elementwise; sum them over v for the divergence).

    An entry that is -inf on either side contributes 0 (masked vocabulary, padding). An entry that is NaN
    or +inf on either side is NaN, whatever the other side: a log-probability is never +inf, so such an
    entry is an error upstream, and it must reach the row's sum (NaN in, NaN out for that row)."""
    bad = torch.isnan(log_q) | torch.isnan(log_p) | (log_q == INF) | (log_p == INF)
    dropped = (log_q == -INF) | (log_p == -INF)
    skip = bad | dropped
    zero = torch.zeros_like(log_q)
    terms = obj.qf(torch.where(skip, zero, log_q), torch.where(skip, zero, log_p), a)
    terms = torch.where(dropped, zero, terms)
    return torch.where(bad, math.nan, terms)
