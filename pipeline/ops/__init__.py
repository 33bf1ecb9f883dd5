"""Edge, operations: MLflow tracking and the registry (versions, aliases, the gate), DVC from Python,
and the launcher that starts the services of `make up`.

The only subpackage that imports MLflow and DVC; may import every core subpackage and `storage`.
"""
