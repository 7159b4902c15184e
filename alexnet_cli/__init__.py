"""alexnet-cli: train, evaluate and use AlexNet on your own image folders."""

# Semantic versioning from 0.2.0 on: docs/CHANGELOG.md says what each version changed. It is written in every
# checkpoint (tool_version) and config.json, and `alexnet --version` prints it.
__version__ = "0.4.0"
