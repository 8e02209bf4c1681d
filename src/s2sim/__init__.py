"""s2sim: an executable model of KVM/arm64 stage-2 page-table management."""

__version__ = "0.1.0"
