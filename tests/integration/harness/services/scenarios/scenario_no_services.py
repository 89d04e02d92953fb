"""Inner run: a test like the unit tier's, which must not start anything."""


def test_needs_no_services() -> None:
    assert 1 + 1 == 2
