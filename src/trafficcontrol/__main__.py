"""``python -m trafficcontrol`` is ``tc``."""

from trafficcontrol.cli.app import main

main()
