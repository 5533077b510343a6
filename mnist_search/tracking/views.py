"""A study's page in MLflow's UI: its trials one row each, best first, and a params-vs-accuracy chart.

MLflow 3's runs page nests child runs under their parent (a study opens as one collapsed row)
unless the table is filtered or sorted by something other than its start time; then every
matching run is a row of its own. Its "share view" stores the page's state (the filter, the
order, the columns, the charts) as JSON in an experiment tag `mlflow.sharedViewState.<key>`, and
a link with `viewStateShareKey=<key>` opens the page in that state. So each study publishes one
such view when it starts, and the link it prints opens on it: the study's trials by `rank`
(1 = best, the study's own ranking rule), with their size, scores, gap to the target and
architecture, and in the chart view a params-vs-accuracy scatter and the gap to 99.4 % (0 is the
target; MLflow's scatter has no reference line). The user can change all of it in the UI; the
link opens the study's view again.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse

import mlflow

from mnist_search.tracking import names

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow UI's prefix for a shared view's tag
# The table's columns, in order: MLflow UI's column keys (`metrics.`name``, `tags.`name``).
COLUMNS = (
    ("metrics", names.RANK),
    ("metrics", names.PARAMS),
    ("metrics", names.VAL_SCORE),
    ("metrics", names.SEEDS_TRAINED),
    ("metrics", names.TEST_MIN_LAST3),
    ("metrics", names.GAP_TEST),
    ("metrics", names.GAP_VAL),
    ("tags", names.TARGET_MET),
    ("tags", "arch"),
    ("tags", names.STATE),
)


def column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


def view_key(study_name: str) -> str:
    """The view's key: the study's name where it is a plain tag key, else a plain form of it
    with a digest of the name (two studies never share a view)."""
    plain = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
    if plain == study_name:
        return f"study-{plain}"
    return f"study-{plain[:150]}-{hashlib.sha1(study_name.encode()).hexdigest()[:8]}"


def trials_filter(study_name: str) -> str:
    quote = "'" if "'" not in study_name else '"'
    return f"tags.{names.KIND} = 'trial' AND tags.study_name = {quote}{study_name}{quote}"


def _scatter(uuid: str, section: str, y: str, title: str) -> dict:
    return {
        "uuid": uuid, "type": "SCATTER", "metricSectionId": section, "deleted": False,
        "isGenerated": False, "displayName": title, "runsCountToCompare": 100,
        "xaxis": {"key": names.PARAMS, "type": "METRIC"}, "yaxis": {"key": y, "type": "METRIC"},
    }  # fmt: skip


def study_view(study_name: str) -> dict:
    """The page's state as MLflow UI's share view writes it (its search facets and UI state)."""
    section = "mnist-search-study"
    charts = [
        _scatter("params-vs-val", section, names.VAL_SCORE, "params vs validation score (last-3 mean)"),
        _scatter("params-vs-gap", section, names.GAP_VAL, "params vs gap to 99.4 % (points; 0 = target)"),
        _scatter("params-vs-test", section, names.TEST_MIN_LAST3, "params vs test, min of last 3 epochs"),
    ]
    return {
        # search facets
        "searchFilter": trials_filter(study_name),
        "orderByKey": column("metrics", names.RANK),
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        # UI state
        "selectedColumns": [column(kind, name) for kind, name in COLUMNS],
        "columnOrder": [column(kind, name) for kind, name in COLUMNS],  # else metrics go A-Z
        "columnWidths": {column("tags", "arch"): 280, column("metrics", names.VAL_SCORE): 150},
        "runsHiddenMode": "SHOW_ALL",  # every trial in the charts, not the first 10
        "compareRunCharts": charts,
        "compareRunSections": [
            {"uuid": section, "name": "study", "display": True, "isReordered": False, "deleted": False}
            | {"isGenerated": False}
        ],
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
    }


def publish(client: mlflow.MlflowClient, experiment_id: str, study_name: str) -> str:
    """Write the study's view on its experiment (again on every start: a later mnist-search's
    view replaces an older one) and return its key."""
    key = view_key(study_name)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(study_view(study_name)))
    return key


def with_view(link: str, key: str, charts: bool = False) -> str:
    """A runs-page link (`client.runs_link`) that opens on a published view; `charts`: its chart
    view. A local store's link keeps its trailing "(after: mlflow ui ...)"."""
    if not link:  # a store MLflow's UI cannot be pointed at from here (no link to extend)
        return ""
    page, sep, after = link.partition(" ")
    query = {"viewStateShareKey": key} | ({"compareRunsMode": "CHART"} if charts else {})
    return page + "&" + urllib.parse.urlencode(query) + sep + after
