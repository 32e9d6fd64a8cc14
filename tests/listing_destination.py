"""A publish destination added the way a contributor adds one: this module and one line in
infra.publish.destinations.DESTINATIONS (tests/test_publish_registry.py adds it). It writes the list of the run's
files, with their sizes, to a JSON file: what an inventory or a model registry would receive."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from job.errors import JobError


@dataclass
class ListingDestination:
    path: str
    name: str = "listing"
    option: ClassVar[str] = "listing_file"
    example: ClassVar[str] = "--listing-file FILE"
    reads: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_options(cls, o: dict[str, Any]) -> ListingDestination:
        return cls(o["listing_file"])

    def check(self) -> None:
        if not Path(self.path).parent.is_dir():
            raise JobError(f"The listing's folder {Path(self.path).parent} does not exist.", "create it first.")

    def publish(self, root: Path, *, echo, progress: bool) -> str:
        files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
        Path(self.path).write_text(json.dumps(files))
        return f"listing {self.path} ({len(files)} files)"
