"""The libraries' known-harmless notices are silenced around the package's calls only."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from dmtg_nas.quiet import LIBRARY_LOGGERS, quiet_libraries, set_verbose

from .conftest import planted_doc

_NOISE = ("GPU available", "TPU available", "litlogger", "is found to be not a nn.Module", "LeafSpec", "max_epochs")


def test_filters_and_levels_are_restored_on_the_way_out() -> None:
    logger = logging.getLogger(LIBRARY_LOGGERS[0])
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            filters = list(warnings.filters)
            with quiet_libraries():
                assert logger.getEffectiveLevel() == logging.WARNING
                warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
                warnings.warn("a real problem", UserWarning, stacklevel=1)
            assert logger.level == logging.INFO and warnings.filters == filters
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
        assert [str(w.message) for w in seen] == ["a real problem", "`isinstance(treespec, LeafSpec)` is deprecated"]
        set_verbose(True)
        with quiet_libraries():
            assert logger.getEffectiveLevel() == logging.INFO
    finally:
        set_verbose(False)
        logger.setLevel(level)


def test_python_api_search_prints_none_of_the_libraries_notices() -> None:
    """A fresh interpreter with Python's default warning filters: importing the baselines (NNI) and a
    search through the API write nothing of Lightning's or NNI's on stderr."""
    code = f"""
import warnings, dmtg_nas
import dmtg_nas.baselines
before = list(warnings.filters)
result = dmtg_nas.search(dmtg_nas.load_spec({planted_doc()!r}))
assert warnings.filters == before, "the search left warning filters behind"
print(sorted(t for g in result.groups for t in g))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "['t0', 't1', 't2', 't3']" in done.stdout
    for noise in _NOISE:
        assert noise not in done.stderr, done.stderr[-2000:]
