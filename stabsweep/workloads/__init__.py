"""Workloads: what a trial trains. Built-ins by name, user factories by path (docs/contract.md, "Workloads")."""

from stabsweep.workloads.base import TensorBatches, Workload
from stabsweep.workloads.factory import BUILTIN_WORKLOADS, WorkloadFactory, resolve_factory

__all__ = ["BUILTIN_WORKLOADS", "TensorBatches", "Workload", "WorkloadFactory", "resolve_factory"]
