"""Interface, command line: `bookrec`. Each command is a thin shell over one function of `pipeline`.

`common` holds the root app and the error policy; `data` the raw data and one command per DVC stage;
`models` the registry, the services and the DAG; `online` feedback, experiments, simulation and the
catalog's rules. May import anything in `pipeline`, lazily, inside the commands (so `--help` is fast).
"""

from pipeline.cli import data, models, online  # noqa: F401  (each registers its commands on `app`)
from pipeline.cli.common import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
