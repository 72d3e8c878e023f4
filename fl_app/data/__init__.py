"""Datasets, partitioning and the per-process federated data cache."""

from fl_app.data.datasets import ArrayDataset, DatasetUnavailableError
from fl_app.data.federated import (
    ClientData,
    DataFileError,
    FederatedData,
    load_client_file,
    load_federated_data,
    prepare_federated_data,
)
from fl_app.data.partitioning import PartitionError, partition_indices

__all__ = [
    "ArrayDataset",
    "ClientData",
    "DataFileError",
    "DatasetUnavailableError",
    "FederatedData",
    "PartitionError",
    "load_client_file",
    "load_federated_data",
    "prepare_federated_data",
    "partition_indices",
]
