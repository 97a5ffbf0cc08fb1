"""The huge-page malloc tunable is added to an environment once, and never over a choice already made."""

from app.engine.malloc import with_huge_pages


def test_tunable_is_added_to_an_empty_environment():
    assert with_huge_pages({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_tunable_joins_other_tunables():
    environ = with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_a_choice_already_made_is_kept():
    assert with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
