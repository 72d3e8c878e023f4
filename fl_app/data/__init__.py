"""Datasets, partitioning and the per-process federated data cache."""

from fl_app.data.datasets import ArrayDataset, DatasetUnavailableError
from fl_app.data.federated import ClientData, FederatedData, load_federated_data
from fl_app.data.partitioning import PartitionError, partition_indices

__all__ = [
    "ArrayDataset",
    "ClientData",
    "DatasetUnavailableError",
    "FederatedData",
    "PartitionError",
    "load_federated_data",
    "partition_indices",
]
