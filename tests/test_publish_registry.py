"""A publish destination is one module plus one line in infra.publish.destinations.DESTINATIONS (issue #31):
tests/listing_destination.py, registered here, is built from its option, checked with every other destination
before any is written to, and publishes; a failing check stops every destination. Its flag for `job run` and
`job push` is the one thing outside that module and line: a ``group="publish", destination=True`` field of
job.config (tests/test_structure.py ties those fields to DESTINATIONS)."""

from __future__ import annotations

import json

import pytest
from conftest import make_run_dir
from listing_destination import ListingDestination

from infra.publish import destinations as D
from job.errors import JobError


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(D, "DESTINATIONS", [*D.DESTINATIONS, ListingDestination])  # the one line


def _run(tmp_path):
    return make_run_dir(tmp_path)  # a finished run's layout (the folder destination checks it)


def test_a_destination_added_as_one_module_is_built_checked_and_published(registered, tmp_path):
    root = _run(tmp_path)
    listing, copy = tmp_path / "listing.json", tmp_path / "published"
    dests = D.destinations(listing_file=str(listing), publish_dir=str(copy), run_dir=root)
    assert [type(d) for d in dests] == [D.FolderDestination, ListingDestination]
    line = D.publish_all(root, dests, echo=lambda _: None)
    listed = json.loads(listing.read_text())
    assert listed["model/model.safetensors"] == (root / "model" / "model.safetensors").stat().st_size
    assert any(copy.rglob("model.safetensors"))  # and the other destination published too
    assert "listing " in line and "folder " in line
    with pytest.raises(JobError) as err:  # nothing named: the fix lists the new destination's option too
        D.publish_all(root, D.destinations(), echo=lambda _: None)
    assert "--listing-file FILE" in err.value.fix and "--s3-uri s3://BUCKET/PREFIX" in err.value.fix


def test_its_failing_check_stops_every_destination_before_any_is_written(registered, tmp_path):
    root, copy = _run(tmp_path), tmp_path / "published"
    dests = D.destinations(listing_file=str(tmp_path / "missing" / "l.json"), publish_dir=str(copy), run_dir=root)
    with pytest.raises(JobError, match="does not exist"):
        D.publish_all(root, dests, echo=lambda _: None)
    assert not any(copy.rglob("*.safetensors"))  # the folder destination was checked, never written


def test_an_option_no_destination_owns_is_refused():
    with pytest.raises(TypeError, match="listing_file"):
        D.destinations(listing_file="x")
