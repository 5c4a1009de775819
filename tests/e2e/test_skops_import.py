"""skops' default trusted types are the same whether imported in a task process or in a bare interpreter.

The model's trust list is written where the model is trained (an Airflow task) and checked where it is
loaded (a model server, ``mlflow models serve``): both must name every numpy and scipy type the same way.
``import_skops_io`` shortens skops' module scan in processes with many modules loaded; this runs both imports
in fresh interpreters and compares what skops trusts by default.
"""

from __future__ import annotations

import json
import subprocess
import sys

DUMP = (
    "import json, sys\n"
    "from skops.io import _trusted_types as t\n"
    "import skops.io._utils as u\n"
    "json.dump({'scipy': t.SCIPY_UFUNC_TYPE_NAMES, 'numpy': t.NUMPY_UFUNC_TYPE_NAMES,"
    " 'sklearn': t.SKLEARN_ESTIMATOR_TYPE_NAMES, 'lookup': u.whichmodule.__qualname__}, sys.stdout)\n"
)

TASK_PROCESS = (
    "import airflow.sdk, mlflow, sklearn\n"
    "from mlops_airflow.dag_factory import build_dags\n"
    "import mlops_airflow.operators.training, mlops_airflow.operators.deploy\n"
    "from mlops_airflow.core.served_model import import_skops_io\n"
    "import_skops_io()\n"
)


def _names(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout)


def test_trusted_type_names_match_a_bare_interpreter():
    in_task = _names(TASK_PROCESS + DUMP)
    bare = _names("import skops.io\n" + DUMP)
    assert len(bare["scipy"]) > 100 and len(bare["numpy"]) > 50
    assert in_task["scipy"] == bare["scipy"]
    assert in_task["numpy"] == bare["numpy"]
    assert in_task["sklearn"] == bare["sklearn"]
    # the faster lookup is used during the import only: skops' own is back afterwards
    assert in_task["lookup"] == bare["lookup"] == "whichmodule"
