"""The malloc tunables are added to an environment once, and never over a choice already made."""

import os
import subprocess
import sys
import textwrap

from common.malloc import TUNABLES, with_tunables

ALL = ":".join(f"{name}={value}" for name, value in TUNABLES.items())


def test_tunables_are_added_to_an_empty_environment():
    assert with_tunables({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": ALL}


def test_tunables_join_other_tunables():
    environ = with_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert environ["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{ALL}"


def test_a_choice_already_made_is_kept():
    environ = with_tunables({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert environ["GLIBC_TUNABLES"].startswith("glibc.malloc.hugetlb=0:")
    assert environ["GLIBC_TUNABLES"].count("glibc.malloc.hugetlb=") == 1
    assert "glibc.malloc.mmap_threshold=" in environ["GLIBC_TUNABLES"]


def test_an_environment_with_all_of_them_is_left_alone():
    assert with_tunables({"GLIBC_TUNABLES": ALL}) is None
    assert with_tunables(with_tunables({})) is None


def test_release_returns_freed_heap_memory_to_the_kernel():
    """Under the tunables, 1 MB blocks come from the heap; freeing every other one keeps
    the pages until ``release`` hands them back."""
    script = textwrap.dedent(
        """
        from common.malloc import release

        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096

        blocks = [bytearray(b"x" * (1 << 20)) for _ in range(400)]
        del blocks[::2]
        before = rss()
        release()
        print(before - rss())
        """
    )
    env = {**os.environ, "GLIBC_TUNABLES": ALL}
    freed = int(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout)
    assert freed > 100 << 20  # most of the 200 MB freed in the middle of the heap


def test_a_script_runs_itself_again_in_place_with_the_tunables(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
            from common.malloc import exec_with_tunables
            exec_with_tunables()
            """
        )
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"PYTHONPATH": repo}
    run = [sys.executable, str(script), "--flag", "x"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, check=True)
    first, second = out.stdout.splitlines()  # the second run has them, and does not run itself again
    pid, tunables, argv = first.split(" ", 2)
    assert tunables == "None" and second == f"{pid} {ALL} {argv}" and argv == "['--flag', 'x']"
