"""Run-time name resolution: nginx's ``resolver`` (:mod:`wsgate.resolver.client`) and how a
DNS response is read (:mod:`wsgate.resolver.answers`)."""

from wsgate.resolver.answers import TIMEDOUT, strerror
from wsgate.resolver.client import Resolved, ResolveError, Resolver

__all__ = ["TIMEDOUT", "ResolveError", "Resolved", "Resolver", "strerror"]
