"""Which files `citynerve flash` may remove (citynerve/flash_manifest.py): only those its manifest
lists, that the new bundle does not have and that the board still holds as flash wrote them."""

from __future__ import annotations

from citynerve.flash_manifest import MANIFEST, Manifest, folders_of, stale_files


def test_only_listed_unchanged_files_missing_from_the_new_bundle_are_stale() -> None:
    old = Manifest("air-pico", {"main.py": "a", "lib/firmware/loop.mpy": "b", "lib/firmware/gone.mpy": "c",
                                "lib/firmware/edited.mpy": "d"})
    on_board = {"main.py": "a", "lib/firmware/loop.mpy": "b", "lib/firmware/gone.mpy": None,
                "lib/firmware/edited.mpy": "changed", "notes.txt": "x"}
    plan = stale_files(old, ["main.py", "config.json"], on_board)
    assert plan.known
    assert plan.remove == ["lib/firmware/loop.mpy"]
    assert plan.kept == ["lib/firmware/edited.mpy"], "changed on the board since flash wrote it"


def test_a_board_without_a_manifest_loses_nothing() -> None:
    plan = stale_files(None, ["main.py"], {"lib/firmware/old.mpy": "a"})
    assert (plan.remove, plan.kept, plan.known) == ([], [], False)


def test_a_manifest_round_trips_and_a_bad_one_is_no_manifest() -> None:
    manifest = Manifest("cab-pico", {"main.py": "a" * 64, "lib/x.mpy": "b" * 64}, pending=True)
    assert Manifest.parse(manifest.to_bytes()) == manifest
    for raw in (None, b"", b"not json", b"[]", b'{"format": 2, "files": {}}', b'{"format": 1}'):
        assert Manifest.parse(raw) is None, raw
    hostile = b'{"format":1,"board":"b","files":{"../etc/x":"a","/abs":"a","a//b":"a","%s":"a","ok.py":"a"}}' % (
        MANIFEST.encode())
    parsed = Manifest.parse(hostile)
    assert parsed is not None and parsed.files == {"ok.py": "a"}, "only plain paths inside the board"


def test_emptied_folders_are_tried_deepest_first() -> None:
    assert folders_of(["lib/firmware/drivers/loop.mpy", "lib/firmware/x.mpy", "top.py"]) == [
        "lib/firmware/drivers", "lib/firmware", "lib"]
