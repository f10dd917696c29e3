"""Options several `haplane` commands share.

Layer: run (cli). Annotations only: typer and pathlib, nothing that slows `haplane --help`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

StateDirOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where data, ports and logs live (env HAPLANE_STATE_DIR)."),
]
KubeconfigOpt = Annotated[
    Path | None, typer.Option("--kubeconfig", help="Act as this kubeconfig's user.")
]
RegionOpt = Annotated[str | None, typer.Option("--region", help="Through this region's balancer.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Ask and return.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why: recorded with your name.")]
