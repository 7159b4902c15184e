"""The suite's own architecture, registered on import: AlexNet's layout through the same builder, registry,
checkpoint and CLI that users take, at widths that make a model of 1.6M parameters instead of 58M.

Plumbing tests (resume, signals, start methods, the run folder, the CLI) train and save this one: a checkpoint
of about 19 MB with its optimizer state, where the default alexnet's is 700 MB. The real
architectures keep the tests about them (tests/test_models.py, test_summary.py, test_golden.py, Grad-CAM in
test_visualise.py, and the default model end to end through `alexnet demo` in test_demo.py).

conftest.py imports it for the test process; subprocess tests put this folder on PYTHONPATH, where
sitecustomize.py imports it in every process they start (torchrun ranks and spawned loaders included).
Nothing here ships: the package only holds the registry it is added to.
"""

from alexnet_cli.models.registry import ARCHITECTURES, ArchInfo

TEST_ARCH = "alexnet-test"

# alexnet's input sizes (native 227, at least 67), so that the preprocessing a run stores is alexnet's too.
ARCHITECTURES.setdefault(TEST_ARCH, ArchInfo(
    TEST_ARCH, 227, 67, "the test suite's: alexnet's layout at 32-64-64-64-64 and 512-wide hidden layers",
    widths=(32, 64, 64, 64, 64), hidden=512,
))
