"""The core (fields, solvers, integrate, blocks, models, analysis, data) never imports the
application layer (contham.experiments) or its optional engines."""

import subprocess
import sys


def test_core_does_not_import_the_application_layer():
    code = (
        "import sys, contham, contham.models, contham.analysis, contham.data, contham.regularization\n"
        "print(sorted(m for m in sys.modules if m.startswith(('contham.experiments', 'ray'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
