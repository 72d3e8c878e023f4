"""Datasets, partitioning and the per-process federated data cache."""

from fl_app.data.datasets import ArrayDataset, DatasetUnavailableError
from fl_app.data.federated import (
    CentralData,
    ClientData,
    DataFileError,
    FederatedData,
    load_central_data,
    load_client_data,
    load_client_file,
    load_federated_data,
    prepare_federated_data,
)
from fl_app.data.partitioning import PartitionError, partition_indices

__all__ = [
    "ArrayDataset",
    "CentralData",
    "ClientData",
    "DataFileError",
    "DatasetUnavailableError",
    "FederatedData",
    "PartitionError",
    "load_central_data",
    "load_client_data",
    "load_client_file",
    "load_federated_data",
    "prepare_federated_data",
    "partition_indices",
]
