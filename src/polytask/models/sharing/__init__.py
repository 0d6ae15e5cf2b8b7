"""Sharing architectures, one file each, registered in `ARCHITECTURES`."""

from polytask.models.sharing.base import ARCHITECTURES, SharingArchitecture
from polytask.registry import import_submodules

import_submodules(__name__)

__all__ = ["ARCHITECTURES", "SharingArchitecture"]
